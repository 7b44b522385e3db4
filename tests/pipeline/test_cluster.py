"""Per-node sizing, the stall watchdog and the code shipped to workers (no Ray needed)."""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from pathlib import Path

import pytest

from pipeline.cluster import (
    Node,
    Resources,
    StallError,
    ClusterError,
    code_to_ship,
    describe_stall,
    fits,
    merge_job_env,
    plan_resources,
    watch,
    worker_runtime_env,
)
from pipeline.config import ExecutionConfig

ROOT = Path(__file__).resolve().parents[2]


def nodes(*spec: tuple[float, float]) -> list[Node]:
    return [Node(f"{i:02d}" * 8, f"10.0.0.{i}", c, g) for i, (c, g) in enumerate(spec)]


@pytest.mark.parametrize(("cluster", "exe", "want"), [
    ([(2, 0)], {}, Resources(1, 0.0, 1.0, 2, 1.0)),                       # the embedded local Ray on 2 cores
    ([(2, 0)], {"workers": 2}, Resources(2, 0.0, 0.5, 1, 1.0)),
    ([(16, 0)], {"workers": 4}, Resources(4, 0.0, 1.0, 4, 1.0)),
    ([(1, 0)] * 3, {"workers": 2}, Resources(2, 0.0, 1.0, 1, 1.0)),       # head + 2 workers, 1 CPU each
    ([(1, 0)] * 2, {"workers": 2}, Resources(2, 0.0, 0.5, 1, 0.5)),       # the cluster: total 2, per node 1
    ([(4, 0), (8, 1), (8, 1)], {}, Resources(2, 1.0, 1.0, None, 1.0)),    # one replica per GPU
    ([(1, 2)], {}, Resources(2, 1.0, 0.25, None, 0.5)),                   # 2 GPUs, 1 CPU
    ([(8, 1)], {"gpus_per_worker": 0.5}, Resources(2, 0.5, 1.0, None, 1.0)),
    ([(8, 1)], {"device": "cpu"}, Resources(1, 0.0, 1.0, 8, 1.0)),
    ([(2, 0), (2, 0)], {"cpus_per_worker": 4}, Resources(1, 0.0, 2.0, 2, 1.0)),
])
def test_resources_are_sized_per_node(cluster, exe, want):
    got = plan_resources(nodes(*cluster), ExecutionConfig(**exe))
    assert got == want
    n = nodes(*cluster)
    assert fits([x for x in n if x.cpus > 0], got.workers, got.cpus, got.gpus, got.prepare_cpus)


def test_a_smaller_share_than_configured_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        plan_resources(nodes((1, 0), (1, 0)), ExecutionConfig(workers=2))
    assert "reserving 0.5 CPU per scoring actor (configured 1)" in caplog.text


@pytest.mark.parametrize(("cluster", "exe", "message"), [
    ([(4, 0)], {"device": "cuda"}, "no node of the Ray cluster has a GPU"),
    ([(4, 1), (4, 1)], {"gpus_per_worker": 2}, "gpus_per_worker=2 but no node has that many GPUs"),
    ([(1, 0)], {"workers": 8}, "8 scoring actor(s) requesting CPU 1 each"),
    ([(0, 1)], {}, "no node of the Ray cluster offers a CPU"),
])
def test_impossible_requests_name_the_nodes(cluster, exe, message):
    with pytest.raises(ClusterError) as e:
        plan_resources(nodes(*cluster), ExecutionConfig(**exe))
    assert message in str(e.value) and "10.0.0.0" in str(e.value)


@pytest.mark.parametrize("key", ["cpus_per_worker", "gpus_per_worker"])
def test_ray_quantities_are_fractions_or_whole_numbers(key):
    assert getattr(ExecutionConfig(**{key: 0.25}), key) == 0.25 and getattr(ExecutionConfig(**{key: 2}), key) == 2
    with pytest.raises(ValueError, match="a fraction below 1 or a whole number"):
        ExecutionConfig(**{key: 1.5})


def _fits_by_enumeration(cluster: list[Node], workers: int, cpus: float, gpus: float, prepare: float) -> bool:
    """Every placement of the actors on the nodes; the request fits when one exists and, in all of
    them, some node keeps ``prepare`` CPUs free."""
    placements = 0
    for assignment in itertools.product(range(len(cluster)), repeat=workers):
        used = [assignment.count(i) for i in range(len(cluster))]
        if any(u * cpus > n.cpus + 1e-9 or u * gpus > n.gpus + 1e-9 for u, n in zip(used, cluster, strict=True)):
            continue
        placements += 1
        if not any(n.cpus - u * cpus >= prepare - 1e-9 for u, n in zip(used, cluster, strict=True)):
            return False
    return placements > 0


def test_fits_agrees_with_enumerating_every_placement():
    rng = random.Random(0)
    for _ in range(400):
        cluster = nodes(*[(rng.choice([0.5, 1, 2, 3]), rng.choice([0, 0, 1, 2])) for _ in range(rng.randint(1, 3))])
        workers, cpus = rng.randint(1, 4), rng.choice([0.25, 0.5, 1.0, 2.0])
        gpus, prepare = rng.choice([0.0, 0.5, 1.0]), rng.choice([0.25, 0.5, 1.0])
        want = _fits_by_enumeration(cluster, workers, cpus, gpus, prepare)
        assert fits(cluster, workers, cpus, gpus, prepare) == want, (cluster, workers, cpus, gpus, prepare)


def test_watch_passes_items_and_errors_through():
    assert list(watch(iter(range(5)), 5.0, lambda w: "stalled")) == [0, 1, 2, 3, 4]
    assert list(watch(iter(range(3)), 0, lambda w: "stalled")) == [0, 1, 2]

    def broken():
        yield 1
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError, match="boom"):
        for x in watch(broken(), 5.0, lambda w: "stalled"):
            got.append(x)
    assert got == [1]


def test_watch_raises_a_stall_with_the_callers_message():
    release = threading.Event()

    def hangs():
        yield "first"
        release.wait(30)
        yield "late"

    got, waited = [], []
    with pytest.raises(StallError, match="waits for CPU 1"):
        for x in watch(hangs(), 0.3, lambda w: waited.append(w) or "waits for CPU 1"):
            got.append(x)
    release.set()
    assert got == ["first"] and waited and waited[0] >= 0.3


def test_time_spent_by_the_consumer_is_not_a_stall():
    got = []
    for x in watch(iter(range(3)), 0.3, lambda w: "stalled"):
        time.sleep(0.5)  # e.g. writing a Parquet part
        got.append(x)
    assert got == [0, 1, 2]


class FakeRay:
    def __init__(self, alive: list[Node], dead: list[Node]) -> None:
        self.alive, self.dead = alive, dead

    def nodes(self) -> list[dict]:
        return [{"NodeID": n.node_id, "NodeManagerAddress": n.address, "Alive": n in self.alive,
                 "Resources": {"CPU": n.cpus, "GPU": n.gpus}} for n in self.alive + self.dead]


def test_a_stall_message_names_requests_offers_and_lost_nodes():
    a, b = nodes((1, 0), (1, 0))
    res = {"workers": 2, "cpus": 1.0, "gpus": 0.0, "prepare_cpus": 0.5, "threads": 1}
    msg = describe_stall(FakeRay([a], [b]), "tiny", res, 31.2, [a.node_id, b.node_id])
    assert "model 'tiny': no batch finished for 31 s" in msg
    assert "2 scoring actor(s) requesting CPU 1 each and prepare tasks requesting CPU 0.5 each" in msg
    assert "10.0.0.0 [00000000]: CPU" in msg and "10.0.0.1" not in msg
    assert "1 node(s) left the cluster" in msg


def _write_config_folder(tmp_path: Path) -> Path:
    (tmp_path / "myfactories.py").write_text("def f():\n    return None\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "results").mkdir()
    for name in ("data", ".venv", "not-a-module"):
        (tmp_path / name).mkdir()
    (tmp_path / "data" / "img.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "audit.yaml").write_text("")
    return tmp_path


def test_the_config_folders_code_and_local_factories_are_shipped(tmp_path):
    cfg = _write_config_folder(tmp_path)
    code = code_to_ship(cfg, ["python:tests.factories:tiny_cnn", "python:json:loads", "torchvision:resnet18"],
                        [cfg, ROOT])
    assert code == [cfg / "myfactories.py", cfg / "pkg", ROOT / "tests"]  # json is installed: not shipped
    env = worker_runtime_env(code, keep_out=[cfg / "pkg" / "results", cfg / "data"])
    assert env["py_modules"] == [str(ROOT / "workers"), str(ROOT / "common"), str(cfg / "myfactories.py"),
                                 str(cfg / "pkg"), str(ROOT / "tests")]
    assert {".venv", ".git", "__pycache__"} <= set(env["excludes"]) and "/results" in env["excludes"]
    assert not any("data" in e for e in env["excludes"])  # the dataset is not inside any shipped module


def test_a_module_name_is_shipped_once(tmp_path, caplog):
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        env = worker_runtime_env([tmp_path / "workers"])
    assert env["py_modules"] == [str(ROOT / "workers"), str(ROOT / "common")]
    assert "the module name 'workers' is taken" in caplog.text


def test_a_submitted_jobs_own_modules_are_kept(monkeypatch):
    ours = {"py_modules": ["/a/workers"], "excludes": [".venv"]}
    assert merge_job_env(ours) == (ours, False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert merge_job_env(ours) == (ours, False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://x.zip", "py_modules": ["gcs://m.zip"], "excludes": [".venv", "*.pt"]}}))
    merged, override = merge_job_env(ours)
    assert override and merged == {"py_modules": ["gcs://m.zip", "/a/workers"], "excludes": [".venv", "*.pt"]}
