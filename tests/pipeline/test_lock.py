"""One run per output: the lock names its holder, refuses a second run, and stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.lock import LOCK_NAME, LockError, RunLock

HERE = socket.gethostname()


def _plant(root: Path, *, host: str = HERE, pid: int | None = None, run_id: str = "20260101T000000Z-other1",
           age_s: float = 0.0) -> None:
    beat = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_NAME).write_text(json.dumps({"host": host, "pid": os.getpid() if pid is None else pid,
                                              "run_id": run_id, "started_at": "2026-01-01T00:00:00+00:00",
                                              "heartbeat": beat}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_run_is_refused_with_the_holder_named(tmp_path):
    with RunLock(tmp_path, "run-a", timeout=60) as a:
        held = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (held["host"], held["pid"], held["run_id"]) == (HERE, os.getpid(), "run-a")
        with pytest.raises(LockError) as e:
            RunLock(tmp_path, "run-b", timeout=60).acquire()
        msg = str(e.value)
        assert f"run run-a (pid {os.getpid()} on host {HERE}, started {held['started_at']}" in msg
        a.check()
    assert not (tmp_path / LOCK_NAME).exists()  # released
    with RunLock(tmp_path, "run-b", timeout=60):
        pass


def test_stale_locks_are_taken_over_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.lock")
    _plant(tmp_path, pid=_dead_pid())  # same host, process gone
    with RunLock(tmp_path, "run-b", timeout=600):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "run-b"
    assert "taking over the stale lock of run 20260101T000000Z-other1" in caplog.text and "is gone" in caplog.text
    caplog.clear()
    _plant(tmp_path, host="elsewhere", pid=1, age_s=120)  # another host: only the heartbeat can tell
    with pytest.raises(LockError, match="host elsewhere"):
        RunLock(tmp_path, "run-c", timeout=600).acquire()
    with RunLock(tmp_path, "run-c", timeout=60):
        pass
    assert "heartbeat is 120 s old" in caplog.text


def test_the_heartbeat_keeps_the_lock_fresh_and_notices_a_takeover(tmp_path):
    lock = RunLock(tmp_path, "run-a", timeout=0.8)
    lock.acquire()
    try:
        first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
        deadline = time.time() + 10
        while json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.1)
        assert json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] > first
        _plant(tmp_path, host="elsewhere", pid=1, run_id="run-z")  # another run took it over
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                lock.check()
            except LockError as e:
                assert "now names run run-z" in str(e)
                break
            time.sleep(0.1)
        else:
            pytest.fail("the lost lock was not noticed")
    finally:
        lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["run_id"] == "run-z"  # not ours to delete


def test_cueaudit_run_refuses_a_locked_output(tmp_path):
    from cuebench.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(cue="background", n=6, correlation=0.6, seed=1))
    out = tmp_path / "results"
    cfg = {"name": "t", "output": str(out), "dataset": {"format": "manifest", "path": str(data / "manifest.csv")},
           "models": [{"name": "tiny", "source": "python:tests.factories:tiny_cnn", "num_classes": 3,
                       "classes": ["disk", "square", "triangle"], "preprocess": {"size": 32, "resize": "resize"}}]}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(cfg))
    _plant(out)  # held by a live process (this one) under another run id
    r = CliRunner().invoke(app, ["run", str(tmp_path / "audit.yaml"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "is being written by run 20260101T000000Z-other1" in r.output and f"pid {os.getpid()}" in r.output
    assert not (out / "_runs").exists()  # refused before anything was written


def test_the_lock_on_an_object_store(s3, monkeypatch):
    """Best effort there (no conditional PUT): a live lock refuses, a released one is gone, and the run
    that reads back another run's lock after writing its own does not proceed."""
    import uuid

    from common.storage import as_path
    from pipeline import lock as L

    monkeypatch.setattr(L, "SETTLE_S", 0.1)
    root = as_path(s3.make_bucket(f"lock-{uuid.uuid4().hex[:8]}")) / "results"
    with RunLock(root, "run-a", timeout=60):
        assert json.loads((root / LOCK_NAME).read_text())["run_id"] == "run-a"
        with pytest.raises(LockError, match="run run-a"):
            RunLock(root, "run-b", timeout=60).acquire()
    assert not (root / LOCK_NAME).exists()
    # two runs racing: b writes its lock, a overwrites it within b's settle time; b reads back a's and refuses
    real_sleep = L.time.sleep

    def a_writes_meanwhile(seconds: float) -> None:
        (root / LOCK_NAME).write_bytes(RunLock(root, "run-a", timeout=60)._payload())
        real_sleep(seconds)

    monkeypatch.setattr(L.time, "sleep", a_writes_meanwhile)
    with pytest.raises(LockError, match="run run-a"):
        RunLock(root, "run-b", timeout=60).acquire()
