"""docker-compose.yml parses (Debian's docker-compose needs no engine for `config`) and has the cluster's shape."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_WORKERS = ["ray-worker-gpu0", "ray-worker-gpu1"]


def _config(*args: str, env: dict[str, str] | None = None) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if Path("/.dockerenv").exists() or os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's package)")
        pytest.skip("docker-compose is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CUEAUDIT_")}
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), *args, "config"], check=False,
                         capture_output=True, text=True, cwd=ROOT, timeout=60, env={**clean, **(env or {})})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _config("--profile", "gpu1")


def _ports(svc: dict) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of a service, from either syntax docker-compose prints."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), int(p["published"]), int(p["target"])))
        else:
            ip, published, target = str(p).split("/")[0].rsplit(":", 2)
            out.append((ip, int(published), int(target)))
    return out


def test_services_and_shared_volume(compose):
    s = compose["services"]
    assert set(s) == {"ray-head", *GPU_WORKERS, "dashboard"}
    for svc in s.values():
        assert any(v.startswith("data:/data") for v in svc["volumes"])
    assert "data" in compose["volumes"]
    # `docker compose up` starts the head, the GPU-0 worker and the dashboard; GPU 1 is opt-in
    assert {n: svc.get("profiles") for n, svc in s.items() if svc.get("profiles")} == {"ray-worker-gpu1": ["gpu1"]}


def test_one_gpu_per_worker_by_device_index(compose):
    indices = []
    for name in GPU_WORKERS:
        w = compose["services"][name]
        (dev,) = w["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
        assert "count" not in dev and len(dev["device_ids"]) == 1  # never `count: all`: each GPU once
        indices.append(dev["device_ids"][0])
        assert "ray-head:6379" in w["command"] and "--num-gpus=1" in w["command"]
        assert w["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert indices == ["0", "1"]


def test_every_service_has_a_healthcheck(compose):
    urls = {name: svc["healthcheck"]["test"] for name, svc in compose["services"].items()}
    assert "http://127.0.0.1:8265/api/gcs_healthz" in urls["ray-head"]
    assert all("http://127.0.0.1:52365/api/local_raylet_healthz" in urls[n] for n in ["ray-head", *GPU_WORKERS])
    assert "http://127.0.0.1:8501/_stcore/health" in urls["dashboard"]


def test_ports_are_published_on_loopback_unless_asked(compose):
    published = {n: _ports(s) for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"ray-head": [("127.0.0.1", 8265, 8265), ("127.0.0.1", 10001, 10001)],
                         "dashboard": [("127.0.0.1", 8501, 8501)]}
    wide = _config(env={"CUEAUDIT_BIND": "0.0.0.0"})
    assert _ports(wide["services"]["dashboard"]) == [("0.0.0.0", 8501, 8501)]


def test_images_head_and_dashboard_commands(compose):
    s = compose["services"]
    assert all(s[n]["build"]["target"] == "audit" for n in ["ray-head", *GPU_WORKERS])
    assert s["dashboard"]["build"]["target"] == "dashboard"  # the slim image: no torch, no Ray
    assert "--head" in s["ray-head"]["command"] and "--dashboard-host=0.0.0.0" in s["ray-head"]["command"]
    assert s["ray-head"]["environment"]["RAY_ADDRESS"] == "auto"
    cmd = s["dashboard"]["command"]
    assert cmd.startswith("cueaudit dashboard /data/results") and "--wait" in cmd
