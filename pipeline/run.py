"""The Ray Data plan of ``cueaudit run``: manifest -> CPU prepare -> model actors -> Parquet.

Per model::

    ray.data.from_blocks(manifest blocks)
      .map_batches(prepare_batch)            CPU tasks: decode, geometry, masks (workers.prepare)
      .map_batches(AuditActor, concurrency=n, num_gpus=g)   one model replica per GPU (or CPU actors)
      -> iter_batches on the driver -> PartWriter (atomic part files)

The driver writes the Parquet parts itself instead of ``write_parquet``: Ray retries a failed task
or restarts a killed actor, and a task retried after its output was written would duplicate rows;
the driver receives each output block exactly once, so parts hold every image once, and a part is
only ever visible complete. Resuming is then a set difference: images already scored by a model
with the same fingerprint are skipped, so a killed run restarts where it stopped and re-running a
finished audit does no work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.storage import AnyPath, configure
from pipeline.cluster import (
    ClusterError,
    cluster_nodes,
    code_to_ship,
    describe_stall,
    loopback_only,
    merge_job_env,
    plan_resources,
    watch,
    worker_runtime_env,
)
from pipeline.collect import timings, worker_table
from pipeline.config import LoadedConfig
from pipeline.coverage import coverage_of, dataset_ids, write_dataset
from pipeline.donors import assign_donors
from pipeline.lock import LockError, RunLock
from pipeline.readers import read_manifest
from pipeline.readers.base import mask_roots
from pipeline.schema import (
    ModelRun,
    PartWriter,
    PrepareGroup,
    RunRecord,
    new_run_id,
    read_results,
    scored_and_retry,
    write_run,
)

log = logging.getLogger(__name__)

COUNTERFACTUAL_CONSTRUCTION = "tiles-1"
"""Bump when the counterfactual images change for the same config (results are then scored again)."""
BLOCK_ROWS_PER_BATCH = 4  # manifest blocks of a few batches: streaming, progress and commits stay fine-grained


class RunError(RuntimeError):
    """The run could not proceed (a model that does not load, a cluster that cannot be reached)."""


class SystematicStop(RuntimeError):
    """A worker reported a systematic failure (:mod:`workers.faults`)."""


@dataclass(frozen=True)
class Placement:
    """Where the scoring actors run, resolved from the resources plan, and what that makes of the
    numbers: ``device`` (cuda | cpu), ``autocast`` (none | bf16 | fp16: ``execution.autocast``
    resolved for that device) and ``decode`` (device: JPEGs decoded by the actor, nvJPEG on a GPU;
    cpu: by PIL in the prepare tasks). All three are part of the fingerprint, so rows from GPU and
    CPU actors, or from the two decoders, never mix under one fingerprint."""

    device: str
    autocast: str
    decode: str

    @property
    def precision(self) -> str:
        return "fp32" if self.autocast == "none" else self.autocast


def placement(exe: Any, gpus: float) -> Placement:
    """The placement of actors that reserve ``gpus`` GPUs each (:func:`pipeline.cluster.plan_resources`):
    ``autocast: auto`` is bf16 on a GPU and fp32 on the CPU (as :func:`workers.score.resolve_autocast`),
    ``decode: auto`` decodes JPEGs on the device when it is a GPU."""
    device = "cuda" if gpus > 0 else "cpu"
    autocast = exe.autocast if exe.autocast != "auto" else ("bf16" if device == "cuda" else "none")
    decode = "device" if exe.decode == "device" or (exe.decode == "auto" and device == "cuda") else "cpu"
    return Placement(device, autocast, decode)


def static_placement(exe: Any) -> Placement | None:
    """The placement when the config alone decides it (CPU actors forced), else None (the cluster's
    GPUs decide)."""
    if exe.device == "cpu" or exe.gpus_per_worker == 0:
        return placement(exe, 0.0)
    return None


CPU_PLACEMENT = Placement("cpu", "none", "cpu")


@dataclass
class ModelPlan:
    name: str
    spec: Any  # workers.models.ModelSpec
    opts: Any  # workers.score.ScoreOptions, device and autocast resolved by the placement
    fingerprint: str
    fine_reason: str | None = None  # why opts.fine_layer was (not) chosen automatically
    placement: Placement = CPU_PLACEMENT
    preprocess: Any = None  # common.preprocess.Preprocess: models sharing it share the prepare stage


@dataclass
class RunSummary:
    run_id: str
    output: Path
    images: int
    models: dict[str, ModelRun] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> error_kind -> images, over the dataset
    seconds: float = 0.0


NOT_FINGERPRINTED = ("both_maps",)  # what is stored besides the numbers, not how they are measured


def audit_fingerprint(spec_fp: str, opts: Any, counterfactual: dict[str, Any] | None = None,
                      place: Placement = CPU_PLACEMENT) -> str:
    """Model fingerprint + everything about *how* it is audited that changes the numbers.

    ``counterfactual``: the construction of the counterfactual images (donor seed, box dilation,
    context ablation), when they are computed; its version names the construction itself.
    ``place``: the actors' device, the resolved precision and the decoder (see :class:`Placement`).
    Compilation does not change the numbers and is left out.
    """
    from dataclasses import replace

    opts = replace(opts, device=place.device, autocast=place.autocast, compile=False)
    measured = {k: v for k, v in asdict(opts).items() if k not in NOT_FINGERPRINTED}
    payload: dict[str, Any] = {"spec": spec_fp, "opts": measured, "decode": place.decode, "schema": 2}
    if counterfactual is not None:
        payload["counterfactual"] = {**counterfactual, "construction": COUNTERFACTUAL_CONSTRUCTION}
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def import_paths(loaded: LoadedConfig) -> list[str]:
    """Where ``python:module:function`` factories are found: the config's folder and the working
    directory (like ``python -m``), then the interpreter's own path."""
    return list(dict.fromkeys([str(loaded.base), os.getcwd(), *[p for p in sys.path if p]]))


def worker_code(loaded: LoadedConfig, plans: list[ModelPlan]) -> list[Path]:
    """What a worker on a remote cluster imports for this config (:func:`pipeline.cluster.code_to_ship`)."""
    search = [Path(p) for p in import_paths(loaded)[:2]]
    return code_to_ship(loaded.base, [p.spec.source for p in plans], search)


def _fine_layer(loaded: LoadedConfig, mcfg: Any, spec: Any, manifest: pa.Table | None) -> tuple[str | None, str | None]:
    """The finer layer to audit beside the main one, and why (``fine_layer: auto`` decides from the
    objects' median size in feature cells; see :mod:`workers.resolution`)."""
    fine = loaded.fine_layer_for(mcfg)
    if fine != "auto":
        return fine, None if fine is None else "configured"
    if manifest is None:
        return None, None
    from workers.models import ModelLoadError
    from workers.resolution import decide_fine_layer

    try:
        d = decide_fine_layer(spec, manifest, layer=loaded.layer_for(mcfg),
                              layout=None if mcfg.layout == "auto" else mcfg.layout, prefix_tokens=mcfg.prefix_tokens)
    except (ModelLoadError, ValueError, OSError) as e:
        raise RunError(f"model {spec.name!r}: cannot decide fine_layer: {e} (fine_layer: auto loads the "
                       "model once on the driver to measure its feature maps; name the layer, or set "
                       "fine_layer: none, where only the workers can load it)") from None
    log.info("model %s: %s (%d images sampled)", spec.name, d.reason, d.images)
    return d.fine_layer, d.reason


def plan_models(loaded: LoadedConfig, manifest: pa.Table | None = None,
                place: Placement = CPU_PLACEMENT) -> list[ModelPlan]:
    """One plan per model; with ``manifest``, ``fine_layer: auto`` is resolved from its annotations.

    ``place``: where the actors run (:func:`placement`; :func:`run_audit` passes the resources
    plan's); it resolves ``device`` and ``autocast`` in the options and enters the fingerprint.
    """
    from workers.models import resolve_spec
    from workers.score import ScoreOptions

    for p in reversed(import_paths(loaded)[:2]):
        if p not in sys.path:
            sys.path.insert(0, p)
    cfg = loaded.config
    plans = []
    for mcfg, spec in zip(cfg.models, loaded.model_specs(), strict=True):
        fine, why = _fine_layer(loaded, mcfg, spec, manifest)
        opts = ScoreOptions(
            cam=cfg.cam,
            layer=loaded.layer_for(mcfg),
            target=cfg.target,
            device=place.device,
            autocast=place.autocast,
            counterfactual=cfg.counterfactual.enabled,
            fill=cfg.counterfactual.fill,
            compile=cfg.execution.compile,
            layout=mcfg.layout,
            prefix_tokens=mcfg.prefix_tokens,
            label_map=mcfg.label_map_items(),
            fine_layer=fine,
            both_maps=cfg.both_maps_when_wrong,
            embedding=cfg.embedding.enabled,
            embedding_dim=cfg.embedding.dim,
            embedding_seed=cfg.embedding.seed,
        )
        try:
            preprocess = resolve_spec(spec)[2]
        except (ValueError, OSError) as e:
            raise RunError(str(e)) from None
        plans.append(ModelPlan(spec.name, spec, opts, "", why, place, preprocess))
    return placed(plans, loaded, place)


def placed(plans: list[ModelPlan], loaded: LoadedConfig, place: Placement) -> list[ModelPlan]:
    """The plans for actors at ``place``: options and fingerprints resolved for it (no model is loaded again)."""
    from dataclasses import replace

    from workers.models import spec_fingerprint

    cfg = loaded.config
    cf = cfg.counterfactual.model_dump(exclude={"enabled", "fill"}) if cfg.counterfactual.enabled else None
    out = []
    for p in plans:
        opts = replace(p.opts, device=place.device, autocast=place.autocast)
        try:
            fp = audit_fingerprint(spec_fingerprint(p.spec), opts, cf, place)
        except (ValueError, OSError) as e:
            raise RunError(str(e)) from None
        out.append(replace(p, opts=opts, fingerprint=fp, placement=place))
    return out


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, code: Sequence[Path] = (),
                keep_out: Sequence[Path] = ()):
    """Join ``address`` (or ``RAY_ADDRESS``), or start an embedded local Ray for this run.

    A joined cluster gets the code its workers import through ``runtime_env`` (cueaudit's worker
    packages and ``code``, never ``keep_out``; see :func:`pipeline.cluster.worker_runtime_env`). The
    embedded Ray listens on 127.0.0.1 only. A Ray already initialised in this process (a test
    session, a notebook) is reused as it is and left up.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True}
    override = False
    if address:
        kwargs["address"] = address
        kwargs["runtime_env"], override = merge_job_env(worker_runtime_env(code, keep_out))
    else:
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        # "local": a new Ray even when another one runs on this machine (None would join it)
        kwargs["address"], kwargs["_node_ip_address"] = "local", "127.0.0.1"
        # Local workers import the same code as the driver (and factories next to the config).
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        kwargs["runtime_env"]["env_vars"]["RAY_DEDUP_LOGS"] = "0"
    try:
        with loopback_only() if not address else nullcontext(), _job_env_override(override):
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
        raise RunError(f"cannot start or join Ray at {address or 'local'}: {e}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _job_env_override(on: bool):
    if not on:
        yield
        return
    old = os.environ.get("RAY_OVERRIDE_JOB_RUNTIME_ENV")
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_OVERRIDE_JOB_RUNTIME_ENV", None)
        else:
            os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = old


def _resources(ray: Any, exe: Any) -> dict[str, Any]:
    """Actors per model and what each reserves, sized per node (:func:`pipeline.cluster.plan_resources`)."""
    try:
        return asdict(plan_resources(cluster_nodes(ray), exe))
    except ClusterError as e:
        raise RunError(str(e)) from None


def _blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cueaudit")
    except PackageNotFoundError:
        return "dev"


@dataclass
class Group:
    """Models that share a preprocessing: one prepare stage and one actor pool score them together."""

    plans: list[ModelPlan]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plans]

    def label(self) -> str:
        return f"model {self.names[0]!r}" if len(self.plans) == 1 else "models " + ", ".join(map(repr, self.names))


def groups_of(plans: Sequence[ModelPlan]) -> list[Group]:
    """Plans grouped by preprocessing, in config order."""
    groups: dict[Any, Group] = {}
    for p in plans:
        groups.setdefault(p.preprocess, Group([])).plans.append(p)
    return list(groups.values())


def _todo(out: AnyPath, plan: ModelPlan, ids: pa.ChunkedArray, retry: Sequence[str]) -> tuple[pa.Array, int]:
    """(mask over the manifest of the images this model still has to score, how many of them are retries)."""
    done, again = scored_and_retry(out, plan.name, plan.fingerprint, retry)
    mask = pc.invert(pc.is_in(ids, value_set=done)).combine_chunks()
    retried = int(pc.sum(pc.is_in(ids, value_set=again).cast(pa.int64())).as_py() or 0) if len(again) else 0
    return mask, retried


def _plan_work(out: AnyPath, plans: list[ModelPlan], manifest: pa.Table, record: RunRecord,
               retry: Sequence[str]) -> dict[str, pa.Array]:
    """Per model, the mask of manifest rows still to score (new, or a retried error); fills ``record.models``."""
    todo: dict[str, pa.Array] = {}
    ids = manifest.column("image_id")
    target = record.config.get("target", "predicted")
    for plan in plans:
        todo[plan.name], retried = _todo(out, plan, ids, retry)
        n = int(pc.sum(todo[plan.name].cast(pa.int64())).as_py() or 0)
        place = plan.placement
        record.models[plan.name] = ModelRun(
            fingerprint=plan.fingerprint, source=plan.spec.source, target=target, to_score=n,
            skipped=manifest.num_rows - n, fine_layer=plan.opts.fine_layer, fine_reason=plan.fine_reason,
            device=place.device, precision=place.precision, decode=place.decode, retried=retried)
        if retried:
            log.info("model %s: scoring %d image(s) again whose latest row is an error of a retried kind "
                     "(execution.retry_errors)", plan.name, retried)
    return todo


def run_audit(loaded: LoadedConfig, *, address: str | None = None, progress: bool = True,
              console: Any = None) -> RunSummary:
    """Audit every configured model over the dataset; resume where earlier runs stopped.

    Holds the output's lock (:mod:`pipeline.lock`) for the whole run; records the dataset it saw
    (:mod:`pipeline.coverage`) and, when it finishes, what the results cover per model.
    """
    cfg = loaded.config
    exe = cfg.execution
    configure(cfg.storage.to_options())  # object stores of the dataset and the output, in this process
    out = loaded.output
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    manifest = read_manifest(cfg.dataset, loaded.base)
    plans = plan_models(loaded, manifest)
    run_id = new_run_id()
    roots = sorted(set(manifest.column("dataset_root").to_pylist()) - {None})
    record = RunRecord(run_id=run_id, name=cfg.name, started_at=datetime.now(UTC).isoformat(),
                       config=json.loads(cfg.model_dump_json()), dataset_roots=roots,
                       mask_roots=mask_roots(manifest),
                       images=manifest.num_rows, cueaudit_version=_version())
    summary = RunSummary(run_id=run_id, output=out, images=manifest.num_rows, models=record.models)
    try:
        lock = RunLock(out, run_id, exe.lock_timeout, record.started_at)
        lock.acquire()
    except LockError as e:
        raise RunError(str(e)) from None
    try:
        ids = dataset_ids(manifest)
        record.dataset_fingerprint = write_dataset(out, ids)
        write_run(out, record)
        if cfg.counterfactual.enabled:
            # Donors come from the whole dataset, also for the images an incremental run still has to score.
            manifest = assign_donors(manifest, seed=cfg.counterfactual.seed)
        with ExitStack() as stack:
            session = lambda: stack.enter_context(ray_session(  # started at most once, when needed
                address or exe.address, exe.num_cpus, code=worker_code(loaded, plans),
                keep_out=[p for p in (out, *map(Path, roots)) if isinstance(p, Path)]))
            ray = res = None
            place = static_placement(exe)
            if place is None:  # the cluster's GPUs decide the device, hence the fingerprints
                ray = session()
                res = _resources(ray, exe)
                place = placement(exe, res["gpus"])
            plans = placed(plans, loaded, place)
            todo = _plan_work(out, plans, manifest, record, exe.retry_errors)
            write_run(out, record)
            pending = [g for g in groups_of(plans) if any(record.models[n].to_score for n in g.names)]
            if not pending:
                log.info("nothing to do: every image is already scored for every model")
            for group in pending:
                if ray is None:
                    ray = session()
                    res = _resources(ray, exe)
                _run_group(ray, loaded, group, manifest, todo, run_id, out, res, record, lock, progress, console)
                write_run(out, record)
        lock.check()
        names = [p.name for p in plans]
        coverage = coverage_of(read_results(out, columns=["model", "image_id", "error_kind"], models=names), ids, names)
        for name, c in coverage.items():
            record.models[name].coverage = c
        summary.errors = {m: dict(c.errors) for m, c in coverage.items() if c.errors}
        record.status = "finished"
    except BaseException as e:
        record.status = "failed"
        record.error = str(e) or type(e).__name__
        if isinstance(e, LockError):
            raise RunError(str(e)) from None
        raise
    finally:
        record.finished_at = datetime.now(UTC).isoformat()
        try:
            write_run(out, record)
        finally:
            lock.release()
    summary.seconds = time.time() - t0
    return summary


def failure_text(e: BaseException) -> str:
    """``Type: message`` of the exception a worker raised, out of Ray's wrappers. Ray Data wraps it
    in a ``UserCodeException`` whose cause does not survive the trip to the driver, only its
    traceback text: the line before "The above exception was the direct cause" names it."""
    cur: BaseException | None = e
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if not type(cur).__module__.startswith("ray"):
            return f"{type(cur).__name__}: {cur}"
        cur = getattr(cur, "cause", None) or cur.__cause__
    text = str(e)
    head = text.split("The above exception was the direct cause", 1)[0]
    lines = [ln.strip() for ln in head.splitlines() if re.match(r"^[A-Za-z_][\w.]*: ", ln.strip())]
    return lines[-1] if lines else f"{type(e).__name__}: {text}"


def _uniform(v: np.ndarray) -> np.ndarray:
    """An object column of equal-shaped arrays (one model's rows of a column that differed between
    the models of a group, see :func:`workers.multi.concat_columns`) back to one array."""
    if v.dtype == object and len(v) and all(isinstance(x, np.ndarray) for x in v) and len({x.shape for x in v}) == 1:
        return np.stack(list(v))
    return v


def _run_group(ray: Any, loaded: LoadedConfig, group: Group, manifest: pa.Table, todo: dict[str, pa.Array],
               run_id: str, out: AnyPath, res: dict[str, Any], record: RunRecord, lock: RunLock, progress: bool,
               console: Any) -> None:
    """Score the models of one group in one stream: the union of their images is prepared once, each
    model scores the rows it still needs (``_want_<k>``), and the driver writes each model's parts."""
    from ray.data import ActorPoolStrategy, DataContext

    from workers.actor import AuditActor
    from workers.faults import FATAL
    from workers.multi import MODEL_COLUMN, WANT_PREFIX, ModelJob
    from workers.prepare import PrepareOptions, prepare_batch

    cfg = loaded.config
    names = group.names
    union = todo[names[0]]
    for n in names[1:]:
        union = pc.or_(union, todo[n])
    table = manifest.filter(union)
    for k, n in enumerate(names):
        want = todo[n].filter(union)
        if not pc.all(want).as_py():  # a resumed run: this model has fewer images left than the union
            table = table.append_column(f"{WANT_PREFIX}{k}", want)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # progress/fusion chatter; failures still raise
    bs = cfg.execution.batch_size
    # from_blocks computes block metadata here: no remote task that waits for a free CPU before the stall watch
    ds = ray.data.from_blocks(_blocks(table, max(64, bs * BLOCK_ROWS_PER_BATCH)))
    place = group.plans[0].placement
    cf = cfg.counterfactual
    popts = PrepareOptions(group.plans[0].preprocess, cfg.execution.max_pixels, device_decode=place.decode == "device",
                           dilation=cf.dilation, context=cf.enabled and cf.context, seed=cf.seed,
                           storage=cfg.storage.to_options())
    ds = ds.map_batches(prepare_batch, fn_kwargs={"opts": popts},
                        batch_size=bs, batch_format="numpy", num_cpus=res["prepare_cpus"])
    jobs = [ModelJob(p.name, p.spec, p.opts) for p in group.plans]
    # Ray Data restarts a killed actor and retries its batch (max_restarts=-1 by default).
    ds = ds.map_batches(AuditActor, fn_constructor_kwargs={"jobs": jobs, "threads": res["threads"]},
                        batch_size=bs, batch_format="numpy", compute=ActorPoolStrategy(size=res["workers"]),
                        num_gpus=res["gpus"], num_cpus=res["cpus"])
    writers = {n: PartWriter(out, n, run_id) for n in names}
    pending: dict[str, list[pa.Table]] = {n: [] for n in names}
    grec = PrepareGroup(models=list(names))
    record.groups.append(grec)
    last_flush = time.time()
    t_start = time.time()

    def flush() -> None:
        nonlocal last_flush
        for n, tables in pending.items():
            if tables:
                t = time.perf_counter()
                writers[n].write(pa.concat_tables(tables))
                secs = record.models[n].seconds
                secs["write"] = secs.get("write", 0.0) + time.perf_counter() - t
                tables.clear()
        record.updated_at = datetime.now(UTC).isoformat()
        write_run(out, record)  # heartbeat + counts: a killed run shows how far it got
        last_flush = time.time()
        lock.check()

    def add(key: str, value: float) -> None:
        grec.seconds[key] = grec.seconds.get(key, 0.0) + value

    totals = {n: record.models[n].to_score for n in names}
    bar = _progress(console, progress)
    try:
        with bar as p:
            tasks = {n: p.add_task(n, total=totals[n]) for n in names} if p else {}
            nodes = [n.node_id for n in cluster_nodes(ray)]
            batches = watch(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1),
                            cfg.execution.stall_timeout,
                            lambda waited: describe_stall(ray, names, res, waited, nodes))
            for batch in batches:
                if FATAL in batch:  # a stage failed systematically (workers.faults): stop, write nothing of it
                    raise SystematicStop(str(next(m for m in batch[FATAL] if m)))
                for k, v in timings(batch).items():
                    if k != "score":
                        add(k, v)
                grec.images += int(np.sum(batch.get("_n_images", 0)))
                grec.decodes += int(np.sum(batch.get("_n_decodes", 0)))
                which = np.asarray(batch[MODEL_COLUMN])
                for k, n in enumerate(names):
                    sel = which == k
                    if not sel.any():
                        continue
                    sub = {key: _uniform(np.asarray(v)[sel]) for key, v in batch.items()}
                    mrun = record.models[n]
                    mrun.seconds["score"] = mrun.seconds.get("score", 0.0) + float(np.sum(sub.get("_t_score", 0.0)))
                    t = worker_table(sub, run_id=run_id, model=n, fingerprint=record.models[n].fingerprint)
                    pending[n].append(t)
                    mrun.scored += t.num_rows
                    mrun.errors += t.num_rows - t.column("error").null_count
                    for kind in t.column("error_kind").drop_null().to_pylist():
                        mrun.errors_by_kind[kind] = mrun.errors_by_kind.get(kind, 0) + 1
                    if mrun.feature_layer is None:
                        layers = [v for v in t.column("feature_layer").to_pylist() if v]
                        mrun.feature_layer = layers[0] if layers else None
                    if p:
                        p.update(tasks[n], advance=t.num_rows)
                if (sum(x.num_rows for ts in pending.values() for x in ts) >= cfg.execution.flush_rows
                        or time.time() - last_flush > cfg.execution.flush_seconds):
                    flush()
    except (ClusterError, SystematicStop) as e:  # a stall or a broken model: the message says which
        flush()
        raise RunError(str(e)) from None
    except LockError:
        raise
    except Exception as e:
        flush()
        raise RunError(f"{group.label()} failed: {failure_text(e)}") from e
    flush()
    wall = time.time() - t_start
    grec.seconds["wall"] = wall
    for n in names:  # the prepare stage and the stream are shared by the group's models
        secs = record.models[n].seconds
        secs["wall"] = wall
        for key in ("prepare", "decode"):
            if key in grec.seconds:
                secs[key] = grec.seconds[key]


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def _progress(console: Any, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} img/s" if task.speed else "", style="cyan")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def headline(out: Path, models: list[str]) -> list[dict[str, Any]]:
    """Per model: images, errors, accuracy, mean object share, pointing rate (for the end-of-run table)."""
    from pipeline.schema import read_results

    t = read_results(out, columns=["model", "error", "correct", "object_share", "object_area", "pointing_hit",
                                   "feature_layer", "cam_h", "cam_w"], models=models)
    df = t.to_pandas()
    rows = []
    for m in models:
        d = df[df.model == m]
        ok = d[d.error.isna()]
        rows.append({
            "model": m,
            "images": len(d),
            "errors": int(d.error.notna().sum()),
            "accuracy": float(ok.correct.dropna().astype(float).mean()) if ok.correct.notna().any() else float("nan"),
            "object_share": float(np.nanmean(ok.object_share)) if ok.object_share.notna().any() else float("nan"),
            "object_area": float(np.nanmean(ok.object_area)) if ok.object_area.notna().any() else float("nan"),
            "pointing": float(ok.pointing_hit.dropna().astype(float).mean()) if ok.pointing_hit.notna().any() else float("nan"),
            "layer": (ok.feature_layer.dropna().iloc[0] if ok.feature_layer.notna().any() else None),
            "map": (f"{int(ok.cam_h.dropna().iloc[0])}x{int(ok.cam_w.dropna().iloc[0])}" if ok.cam_h.notna().any() else None),
        })
    return rows
