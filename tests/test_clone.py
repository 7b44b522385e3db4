"""A newcomer's first five minutes: clone the repository and run the README's two commands as written.

`make demo` runs for real on the fresh clone (it creates .venv, installs, generates data, trains,
audits); `make test` runs too, restricted to the fast tests through the Makefile's PYTEST_ARGS —
the full suite is what is running this test already, and running it again inside itself would
recurse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_lists_the_two_commands():
    assert readme_commands() == ["make demo", "make test"]


def test_fresh_clone_runs_the_readme_commands(tmp_path, artifacts_dir):
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    clone = tmp_path / "cueaudit"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST", "RAY_ADDRESS"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    logs = {}
    for cmd in readme_commands():
        args = cmd.split()
        if args == ["make", "test"]:
            args += ["PYTEST_ARGS=-q -x -m 'not slow and not ray and not browser and not bench' -p no:cacheprovider"]
        proc = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        logs[cmd] = proc.stdout + proc.stderr
        (artifacts_dir / f"clone-{args[1]}.log").write_text(logs[cmd])
        assert proc.returncode == 0, logs[cmd][-4000:]
    demo = logs["make demo"]
    assert (clone / ".venv" / "bin" / "cueaudit").exists()
    for cue in ("background", "cooccur", "watermark"):
        assert re.search(rf"{cue}-biased\s*│\s*FAIL", demo), demo[-3000:]
        assert re.search(rf"{cue}-fair\s*│\s*(PASS|WARN)", demo), demo[-3000:]  # WARN passes the gate
    assert re.search(r"efficientnet-lite0\s*│\s*PASS", demo)
    assert "cueaudit dashboard" in demo
    assert (clone / "demo-results" / "gate.md").exists()
    assert re.search(r"\d+ passed", logs["make test"]), logs["make test"][-2000:]
