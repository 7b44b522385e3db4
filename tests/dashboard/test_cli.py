"""``cueaudit dashboard`` through its real entry point: bad input exits 2, good input execs Streamlit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.dashboard.fakes import write_started

runner = CliRunner()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_missing_or_invalid_results_exit_2(tmp_path, make):
    res = runner.invoke(app, ["dashboard", str(make(tmp_path))])
    assert res.exit_code == 2
    assert "does not exist" in res.output or "is not a cueaudit results directory" in res.output


def test_missing_policy_exits_2(tmp_path):
    root = write_started(tmp_path)
    res = runner.invoke(app, ["dashboard", str(root), "--policy", str(tmp_path / "gate.yaml")])
    assert res.exit_code == 2 and "policy file" in res.output


def test_valid_results_exec_streamlit_with_the_app_and_results(tmp_path, monkeypatch):
    root = write_started(tmp_path)
    seen: list[list[str]] = []
    envs: list[dict[str, str]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.append([path, *argv])
        envs.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    res = runner.invoke(app, ["dashboard", str(root), "--port", "8642", "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    (cmd,) = seen
    assert cmd[0] == sys.executable and cmd[2:5] == ["-m", "streamlit", "run"]
    assert Path(cmd[5]) == Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
    i = cmd.index("--")
    flags = dict(zip(cmd[6:i:2], cmd[7:i:2], strict=True))
    assert flags == {"--server.port": "8642", "--server.address": "0.0.0.0", "--server.headless": "true",
                     "--browser.gatherUsageStats": "false"}
    assert cmd[i + 1:] == [str(root.resolve())]
    assert envs[0]["PYTHONPATH"].split(os.pathsep)[0] == str(Path(cmd[5]).parents[1])
    res = runner.invoke(app, ["dashboard", str(root), "--review-db", str(tmp_path / "ro" / "review.sqlite")])
    assert res.exit_code == 0, res.output
    assert envs[1]["CUEAUDIT_REVIEW_DB"] == str((tmp_path / "ro" / "review.sqlite").resolve())
