"""``python -m bench.run --quick`` writes every section (a smoke test of the harness, run by ``make bench``
users on demand: the ``bench`` marker keeps it out of ``make test``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import RUNNERS, SECTIONS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]


def _bench_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = _bench_run("--quick", "--out", str(out), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for key in ("**Date:**", "**Machine:**", "**Versions:**", "torch ", "torchvision ", "ray ", "pyarrow ",
                "**Load average", "--quick"):
        assert key in text, key
    for name in SECTIONS:
        title = RUNNERS[name][0]
        assert f"## {title}" in text, title
        part = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        assert "FAILED" not in part, part
        assert "|---|" in part, f"section {name} has no table"
    assert "same result" in text and "**no**" not in text  # the optimised analysis equals the reference


def test_only_selects_sections(tmp_path: Path) -> None:
    out = tmp_path / "agg.md"
    proc = _bench_run("--quick", "--only", "aggregate", "--out", str(out), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert f"## {RUNNERS['aggregate'][0]}" in text and f"## {RUNNERS['engine'][0]}" not in text


def test_unknown_section_is_an_error() -> None:
    proc = _bench_run("--only", "engine,nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
