"""docker-compose.yml parses (Debian's docker-compose needs no engine for `config`) and has the cluster's shape."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if Path("/.dockerenv").exists() or __import__("os").environ.get("CI"):
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's package)")
        pytest.skip("docker-compose is not installed")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_services_and_shared_volume(compose):
    s = compose["services"]
    assert set(s) == {"ray-head", "ray-worker", "dashboard"}
    for svc in s.values():
        assert any(v.startswith("data:/data") for v in svc["volumes"])
    assert "data" in compose["volumes"]


def test_gpu_workers_reserve_nvidia_devices(compose):
    (dev,) = compose["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert "ray-head:6379" in compose["services"]["ray-worker"]["command"]


def test_head_and_dashboard_commands(compose):
    assert "--head" in compose["services"]["ray-head"]["command"]
    assert compose["services"]["dashboard"]["command"].startswith("cueaudit dashboard /data/results")
    ports = {p["target"] for p in compose["services"]["dashboard"]["ports"]}
    assert 8501 in ports
