"""``cueaudit dashboard --wait``: a 'waiting for results' page until results appear, then Streamlit."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.schema import is_results_dir
from pipeline.waiting import wait_for_results
from tests.dashboard.fakes import write_started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline_s: float = 30) -> tuple[int, str]:
    """GET ``url`` once the server answers."""
    end = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.1)


def _make_results_when_the_page_answers(tmp_path: Path, port: int, seen: list) -> threading.Thread:
    def go() -> None:
        seen.append(_get(f"http://127.0.0.1:{port}/"))
        seen.append(_get(f"http://127.0.0.1:{port}/_stcore/health"))  # Streamlit's healthcheck path
        write_started(tmp_path)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_the_page_is_served_until_results_appear_and_the_port_is_freed(tmp_path):
    port, seen = _free_port(), []
    helper = _make_results_when_the_page_answers(tmp_path, port, seen)
    wait_for_results(tmp_path / "results", "127.0.0.1", port, is_results_dir, poll_s=0.1)
    helper.join(5)
    (status, page), (health, _) = seen
    assert status == 200 and health == 200
    assert "waiting for results" in page and str((tmp_path / "results").resolve()) in page
    with socket.socket() as s:  # free again, for Streamlit (which, like the waiting page, sets SO_REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_existing_results_return_at_once(tmp_path):
    root = write_started(tmp_path)
    wait_for_results(root, "127.0.0.1", _free_port(), is_results_dir)


def test_dashboard_wait_execs_streamlit_once_results_appear(tmp_path, monkeypatch):
    port, seen, cmds = _free_port(), [], []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        cmds.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    helper = _make_results_when_the_page_answers(tmp_path, port, seen)
    res = CliRunner().invoke(app, ["dashboard", str(tmp_path / "results"), "--wait", "--port", str(port)])
    helper.join(5)
    assert res.exit_code == 0, res.output
    assert "waiting for results in" in res.output and len(seen) == 2
    (cmd,) = cmds
    assert cmd[cmd.index("--server.port") + 1] == str(port) and cmd[-1] == str((tmp_path / "results").resolve())


def test_without_wait_a_missing_directory_still_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["dashboard", str(tmp_path / "results")])
    assert res.exit_code == 2 and "does not exist" in res.output
