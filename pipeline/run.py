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
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.storage import configure
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
from pipeline.donors import assign_donors
from pipeline.readers import read_manifest
from pipeline.readers.base import mask_roots
from pipeline.schema import ModelRun, PartWriter, RunRecord, new_run_id, scored_ids, write_run

log = logging.getLogger(__name__)

COUNTERFACTUAL_CONSTRUCTION = "tiles-1"
"""Bump when the counterfactual images change for the same config (results are then scored again)."""
BLOCK_ROWS_PER_BATCH = 4  # manifest blocks of a few batches: streaming, progress and commits stay fine-grained


class RunError(RuntimeError):
    """The run could not proceed (a model that does not load, a cluster that cannot be reached)."""


@dataclass
class ModelPlan:
    name: str
    spec: Any  # workers.models.ModelSpec
    opts: Any  # workers.score.ScoreOptions
    fingerprint: str
    fine_reason: str | None = None  # why opts.fine_layer was (not) chosen automatically


@dataclass
class RunSummary:
    run_id: str
    output: Path
    images: int
    models: dict[str, ModelRun] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


NOT_FINGERPRINTED = ("both_maps",)  # what is stored besides the numbers, not how they are measured


def audit_fingerprint(spec_fp: str, opts: Any, counterfactual: dict[str, Any] | None = None) -> str:
    """Model fingerprint + everything about *how* it is audited that changes the numbers.

    ``counterfactual``: the construction of the counterfactual images (donor seed, box dilation,
    context ablation), when they are computed; its version names the construction itself.
    """
    measured = {k: v for k, v in asdict(opts).items() if k not in NOT_FINGERPRINTED}
    payload: dict[str, Any] = {"spec": spec_fp, "opts": measured, "schema": 1}
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
        raise RunError(f"model {spec.name!r}: cannot decide fine_layer: {e}") from None
    log.info("model %s: %s (%d images sampled)", spec.name, d.reason, d.images)
    return d.fine_layer, d.reason


def plan_models(loaded: LoadedConfig, manifest: pa.Table | None = None) -> list[ModelPlan]:
    """One plan per model; with ``manifest``, ``fine_layer: auto`` is resolved from its annotations."""
    from workers.models import spec_fingerprint
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
            device=cfg.execution.device,
            autocast=cfg.execution.autocast,
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
        cf = cfg.counterfactual.model_dump(exclude={"enabled", "fill"}) if cfg.counterfactual.enabled else None
        try:
            fp = audit_fingerprint(spec_fingerprint(spec), _fingerprinted(opts), cf)
        except (ValueError, OSError) as e:
            raise RunError(str(e)) from None
        plans.append(ModelPlan(spec.name, spec, opts, fp, why))
    return plans


def _fingerprinted(opts: Any) -> Any:
    """Options that change results (device and compilation do not)."""
    from dataclasses import replace

    return replace(opts, device="any", compile=False)


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
        kwargs["address"] = "local"  # a new Ray for this run, even when `ray start` left a cluster on the machine
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


def run_audit(loaded: LoadedConfig, *, address: str | None = None, progress: bool = True,
              console: Any = None) -> RunSummary:
    """Audit every configured model over the dataset; resume where earlier runs stopped."""
    cfg = loaded.config
    configure(cfg.storage.to_options())  # object stores of the dataset and the output, in this process
    out = loaded.output
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    manifest = read_manifest(cfg.dataset, loaded.base)
    plans = plan_models(loaded, manifest)
    run_id = new_run_id()
    roots = sorted(set(manifest.column("dataset_root").to_pylist()))
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("cueaudit")
    except PackageNotFoundError:
        ver = "dev"
    record = RunRecord(run_id=run_id, name=cfg.name, started_at=datetime.now(UTC).isoformat(),
                       config=json.loads(cfg.model_dump_json()), dataset_roots=roots,
                       mask_roots=mask_roots(manifest),
                       images=manifest.num_rows, cueaudit_version=ver)
    if cfg.counterfactual.enabled:
        # Donors come from the whole dataset, also for the images an incremental run still has to score.
        manifest = assign_donors(manifest, seed=cfg.counterfactual.seed)
    todo: dict[str, pa.Table] = {}
    for plan in plans:
        done = scored_ids(out, plan.name, plan.fingerprint)
        mask = pc.invert(pc.is_in(manifest.column("image_id"), value_set=pa.array(sorted(done), pa.string())))
        todo[plan.name] = manifest.filter(mask)
        record.models[plan.name] = ModelRun(fingerprint=plan.fingerprint, source=plan.spec.source,
                                            target=cfg.target, to_score=todo[plan.name].num_rows,
                                            skipped=manifest.num_rows - todo[plan.name].num_rows,
                                            fine_layer=plan.opts.fine_layer, fine_reason=plan.fine_reason)
    write_run(out, record)
    summary = RunSummary(run_id=run_id, output=out, images=manifest.num_rows, models=record.models)
    pending = {n: t for n, t in todo.items() if t.num_rows}
    if not pending:
        log.info("nothing to do: every image is already scored for every model")
    try:
        if pending:
            session = ray_session(address or cfg.execution.address, cfg.execution.num_cpus,
                                  code=worker_code(loaded, plans), keep_out=[out, *map(Path, roots)])
            with session as ray:
                res = _resources(ray, cfg.execution)
                for plan in plans:
                    if plan.name in pending:
                        _run_model(ray, loaded, plan, pending[plan.name], run_id, out, res, record, progress, console)
                        write_run(out, record)
        record.status = "finished"
    except BaseException:
        record.status = "failed"
        raise
    finally:
        record.finished_at = datetime.now(UTC).isoformat()
        write_run(out, record)
    summary.seconds = time.time() - t0
    summary.errors = error_counts(out, [p.name for p in plans])
    return summary


def _run_model(ray: Any, loaded: LoadedConfig, plan: ModelPlan, table: pa.Table, run_id: str, out: Path,
               res: dict[str, Any], record: RunRecord, progress: bool, console: Any) -> None:
    from ray.data import ActorPoolStrategy, DataContext

    from workers.actor import AuditActor
    from workers.models import resolve_spec
    from workers.prepare import PrepareOptions, prepare_batch

    cfg = loaded.config
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # progress/fusion chatter; failures still raise
    _, _, preprocess, _ = resolve_spec(plan.spec)
    bs = cfg.execution.batch_size
    # from_blocks computes block metadata here: no remote task that waits for a free CPU before the stall watch
    ds = ray.data.from_blocks(_blocks(table, max(64, bs * BLOCK_ROWS_PER_BATCH)))
    device_decode = cfg.execution.decode == "device" or (cfg.execution.decode == "auto" and res["gpus"] > 0)
    cf = cfg.counterfactual
    popts = PrepareOptions(preprocess, cfg.execution.max_pixels, device_decode=device_decode, dilation=cf.dilation,
                           context=cf.enabled and cf.context, seed=cf.seed, storage=cfg.storage.to_options())
    ds = ds.map_batches(prepare_batch, fn_kwargs={"opts": popts},
                        batch_size=bs, batch_format="numpy", num_cpus=res["prepare_cpus"])
    # Ray Data restarts a killed actor and retries its batch (max_restarts=-1 by default).
    ds = ds.map_batches(AuditActor, fn_constructor_kwargs={"spec": plan.spec, "opts": plan.opts, "threads": res["threads"]},
                        batch_size=bs, batch_format="numpy", compute=ActorPoolStrategy(size=res["workers"]),
                        num_gpus=res["gpus"], num_cpus=res["cpus"])
    writer = PartWriter(out, plan.name, run_id)
    mrun = record.models[plan.name]
    pending: list[pa.Table] = []
    last_flush = time.time()

    secs = mrun.seconds
    t_start = time.time()

    def flush() -> None:
        nonlocal pending, last_flush
        if pending:
            t = time.perf_counter()
            writer.write(pa.concat_tables(pending))
            secs["write"] = secs.get("write", 0.0) + time.perf_counter() - t
            pending = []
            record.updated_at = datetime.now(UTC).isoformat()
            write_run(out, record)  # heartbeat + counts: a killed run shows how far it got
        last_flush = time.time()

    bar = _progress(console, progress, plan.name, table.num_rows)
    try:
        with bar as p:
            task = p.add_task(plan.name, total=table.num_rows) if p else None
            nodes = [n.node_id for n in cluster_nodes(ray)]
            batches = watch(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1),
                            cfg.execution.stall_timeout,
                            lambda waited: describe_stall(ray, plan.name, res, waited, nodes))
            for batch in batches:
                for k, v in timings(batch).items():
                    secs[k] = secs.get(k, 0.0) + v
                t = worker_table(batch, run_id=run_id, model=plan.name, fingerprint=plan.fingerprint)
                pending.append(t)
                mrun.scored += t.num_rows
                mrun.errors += t.num_rows - t.column("error").null_count
                if mrun.feature_layer is None:
                    layers = [v for v in t.column("feature_layer").to_pylist() if v]
                    mrun.feature_layer = layers[0] if layers else None
                if (sum(x.num_rows for x in pending) >= cfg.execution.flush_rows
                        or time.time() - last_flush > cfg.execution.flush_seconds):
                    flush()
                if p:
                    p.update(task, advance=t.num_rows)
    except ClusterError as e:  # a stall: its message says what the run waits for
        flush()
        raise RunError(str(e)) from None
    except Exception as e:
        flush()
        cause = getattr(e, "cause", None) or e
        raise RunError(f"model {plan.name!r} failed: {type(cause).__name__}: {cause}") from e
    flush()
    secs["wall"] = time.time() - t_start


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def _progress(console: Any, enabled: bool, name: str, total: int) -> Any:
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


def error_counts(out: Path, models: list[str]) -> dict[str, dict[str, int]]:
    """Per model: error_kind -> count, over the current results."""
    from pipeline.schema import read_results

    counts: dict[str, dict[str, int]] = {}
    try:
        t = read_results(out, columns=["model", "error_kind"], models=models)
    except Exception:  # a summary must not fail the run that produced the results
        log.exception("could not count errors in %s", out)
        return counts
    for m, k in zip(t.column("model").to_pylist(), t.column("error_kind").to_pylist(), strict=True):
        if k:
            counts.setdefault(m, Counter())[k] += 1
    return {m: dict(c) for m, c in counts.items()}


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
