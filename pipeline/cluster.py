"""What a run asks of a Ray cluster, and how it notices when the cluster cannot give it.

- :func:`plan_resources` sizes the scoring actors and the prepare tasks **per node**: a request
  that fits the cluster's total but no single node (two 1-CPU nodes offer 2 CPUs, never one task
  of 2) is never made, and the actors can never take the last CPU of every node from the prepare
  tasks that feed them.
- :func:`watch` turns "no batch for ``execution.stall_timeout`` seconds" into a :class:`StallError`
  whose message (:func:`describe_stall`) names what the actors and tasks request and what each
  node offers, instead of a run that waits forever.
- :func:`worker_runtime_env` ships the code a worker imports (cueaudit's worker side, the modules
  next to the config, ``python:`` factories) through Ray's ``runtime_env``, so nodes need not share
  the driver's filesystem layout for code.
- :func:`loopback_only` makes an embedded local Ray listen on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
EPS = 1e-9
# Fractions tried when a whole CPU per actor (or per prepare task) does not fit a node.
CPU_FRACTIONS = (0.5, 0.25, 0.125)
PREPARE_CPUS = (1.0, 0.5, 0.25)
# What a worker process imports from cueaudit (workers -> common; nothing from pipeline/dashboard).
WORKER_PACKAGES = ("workers", "common")
EXCLUDES = (".venv", "venv", ".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            ".ipynb_checkpoints")
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager for a submitted job's driver


class ClusterError(RuntimeError):
    """The cluster cannot run the audit as configured (the message names requests and nodes)."""


class StallError(ClusterError):
    """No batch arrived for ``execution.stall_timeout`` seconds."""


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its id, address and total resources (``free_*``: what is unreserved now)."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    free_cpus: float | None = None
    free_gpus: float | None = None

    def label(self) -> str:
        return f"node {self.node_id[:8]} at {self.address}"


@dataclass(frozen=True)
class Resources:
    """Per model: ``workers`` actors reserving ``cpus`` + ``gpus`` each, prepare tasks ``prepare_cpus``."""

    workers: int
    gpus: float
    cpus: float
    threads: int | None  # torch threads of a CPU actor; None on a GPU
    prepare_cpus: float


def cluster_nodes(ray: Any, free: bool = False) -> list[Node]:
    """The alive nodes of the connected cluster (``free``: with what each has unreserved now)."""
    avail: dict[str, dict[str, float]] = {}
    if free:
        try:  # a DeveloperAPI; a Ray client connection may not offer it
            from ray._private.state import available_resources_per_node

            avail = available_resources_per_node()
        except Exception as e:  # noqa: BLE001 - diagnostics only: totals are still reported
            log.debug("per-node free resources unavailable: %s", e)
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive", False):
            continue
        res, nid = n.get("Resources", {}), n.get("NodeID", "")
        a = avail.get(nid)
        free = (None, None) if a is None else (float(a.get("CPU", 0)), float(a.get("GPU", 0)))
        nodes.append(Node(nid, n.get("NodeManagerAddress", "?"), float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                          *free))
    return nodes


def describe_nodes(nodes: Sequence[Node]) -> str:
    def amount(free: float | None, total: float) -> str:
        return f"{total:g}" if free is None else f"{free:g} free of {total:g}"

    return "; ".join(f"{n.label()}: CPU {amount(n.free_cpus, n.cpus)}, GPU {amount(n.free_gpus, n.gpus)}"
                     for n in nodes) or "no alive node"


def _actors_per_node(node: Node, cpus: float, gpus: float) -> int:
    by_cpu = math.floor(node.cpus / cpus + EPS)
    return min(by_cpu, math.floor(node.gpus / gpus + EPS)) if gpus else by_cpu


def fits(nodes: Sequence[Node], workers: int, cpus: float, gpus: float, prepare: float) -> bool:
    """Whether ``workers`` actors (``cpus`` + ``gpus`` each) fit the nodes and, *however* Ray places
    them, some node keeps ``prepare`` CPUs free for a prepare task.

    A node keeps room unless it holds ``m_i = floor((c_i - prepare) / cpus) + 1`` actors; the actors
    can block every node that could run a prepare task only if ``sum(m_i) <= workers`` with each
    ``m_i`` within what the node holds. Checking every placement (not Ray's current policy) keeps the
    guarantee when Ray's scheduler, a restarted actor or another job picks a different node.
    """
    caps = [_actors_per_node(n, cpus, gpus) for n in nodes]
    if sum(caps) < workers:
        return False
    need = 0
    hosts_prepare = False
    for n, cap in zip(nodes, caps, strict=True):
        if n.cpus + EPS < prepare:
            continue
        hosts_prepare = True
        m = math.floor((n.cpus - prepare) / cpus + EPS) + 1
        if m > cap:
            return True  # this node always keeps a prepare slot
        need += m
    return hosts_prepare and need > workers


def _cpu_ladder(requested: float) -> list[float]:
    whole = [float(k) for k in range(math.floor(requested), 0, -1)]
    return list(dict.fromkeys([requested, *[c for c in (*whole, *CPU_FRACTIONS) if c < requested - EPS]]))


def plan_resources(nodes: Sequence[Node], exe: Any) -> Resources:
    """Size actors and prepare tasks so that they fit single nodes (see :func:`fits`).

    GPUs: one replica per GPU by default (``workers`` = the GPUs of nodes that hold a whole actor's
    request); CPU actors otherwise (1 unless ``execution.workers``). CPUs: the configured
    ``cpus_per_worker`` and a whole CPU per prepare task when they fit, else the largest smaller
    amounts that do (a warning says so); an impossible request raises :class:`ClusterError`.
    """
    cpu_nodes = [n for n in nodes if n.cpus > 0]
    if not cpu_nodes:
        raise ClusterError(f"no node of the Ray cluster offers a CPU: {describe_nodes(nodes)}")
    gpu_max = max((n.gpus for n in nodes), default=0.0)
    if exe.device == "cpu":
        gpus = 0.0
    elif exe.gpus_per_worker is not None:
        gpus = float(exe.gpus_per_worker)
    else:
        gpus = 1.0 if gpu_max >= 1 else 0.0
    if exe.device == "cuda" and (gpus == 0 or gpu_max == 0):
        raise ClusterError("execution.device is 'cuda' but no node of the Ray cluster has a GPU: "
                           + describe_nodes(nodes))
    if gpus > gpu_max + EPS:
        raise ClusterError(f"execution.gpus_per_worker={gpus:g} but no node has that many GPUs: "
                           + describe_nodes(nodes))
    slots = sum(math.floor(n.gpus / gpus + EPS) for n in nodes) if gpus else 0
    workers = exe.workers or (max(1, slots) if gpus else 1)
    for cpus in _cpu_ladder(float(exe.cpus_per_worker)):
        for prepare in PREPARE_CPUS:
            if fits(cpu_nodes, workers, cpus, gpus, prepare):
                if cpus < exe.cpus_per_worker - EPS or prepare < 1:
                    log.warning("reserving %g CPU per scoring actor (configured %g) and %g per prepare task so "
                                "that %d actor(s) and the prepare tasks fit the nodes: %s", cpus,
                                exe.cpus_per_worker, prepare, workers, describe_nodes(cpu_nodes))
                threads = None
                if not gpus:
                    biggest = max(n.cpus for n in cpu_nodes)
                    threads = max(1, int(min(biggest, sum(n.cpus for n in cpu_nodes) / workers)))
                return Resources(workers, gpus, cpus, threads, prepare)
    raise ClusterError(
        f"{workers} scoring actor(s) requesting CPU {exe.cpus_per_worker:g}"
        + (f" + GPU {gpus:g}" if gpus else "")
        + " each, and prepare tasks requesting CPU 1 each, fit no placement on the nodes, even with smaller "
        f"CPU shares: {describe_nodes(nodes)}. Lower execution.workers or add nodes.")


def describe_stall(ray: Any, model: str | Sequence[str], res: dict[str, Any], waited: float,
                   known: Sequence[str] = ()) -> str:
    """The message of a stalled run (of one model, or of the models one actor pool scores together):
    what it requests against what every node offers now."""
    names = [model] if isinstance(model, str) else list(model)
    what = f"model {names[0]!r}" if len(names) == 1 else "models " + ", ".join(map(repr, names))
    try:
        nodes = cluster_nodes(ray, free=True)
    except Exception as e:  # noqa: BLE001 - the cluster itself may be what failed
        nodes, offer = [], f"(the cluster could not be asked: {e})"
    else:
        offer = describe_nodes(nodes)
    gone = sorted(set(known) - {n.node_id for n in nodes})
    actor = f"CPU {res['cpus']:g}" + (f" + GPU {res['gpus']:g}" if res["gpus"] else "")
    hint = _stall_hint([n for n in nodes if n.free_cpus is not None], res)
    return (f"{what}: no batch finished for {waited:.0f} s (execution.stall_timeout). The run waits "
            f"for {res['workers']} scoring actor(s) requesting {actor} each and prepare tasks requesting "
            f"CPU {res['prepare_cpus']:g} each; the nodes offer {offer}"
            + (f"; {len(gone)} node(s) left the cluster since the run started" if gone else "")
            + f". {hint} Rerun the same command to resume.")


def _stall_hint(nodes: Sequence[Node], res: dict[str, Any]) -> str:
    prepare_room = any(n.free_cpus + EPS >= res["prepare_cpus"] for n in nodes)
    actor_room = any(n.free_cpus + EPS >= res["cpus"] and (n.free_gpus or 0) + EPS >= res["gpus"]
                     for n in nodes)
    if nodes and not prepare_room:
        return (f"No node has CPU {res['prepare_cpus']:g} free for a prepare task: free the resources (other "
                "jobs), add nodes, or lower execution.workers or cpus_per_worker.")
    if nodes and not actor_room:
        return ("No node has room for another scoring actor: if one waits to start (`ray status` lists "
                "pending demands), free resources or add nodes; else a worker may be hung or one batch slower "
                "than the timeout (raise execution.stall_timeout).")
    if nodes:
        return ("The nodes have room for both, so a worker may be hung or one batch slower than the timeout: "
                "raise execution.stall_timeout if batches legitimately take that long.")
    return ("Free the resources or add nodes if they are taken; raise execution.stall_timeout if batches "
            "legitimately take that long.")


_DONE = object()


def watch(items: Iterable[T], timeout: float | None, on_stall: Callable[[float], str]) -> Iterator[T]:
    """Yield from ``items`` (pulled on a helper thread); raise :class:`StallError` with
    ``on_stall(seconds waited)`` when none arrives for ``timeout`` seconds (None or 0: wait forever).

    Time the caller spends between items does not count. Exceptions of ``items`` propagate unchanged.
    """
    if not timeout:
        yield from items
        return
    q: queue.Queue[tuple[BaseException | None, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(entry: tuple[BaseException | None, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not offer((None, item)):
                    return
            offer((None, _DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            offer((e, None))

    threading.Thread(target=pump, name="cueaudit-batches", daemon=True).start()
    last = time.monotonic()
    try:
        while True:
            try:
                err, item = q.get(timeout=min(1.0, timeout))
            except queue.Empty:
                waited = time.monotonic() - last
                if waited >= timeout:
                    raise StallError(on_stall(waited)) from None
                continue
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
            last = time.monotonic()
    finally:
        stop.set()


# ---- code shipped to workers -------------------------------------------------------------------


def _is_under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _module_paths(name: str) -> list[Path]:
    """Where the top-level module ``name`` lives: a package's directories or a module's file."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p).resolve() for p in spec.submodule_search_locations]
    if spec.origin and spec.origin.endswith(".py") and os.path.isfile(spec.origin):
        return [Path(spec.origin).resolve()]
    return []


def folder_modules(folder: Path) -> list[Path]:
    """The importable code directly in ``folder``: ``*.py`` modules and packages (``__init__.py``)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if (p.suffix == ".py" and p.is_file() and p.stem.isidentifier())
             or (p.is_dir() and p.name.isidentifier() and (p / "__init__.py").is_file())]
    return sorted(p.resolve() for p in found)


def code_to_ship(config_dir: Path, sources: Sequence[str], search: Sequence[Path]) -> list[Path]:
    """Modules a remote worker must import for this config: those in the config's folder, and the
    top-level module of every ``python:`` factory that lives in ``search`` (the config's folder and
    the working directory) rather than in an installed package."""
    roots = [Path(p).resolve() for p in search]
    paths = folder_modules(config_dir.resolve())
    for src in sources:
        if src.startswith("python:"):
            top = src.removeprefix("python:").partition(":")[0].split(".")[0]
            paths += [p for p in _module_paths(top) if _is_under(p, roots)]
    return paths


def worker_runtime_env(code: Sequence[Path] = (), keep_out: Sequence[Path] = ()) -> dict[str, Any]:
    """``runtime_env`` for a run on a remote cluster: cueaudit's worker packages and ``code`` as
    ``py_modules`` (each a package directory or a module file, importable by its name on every
    worker), never virtual environments, caches or ``keep_out`` (results, datasets) inside them.

    Ray uploads each entry once (content-addressed, at most 512 MiB; ``.gitignore`` is honoured),
    and puts it before the installed packages on the workers' path, so the workers run the driver's
    code even where an older cueaudit is installed.
    """
    entries: dict[str, Path] = {}
    for p in [q for name in WORKER_PACKAGES for q in _module_paths(name)] + [Path(c).resolve() for c in code]:
        name = p.stem if p.is_file() else p.name
        if name in entries and entries[name] != p:
            log.warning("not shipping %s to the workers: the module name %r is taken by %s", p, name,
                        entries[name])
            continue
        entries[name] = p
    excludes = list(EXCLUDES)
    for d in (p for p in entries.values() if p.is_dir()):
        for k in keep_out:
            k = Path(k).resolve()
            if _is_under(k, [d]) and k != d:
                excludes.append("/" + k.relative_to(d).as_posix())
    return {"py_modules": [str(p) for p in entries.values()], "excludes": excludes}


def merge_job_env(ours: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Inside a submitted Ray job, add the job's own ``py_modules``/``excludes`` to ours (Ray refuses
    a driver runtime_env that repeats a job-level field unless told to override). Returns the env
    and whether the override is needed."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return ours, False
    job = (json.loads(raw).get("runtime_env") or {})
    clash = [k for k in ours if k in job]
    if not clash:
        return ours, False
    merged = dict(ours)
    for k in clash:
        merged[k] = list(dict.fromkeys([*job[k], *ours[k]]))
    return merged, True


# ---- the embedded local Ray ----------------------------------------------------------------------

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
    """Start an embedded Ray inside this block on 127.0.0.1 only.

    Ray listens on its node IP address. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what Ray does
    by default on macOS and Windows) the node IP is 127.0.0.1, and the GCS, raylet, object manager,
    workers and runtime-env agent listen on the loopback interface only: nothing on the network can
    reach the unauthenticated local cluster. Ray reads the variable at import, so the imported
    constant is set too; the processes started here inherit the variable.
    """
    from ray._private import ray_constants

    old_env, old_const = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = old_env
