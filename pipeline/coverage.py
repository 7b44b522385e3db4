"""What a results directory covers: the dataset a run saw, and which of its images the results hold.

Every run stores the set of image ids of its dataset once, content-addressed, as
``_datasets/<fingerprint>.parquet`` (one ``image_id`` column, sorted), and records the fingerprint
in its run record. A later judge compares the results with that set: per model, the images with a
scored row, with an error row (by kind), and with no row at all (``missing``). The gate refuses to
judge a state that is not a finished run covering its dataset (:func:`judge_coverage`).

Imports neither torch nor Ray (the gate uses it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.storage import AnyPath, Location, as_path, write_atomic
from pipeline.schema import Coverage, RunRecord

log = logging.getLogger(__name__)

DATASETS_DIR = "_datasets"
COMPLETE, PARTIAL, UNVERIFIED = "complete", "partial", "unverified"


def dataset_ids(manifest: pa.Table) -> pa.Array:
    """The manifest's image ids, unique and sorted (what the fingerprint is taken over)."""
    ids = pc.unique(manifest.column("image_id").combine_chunks())
    return ids.take(pc.sort_indices(ids))


def dataset_fingerprint(ids: pa.Array) -> str:
    """sha256 of the sorted, unique image ids (joined by newlines), 16 hex digits."""
    h = hashlib.sha256()
    h.update("\n".join(ids.to_pylist()).encode())
    return h.hexdigest()[:16]


def dataset_file(root: str | os.PathLike[str] | Location, fingerprint: str) -> AnyPath:
    return as_path(root) / DATASETS_DIR / f"{fingerprint}.parquet"


def write_dataset(root: str | os.PathLike[str] | Location, ids: pa.Array) -> str:
    """Store the ids under their fingerprint (once: an existing file holds the same ids) and return it."""
    fp = dataset_fingerprint(ids)
    path = dataset_file(root, fp)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(pa.table({"image_id": ids}), buf, compression="zstd")
        write_atomic(path, buf.getvalue())
    return fp


def read_dataset(root: str | os.PathLike[str] | Location, fingerprint: str) -> pa.Array | None:
    """The ids of a stored dataset state; None when its file is absent."""
    path = dataset_file(root, fingerprint)
    if not path.exists():
        return None
    return pq.read_table(pa.BufferReader(path.read_bytes())).column("image_id").combine_chunks()


def coverage_of(rows: pa.Table, ids: pa.Array, models: Sequence[str]) -> dict[str, Coverage]:
    """Per model, what ``rows`` (``model``, ``image_id``, ``error_kind``: one row per model and image,
    as :func:`pipeline.schema.read_results` gives) hold of the dataset ``ids``."""
    inside = rows.filter(pc.is_in(rows.column("image_id"), value_set=ids))
    out = {m: Coverage(images=len(ids), missing=len(ids)) for m in models}
    if inside.num_rows == 0:
        return out
    kind = pc.fill_null(inside.column("error_kind").cast(pa.string()), "")
    counts = pa.table({"model": inside.column("model"), "kind": kind}).group_by(["model", "kind"]).aggregate(
        [("kind", "count")])
    for m, k, n in zip(*(counts.column(c).to_pylist() for c in ("model", "kind", "kind_count")), strict=True):
        if m not in out:
            continue
        c = out[m]
        if k:
            c.errors[k] = c.errors.get(k, 0) + n
        else:
            c.ok += n
        c.missing -= n
    return out


@dataclass
class ModelCoverage:
    """How far the judged results of one model can be trusted to be a whole audit.

    ``state``: ``complete`` (the model's latest run finished and the results hold a row for every
    image of its dataset), ``partial`` (the latest run did not finish, or images have no row), or
    ``unverified`` (no run record with a dataset fingerprint: results written by hand or by a
    cueaudit older than coverage records). ``outside``: rows for images no longer in that dataset.
    """

    model: str
    state: str
    reason: str
    run_id: str | None = None
    run_status: str | None = None
    dataset_fingerprint: str | None = None
    images: int | None = None
    ok: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    missing: int | None = None
    outside: int | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def counts_text(self) -> str:
        if self.images is None:
            return "-"
        errs = sum(self.errors.values())
        return f"{self.images - (self.missing or 0)}/{self.images} images ({self.ok} scored, {errs} errors)"


def _latest_runs(runs: Sequence[RunRecord]) -> dict[str, RunRecord]:
    latest: dict[str, RunRecord] = {}
    for r in runs:  # oldest first
        for m in r.models:
            latest[m] = r
    return latest


def judge_coverage(root: str | os.PathLike[str] | Location, rows: pa.Table, models: Sequence[str],
                   runs: Sequence[RunRecord]) -> dict[str, ModelCoverage]:
    """Per model: its latest run (the newest record naming it) and what ``rows`` hold of that run's
    dataset. ``rows``: the judged results' ``model``, ``image_id``, ``error_kind``."""
    latest = _latest_runs(runs)
    datasets: dict[str, pa.Array | None] = {}
    out: dict[str, ModelCoverage] = {}
    have = rows.filter(pc.is_in(rows.column("model"), value_set=pa.array(list(models), pa.string())))
    for m in models:
        run = latest.get(m)
        if run is None:
            out[m] = ModelCoverage(m, UNVERIFIED, "no run record names this model (results not written by "
                                   "`cueaudit run`): coverage cannot be checked")
            continue
        base = {"run_id": run.run_id, "run_status": run.status, "dataset_fingerprint": run.dataset_fingerprint}
        fp = run.dataset_fingerprint
        ids = None
        if fp is not None:
            if fp not in datasets:
                datasets[fp] = read_dataset(root, fp)
            ids = datasets[fp]
        mine = have.filter(pc.equal(have.column("model"), m))
        counts: dict[str, Any] = {}
        if ids is not None:
            c = coverage_of(mine, ids, [m])[m]
            outside = mine.num_rows - (c.images - c.missing)
            counts = {"images": c.images, "ok": c.ok, "errors": c.errors, "missing": c.missing, "outside": outside}
        if run.status != "finished":
            why = {"running": "did not finish (killed, or still running; last heartbeat "
                              f"{run.updated_at or run.started_at})",
                   "failed": f"failed: {run.error or 'see its log'}"}.get(run.status, f"has status {run.status!r}")
            out[m] = ModelCoverage(m, PARTIAL, f"its latest run {run.run_id} {why}", **base, **counts)
        elif fp is None:
            out[m] = ModelCoverage(m, UNVERIFIED, f"its latest run {run.run_id} recorded no dataset fingerprint "
                                   "(written by an older cueaudit): coverage cannot be checked", **base)
        elif ids is None:
            out[m] = ModelCoverage(m, UNVERIFIED, f"the dataset of its latest run {run.run_id} "
                                   f"({DATASETS_DIR}/{fp}.parquet) is missing: coverage cannot be checked", **base)
        elif counts["missing"]:
            out[m] = ModelCoverage(m, PARTIAL, f"{counts['missing']} of the {counts['images']} images of its latest "
                                   f"run {run.run_id}'s dataset have no result row", **base, **counts)
        else:
            out[m] = ModelCoverage(m, COMPLETE, f"its latest run {run.run_id} finished and every image of its "
                                   "dataset has a row", **base, **counts)
    return out


def rows_of_frame(df: Any) -> pa.Table:
    """The three columns :func:`judge_coverage` needs, from an analysis frame (pandas)."""
    cols = {c: df[c].to_numpy(dtype=object) if c in df else np.full(len(df), None, dtype=object)
            for c in ("model", "image_id", "error_kind")}
    return pa.table({c: pa.array(v, pa.string(), from_pandas=True) for c, v in cols.items()})
