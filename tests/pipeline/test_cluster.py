"""Per-node sizing, the stall watchdog and the code shipped to workers (no Ray needed)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cluster import (
    ClusterError,
    Node,
    Resources,
    StallError,
    _stall_hint,
    code_to_ship,
    describe_stall,
    fits,
    loopback_only,
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
            got.append(x)  # noqa: PERF402 - the items before the exception
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
            got.append(x)  # noqa: PERF402 - the items before the exception
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
    assert "node 00000000 at 10.0.0.0: CPU" in msg and "10.0.0.1" not in msg
    assert "1 node(s) left the cluster" in msg and "Free the resources or add nodes" in msg  # free CPUs unknown


@pytest.mark.parametrize(("free", "hint"), [
    ([(0.5, 0), (0.5, 0)], "No node has CPU 1 free for a prepare task"),   # sized from the total: the hang
    ([(1, 0), (0, 0)], "No node has room for another scoring actor"),
    ([(1, 1), (2, 1)], "The nodes have room for both"),
])
def test_a_stall_hint_follows_what_the_nodes_have_free(free, hint):
    nodes = [Node(f"n{i}", "10.0.0.1", 2, 1, c, g) for i, (c, g) in enumerate(free)]
    res = {"workers": 2, "cpus": 1.0, "gpus": 1.0, "prepare_cpus": 1.0, "threads": None}
    assert _stall_hint(nodes, res).startswith(hint)


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


# ---- a multi-node cluster on this machine (ray.cluster_utils): 1 CPU per node --------------------

FACTORY = '''"""A factory that lives next to the audit config, importable on workers only through runtime_env."""
from pathlib import Path

import torch
from torch import nn


def tiny(num_classes: int = 3) -> nn.Module:
    if Path(__file__).resolve().parent == Path({folder!r}):
        raise RuntimeError("imported from the driver's folder, not from the code Ray shipped")
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(4, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net
'''


NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node with 1 CPU each, both on 127.0.0.1 (the issue's cluster: 2 CPUs in
    total, but no node with more than 1)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    c.workers_started = [c.add_node(**NODE)]
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _audit(tmp_path: Path, n: int, seed: int, **execution) -> tuple[Path, Path]:
    """An audit config in its own folder, beside the factory module it names."""
    import yaml

    from cuebench.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(cue="background", n=n, correlation=0.6, seed=seed))
    folder = tmp_path / "audit"
    folder.mkdir()
    (folder / "auditnets.py").write_text(FACTORY.format(folder=str(folder.resolve())))
    cfg = {"name": "cluster", "output": str(tmp_path / "results"),
           "dataset": {"format": "manifest", "path": str(data / "manifest.csv")},
           # fine_layer: auto would load the model on the driver, which this factory refuses
           "models": [{"name": "tiny", "source": "python:auditnets:tiny", "num_classes": 3, "fine_layer": "none",
                       "classes": ["disk", "square", "triangle"], "preprocess": {"size": 32, "resize": "resize"}}],
           "execution": {"batch_size": 2, "flush_rows": 4, **execution}}
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "results"


def _cli(args: list[str]) -> subprocess.Popen:
    # The nodes registered as 127.0.0.1; without this, Ray rewrites a loopback address to the machine's.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """The process's output once it ends; killed (and the test failed) when it outlives ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("cueaudit run did not end: " + proc.communicate()[0][-3000:])


def _exactly_once(out: Path, n: int) -> None:
    import pyarrow.parquet as pq

    from pipeline.schema import part_files, read_results

    t = read_results(out, columns=["image_id", "error"], current_only=False)
    ids = t.column("image_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n
    assert sum(pq.read_metadata(f).num_rows for f in part_files(out)) == n  # no hidden duplicate on disk
    assert t.column("error").null_count == n


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_on_one_cpu_nodes_with_a_factory_shipped_by_runtime_env(cluster, tmp_path):
    cfg, out = _audit(tmp_path, n=12, seed=7, workers=2)
    proc = _cli(["run", str(cfg), "--address", cluster.address, "--no-progress"])
    log = _finish(proc)
    assert proc.returncode == 0, log
    _exactly_once(out, 12)


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_that_cannot_get_resources_stops_and_says_why(cluster, tmp_path):
    import ray

    cfg, _ = _audit(tmp_path, n=4, seed=8, stall_timeout=5)
    with loopback_only():  # the nodes registered as 127.0.0.1 (see _cli)
        ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1)
        class Hog:
            def ready(self) -> bool:
                return True

        hogs = [Hog.remote() for _ in range(2)]  # every CPU of every node
        ray.get([h.ready.remote() for h in hogs], timeout=120)
        proc = _cli(["run", str(cfg), "--address", cluster.address, "--no-progress"])
        log = _finish(proc)
        for h in hogs:
            ray.kill(h)
    finally:
        ray.shutdown()
    assert proc.returncode == 2, log
    flat = " ".join(log.split())
    assert "no batch finished for 5 s (execution.stall_timeout)" in flat
    assert "1 scoring actor(s) requesting CPU" in flat and "prepare tasks requesting CPU" in flat
    assert flat.count("CPU 0 free of 1") == 2 and "No node has CPU 1 free for a prepare task" in flat, flat


def _node_running_a_scoring_actor(cluster):
    """A worker node (not the head, which the driver is attached to) whose raylet runs a scoring actor."""
    psutil = pytest.importorskip("psutil")
    for node in cluster.workers_started:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for child in raylet.children(recursive=True):
            try:
                if "AuditActor" in " ".join(child.cmdline()):
                    return node
            except psutil.NoSuchProcess:
                continue
    pytest.fail("no worker node runs a scoring actor")


@pytest.mark.ray
@pytest.mark.slow
def test_a_node_removed_mid_run_loses_no_image_and_duplicates_none(cluster, tmp_path):
    from pipeline.schema import part_files, read_runs

    cluster.workers_started.append(cluster.add_node(**NODE))  # three nodes: one can go
    cluster.wait_for_nodes()
    n = 200
    cfg, out = _audit(tmp_path, n=n, seed=9, workers=2, stall_timeout=60)
    proc = _cli(["run", str(cfg), "--address", cluster.address, "--no-progress"])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out.exists() and part_files(out)):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before a node could be removed: " + (proc.stdout.read() or "")
    cluster.remove_node(_node_running_a_scoring_actor(cluster))
    log = _finish(proc)
    runs = 1
    if proc.returncode != 0:  # the run may stop (exit 2, saying why); the same command completes it
        assert proc.returncode == 2, log
        again = _cli(["run", str(cfg), "--address", cluster.address, "--no-progress"])
        log2 = _finish(again)
        assert again.returncode == 0, log + log2
        runs = 2
    _exactly_once(out, n)
    assert [r.status for r in read_runs(out)][-1] == "finished" and len(read_runs(out)) == runs


@pytest.mark.ray
def test_the_embedded_ray_listens_on_loopback_only(tmp_path):
    """Every listening socket of the driver and the Ray processes it starts is on 127.0.0.1."""
    pytest.importorskip("psutil")
    code = (
        "import json, os, psutil, ray\n"
        "from pipeline.run import ray_session\n"
        "with ray_session(None, 1):\n"
        "    ray.get(ray.remote(lambda: 1).remote())\n"
        "    procs = [psutil.Process()] + psutil.Process().children(recursive=True)\n"
        "    socks = []\n"
        "    for p in procs:\n"
        "        try:\n"
        "            socks += [(p.name(), c.laddr.ip) for c in p.net_connections('inet') if c.status == 'LISTEN']\n"
        "        except psutil.NoSuchProcess:\n"
        "            pass\n"
        "print(json.dumps(socks))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    socks = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for name, _ in socks}
    assert {"gcs_server", "raylet"} <= names, socks  # the servers were found
    assert {ip for _, ip in socks} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, socks
