"""Shared fixtures: offline, tiny, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


CACHE = ROOT / ".cueaudit" / "test-cache"


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick synthetic demo's results: biased + fair models per cue, and efficientnet-lite0 on
    real photos. Datasets and trained models are cached under .cueaudit/test-cache (seed 0; the
    gate's thresholds were calibrated on seeds 101-103)."""
    from cuebench.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "results"
    run_demo(out=out, work=CACHE, quick=True, progress=False)
    return out


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto) on 127.0.0.1 for this session; AWS_* point at it."""
    pytest.importorskip("moto.server", reason="the object-store tests need moto[server]")
    from tests.objectstore import s3_server

    with s3_server() as server:
        yield server
