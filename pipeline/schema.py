"""The Parquet columns, defined once; everyone reads and writes results through this module.

Layout of a results directory::

    <output>/
      model=<name>/part-<run_id>-<seq>.parquet   one row per (model, image), written atomically
      _runs/<run_id>.json                        one record per run (config, fingerprints, counts)

``<output>`` is a local directory or an object-store prefix (``s3://bucket/results``; see
:mod:`common.storage`). Workers write facts, everything downstream reads Parquet: analysis, gate
and dashboard never recompute a CAM. A part file appears only complete, so a reader never sees half
a file and a killed run leaves nothing to repair: on disk it is written to a hidden temp name, then
``os.replace``; on an object store, where there is no rename, it is one PUT of the finished bytes to
its final, never reused name (run id + sequence), which the store makes visible whole or not at all.
This module imports neither torch nor Ray, so the gate runs in a slim CI image.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from common.storage import AnyPath, Location, as_path, write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RUNS_DIR = "_runs"

ERROR_KINDS = (
    "missing", "unreadable", "empty_file", "not_an_image", "truncated", "corrupt", "too_large",
    "unsupported_mode", "mask_missing", "mask_size", "mask_corrupt", "annotation", "unknown_label", "no_label",
    "internal",
)  # fmt: skip
"""Every value of ``error_kind`` (what the workers write; ``internal``: an exception of cueaudit or the
model on that one image, named in ``error``)."""
TRANSIENT_ERROR_KINDS = ("missing", "unreadable", "truncated", "empty_file")
"""Error kinds a rerun scores again by default (``execution.retry_errors``): a file not there yet, not
readable yet, or half uploaded."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


_F32 = pa.float32()
COLUMNS: tuple[Column, ...] = (
    Column("run_id", pa.string(), "run that scored this row (sortable by time)"),
    Column("model", pa.string(), "model name from the config"),
    Column("model_fingerprint", pa.string(), "hash of weights, classes, preprocessing, layer, target and CAM options"),
    Column("image_id", pa.string(), "stable id of the image within the dataset (relative path or dataset id)"),
    Column("path", pa.string(), "location of the image: an absolute path or a URI (s3://, tar://, parquet://, ...)"),
    Column("dataset_root", pa.string(), "root of the audited dataset (path or URI); the dashboard serves files only below it"),
    Column("label", pa.string(), "annotated class name (null when unlabelled)"),
    Column("label_index", pa.int32(), "model output index of the label; with a label_map set, its highest-scoring class (null when unlabelled)"),
    Column("pred", pa.string(), "predicted class name (argmax)"),
    Column("pred_index", pa.int32(), "predicted output index"),
    Column("pred_score", _F32, "softmax probability of the prediction, 0..1"),
    Column("target", pa.string(), "class whose score the CAM explains (the prediction or the label)"),
    Column("target_index", pa.int32(), "output index of the target"),
    Column("target_score", _F32, "softmax probability of the target, 0..1"),
    Column("correct", pa.bool_(), "pred is the label's class (or in its label_map set; null when unlabelled)"),
    Column("feature_layer", pa.string(), "dotted name of the layer the CAM was taken at"),
    Column("cam", pa.list_(_F32), "raw Grad-CAM map at feature resolution, row-major (cam_h * cam_w), ReLU'd, not normalised"),
    Column("cam_other", pa.list_(_F32), "where pred != label and `both_maps_when_wrong` is on: the map of the other of the two classes (the label's when the target is the prediction), as `cam`"),
    Column("cam_h", pa.int16(), "map height in feature cells"),
    Column("cam_w", pa.int16(), "map width in feature cells"),
    Column("input_h", pa.int16(), "model input height in pixels"),
    Column("input_w", pa.int16(), "model input width in pixels"),
    Column("image_w", pa.int32(), "source image width as displayed (after EXIF orientation)"),
    Column("image_h", pa.int32(), "source image height as displayed"),
    Column("view_box", pa.list_(_F32, 4), "region (x0, y0, x1, y1) of the source image the model saw, in source pixels"),
    Column("object_share", _F32, "CAM mass on the labelled object / total mass, 0..1 (Relevance Mass Accuracy)"),
    Column("object_area", _F32, "labelled object's area fraction of the input, 0..1 (a uniform map's object_share)"),
    Column("object_cells", _F32, "object_area * cam_h * cam_w: feature cells the object covers"),
    Column("pointing_hit", pa.bool_(), "the map's maximum lies on the object (Pointing Game)"),
    Column("background_share", _F32, "CAM mass on no annotated object, 0..1"),
    Column("other_shares", pa.map_(pa.string(), _F32), "category -> CAM mass on other annotated objects, 0..1"),
    Column("other_areas", pa.map_(pa.string(), _F32), "category -> area fraction of other annotated objects"),
    Column("bg_color", pa.list_(_F32, 3), "mean RGB (0..255) of the background pixels (outside every annotated object)"),
    Column("metric_note", pa.string(), "why a metric is null/NaN (no_object_mask, empty_object_mask, zero_map, ...)"),
    Column("fine_layer", pa.string(), "finer layer also audited when the feature layer's map is too coarse for the objects (null: none)"),
    Column("fine_cam", pa.list_(_F32), "raw Grad-CAM map at fine_layer, row-major (fine_cam_h * fine_cam_w), same pass and target"),
    Column("fine_cam_h", pa.int16(), "fine map height in feature cells"),
    Column("fine_cam_w", pa.int16(), "fine map width in feature cells"),
    Column("fine_object_share", _F32, "object_share of the fine map, 0..1"),
    Column("fine_object_cells", _F32, "object_area * fine_cam_h * fine_cam_w: fine cells the object covers"),
    Column("fine_background_share", _F32, "background_share of the fine map, 0..1"),
    Column("fine_other_shares", pa.map_(pa.string(), _F32), "other_shares of the fine map, 0..1"),
    Column("fine_pointing_hit", pa.bool_(), "pointing_hit of the fine map"),
    Column("cf_fill_pred", pa.string(), "counterfactual: prediction with the background replaced by a neutral fill"),
    Column("cf_fill_score", _F32, "counterfactual: target probability with the neutral fill"),
    Column("cf_rand_pred", pa.string(), "counterfactual (Mixed-Rand): prediction on the object over another class's background"),
    Column("cf_rand_score", _F32, "counterfactual (Mixed-Rand): target probability"),
    Column("cf_rand_donor", pa.string(), "image_id whose background was used for Mixed-Rand"),
    Column("cf_same_pred", pa.string(), "counterfactual (Mixed-Same, the control): prediction over a same-class background"),
    Column("cf_same_score", _F32, "counterfactual (Mixed-Same): target probability"),
    Column("cf_same_donor", pa.string(), "image_id whose background was used for Mixed-Same"),
    Column("cf_ctx_pred", pa.string(), "context ablation: prediction with every other annotated object removed (box filled with background tiles)"),
    Column("cf_ctx_score", _F32, "context ablation: target probability"),
    Column("cf_ctrl_pred", pa.string(), "context ablation's control: prediction with same-size patches of plain background removed"),
    Column("cf_ctrl_score", _F32, "context ablation's control: target probability"),
    # Embeddings at the CAM layer (workers/embed.py), for slice discovery (pipeline/analysis/slices.py).
    Column("embedding", pa.list_(pa.float16()), "global average of the CAM layer's activations, float16 (random-projected to embedding.dim when the layer has more channels)"),
    Column("embedding_off", pa.list_(pa.float16()), "the same activations pooled with weights CAM x (1 - object mask): what the map looks at off the object (null without a mask)"),
    Column("embedding_on", pa.list_(pa.float16()), "the same pooled with weights CAM x object mask: what the map looks at on the object (null without a mask)"),
    Column("attributes", pa.map_(pa.string(), pa.string()), "image attributes from the dataset (groups for worst-group analysis)"),
    Column("annotations", pa.string(), "the image's object annotations as JSON (source coordinates), for outlines"),
    Column("error", pa.string(), "null, or why this image could not be scored (names the file and the problem)"),
    Column("error_kind", pa.string(), "short reason code of the error (counted in summaries)"),
    Column("scored_at", pa.timestamp("ms", tz="UTC"), "when the worker scored the row"),
)

RESULT_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COLUMNS], metadata={"cueaudit_schema": str(SCHEMA_VERSION)})
COLUMN_NAMES = tuple(c.name for c in COLUMNS)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("objects", pa.string()),
        pa.field("attributes", pa.string()),
        pa.field("dataset_root", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class ResultsError(ValueError):
    """Results that are missing or unreadable (names the directory or file)."""


# ---------------------------------------------------------------------------------------------
# Writing


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by start time: ``20261125T120000Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def model_dir(root: str | os.PathLike[str] | Location, model: str) -> AnyPath:
    return as_path(root) / f"model={_SAFE.sub('_', model)}"


def conform(columns: Mapping[str, Any] | pa.Table, n: int | None = None) -> pa.Table:
    """Build a table with exactly :data:`RESULT_SCHEMA`: casts known columns, fills absent ones with nulls.

    An unknown column is a programming error and raises (it would silently vanish otherwise).
    """
    if isinstance(columns, pa.Table):
        columns = {name: columns.column(name) for name in columns.column_names}
    unknown = set(columns) - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"result columns not in pipeline.schema: {sorted(unknown)}")
    if n is None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"result columns have different lengths: { {k: len(v) for k, v in columns.items()} }")
        n = lengths.pop() if lengths else 0
    arrays = []
    for f in RESULT_SCHEMA:
        if f.name in columns:
            v = columns[f.name]
            if isinstance(v, pa.ChunkedArray | pa.Array):
                arr = v.cast(f.type) if v.type != f.type else v
            else:
                arr = pa.array(_to_pylist(v), type=f.type, from_pandas=True)
            if len(arr) != n:
                raise ValueError(f"result column {f.name!r} has {len(arr)} rows, expected {n}")
            arrays.append(arr)
        else:
            arrays.append(pa.nulls(n, type=f.type))
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


def _to_pylist(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return [_to_pylist(x) if isinstance(x, np.ndarray) else x for x in v]
        if v.ndim > 1:
            return [row for row in v]
        return v
    return v


class PartWriter:
    """Writes one model's results of one run as atomic part files.

    Each :meth:`write` makes one ``part-<run_id>-<seq>.parquet``: on disk written to a hidden temp
    file in the same directory and renamed into place, so a crash at any moment leaves either the
    whole part or nothing (pyarrow's dataset readers skip names starting with ``.``); on an object
    store serialised in memory and PUT once under its final name (:func:`common.storage.write_atomic`).
    """

    def __init__(self, root: str | os.PathLike[str] | Location, model: str, run_id: str) -> None:
        self.dir = model_dir(root, model)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.seq = 0
        self.rows = 0
        if isinstance(self.dir, Path):
            for stale in self.dir.glob(".part-*.tmp"):
                stale.unlink(missing_ok=True)  # left by a killed run; never visible to readers

    def write(self, table: pa.Table) -> AnyPath | None:
        if table.num_rows == 0:
            return None
        table = conform(table) if table.schema != RESULT_SCHEMA else table
        while True:
            name = f"part-{self.run_id}-{self.seq:06d}.parquet"
            final = self.dir / name
            self.seq += 1
            if not final.exists():
                break
        if isinstance(final, Location):
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            write_atomic(final, sink.getvalue().to_pybytes())
            self.rows += table.num_rows
            return final
        tmp = self.dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.rows += table.num_rows
        return final


# ---------------------------------------------------------------------------------------------
# Run records


@dataclass
class Coverage:
    """What the results hold for one model over one dataset state: ``images`` in the dataset, of which
    ``ok`` have a scored row, ``errors`` an error row (by kind), ``missing`` no row at all."""

    images: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    @property
    def covered(self) -> int:
        return self.images - self.missing


@dataclass
class ModelRun:
    """What one run did for one model."""

    fingerprint: str
    feature_layer: str | None = None
    fine_layer: str | None = None  # the finer layer audited beside feature_layer (fine_* columns)
    fine_reason: str | None = None  # why: the objects' median size in feature cells, or "configured"
    source: str = ""
    target: str = "predicted"
    to_score: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    # score (this model's worker time), write; prepare, decode and wall are its prepare group's (shared)
    seconds: dict[str, float] = field(default_factory=dict)
    # Resolved from the actors' placement, part of the fingerprint: where it ran, in what precision,
    # and who decoded the JPEGs (the GPU, or PIL in the prepare tasks).
    device: str | None = None  # cuda | cpu
    precision: str | None = None  # bf16 | fp16 | fp32
    decode: str | None = None  # device | cpu
    retried: int = 0  # of to_score: images whose latest row was an error of a retried kind
    errors_by_kind: dict[str, int] = field(default_factory=dict)  # this run's error rows
    coverage: Coverage | None = None  # after a finished run: the results over the run's dataset

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRun:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(d.get("coverage"), dict):
            d["coverage"] = Coverage(**d["coverage"])
        return cls(**d)


@dataclass
class PrepareGroup:
    """Models that share a preprocessing, so a run reads and decodes each image (and its donors) once
    for all of them: ``images`` rows prepared, ``decodes`` image files read and decoded (or probed,
    for a device decode) including donors, ``seconds`` (prepare, decode on the device, wall)."""

    models: list[str] = field(default_factory=list)
    images: int = 0
    decodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    """``_runs/<run_id>.json``: one invocation of ``cueaudit run`` on a results directory."""

    run_id: str
    name: str
    started_at: str
    status: str = "running"  # running -> finished | failed; a killed run stays "running"
    finished_at: str | None = None
    updated_at: str | None = None  # heartbeat: rewritten with every committed part
    config: dict[str, Any] = field(default_factory=dict)
    dataset_roots: list[str] = field(default_factory=list)
    mask_roots: list[str] = field(default_factory=list)  # folders of the mask files the audit read
    images: int = 0
    # The set of image ids the run's dataset held: its ids are in _datasets/<fingerprint>.parquet.
    dataset_fingerprint: str | None = None
    models: dict[str, ModelRun] = field(default_factory=dict)
    groups: list[PrepareGroup] = field(default_factory=list)
    error: str | None = None  # why a failed run stopped
    cueaudit_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        d = dict(d)
        d["models"] = {k: ModelRun.from_dict(v) for k, v in d.get("models", {}).items()}
        d["groups"] = [PrepareGroup(**g) for g in d.get("groups", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def write_run(root: str | os.PathLike[str] | Location, record: RunRecord) -> AnyPath:
    """Write (or replace) the run's record atomically: readers see the previous or the new one."""
    d = as_path(root) / RUNS_DIR
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{record.run_id}.json"
    write_atomic(final, record.to_json().encode())
    return final


def read_runs(root: str | os.PathLike[str] | Location) -> list[RunRecord]:
    """Every run record under ``root``, oldest first. Unreadable records are skipped with a warning."""
    d = as_path(root) / RUNS_DIR
    runs = []
    for p in sorted(d.glob("*.json")):
        try:
            runs.append(RunRecord.from_dict(json.loads(p.read_text())))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            log.warning("skipping unreadable run record %s: %s", p, e)
    return sorted(runs, key=lambda r: r.run_id)


# ---------------------------------------------------------------------------------------------
# Reading


def part_files(root: str | os.PathLike[str] | Location, models: Sequence[str] | None = None) -> list[AnyPath]:
    """The part files under ``root`` (Paths on disk, :class:`~common.storage.Location` on an object store)."""
    root = as_path(root)
    if not root.is_dir():
        raise ResultsError(f"results directory {str(root)!r} does not exist")
    dirs = [model_dir(root, m) for m in models] if models else sorted(root.glob("model=*"))
    return sorted(p for d in dirs for p in d.glob("part-*.parquet"))


def is_results_dir(root: str | os.PathLike[str] | Location) -> bool:
    root = as_path(root)
    return root.is_dir() and ((root / RUNS_DIR).is_dir() or any(root.glob("model=*")))


def scan(root: str | os.PathLike[str], models: Sequence[str] | None = None) -> pads.Dataset:
    """A lazy pyarrow dataset over every part file, with :data:`RESULT_SCHEMA` (old files gain nulls)."""
    return open_parts(part_files(root, models))


def open_parts(files: Sequence[AnyPath]) -> pads.Dataset:
    """A lazy pyarrow dataset over these part files (all on one filesystem), with :data:`RESULT_SCHEMA`."""
    remote = [f for f in files if isinstance(f, Location)]
    if remote:
        return pads.dataset([f.path for f in remote], schema=RESULT_SCHEMA, format="parquet",
                            filesystem=remote[0].fs)
    return pads.dataset([str(f) for f in files], schema=RESULT_SCHEMA, format="parquet")


def read_results(
    root: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    as_of: str | None = None,
    current_only: bool = True,
    filter: pc.Expression | None = None,  # pyarrow's own name for it
) -> pa.Table:
    """The results as a table: one row per (model, image), the latest scoring of each.

    ``as_of`` (a run id) keeps only rows scored by that run or earlier: the state a baseline run
    saw. ``current_only`` keeps, per model, only rows with the fingerprint of that model's latest
    run (older fingerprints are kept on disk for baselines but are not "the model" any more).
    Duplicates (an image scored twice, e.g. by a retried task) are resolved to the newest row.
    ``filter`` (a pyarrow expression, e.g. ``pc.field("image_id").isin(ids)``) is pushed down into
    the scan, so fetching the CAMs of a page of images reads only those rows.
    """
    want = list(columns) if columns else list(COLUMN_NAMES)
    need = list(dict.fromkeys([*want, "model", "image_id", "run_id", "model_fingerprint", "scored_at"]))
    unknown = set(need) - set(COLUMN_NAMES)
    if unknown:
        raise ResultsError(f"unknown result columns {sorted(unknown)}; see pipeline.schema.COLUMNS")
    dataset = scan(root, models)
    flt = filter
    if as_of is not None:
        by_run = pc.field("run_id") <= pc.scalar(as_of)
        flt = by_run if flt is None else flt & by_run
    table = dataset.to_table(columns=need, filter=flt)
    if current_only and table.num_rows:
        table = _current_fingerprints(root, table, as_of)
    table = _latest_per_image(table)
    return table.select(want)


def _current_fingerprints(root: str | os.PathLike[str], table: pa.Table, as_of: str | None) -> pa.Table:
    runs = [r for r in read_runs(root) if as_of is None or r.run_id <= as_of]
    latest: dict[str, str] = {}
    for r in runs:
        for m, mr in r.models.items():
            latest[m] = mr.fingerprint
    if not latest:
        return table
    model, fp = table.column("model"), table.column("model_fingerprint")
    stale = None
    for m, want in latest.items():  # one vectorised pass per model, not per row
        bad = pc.and_(pc.equal(model, m), pc.not_equal(fp, want))
        stale = bad if stale is None else pc.or_(stale, bad)
    return table.filter(pc.invert(pc.fill_null(stale, False)))


def _latest_per_image(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    idx = pa.array(np.arange(table.num_rows))
    t = table.select(["model", "image_id", "scored_at"]).append_column("_i", idx)
    g = t.group_by(["model", "image_id"]).aggregate([("_i", "count"), ("_i", "max")])
    if g.num_rows == table.num_rows:
        return table
    # Keep the newest row per (model, image): sort by scored_at, take the last index of each group.
    order = pc.sort_indices(t, sort_keys=[("model", "ascending"), ("image_id", "ascending"), ("scored_at", "ascending")])
    st = t.take(order)
    keys_m = st.column("model").to_numpy(zero_copy_only=False)
    keys_i = st.column("image_id").to_numpy(zero_copy_only=False)
    last = np.ones(len(keys_m), dtype=bool)
    last[:-1] = (keys_m[1:] != keys_m[:-1]) | (keys_i[1:] != keys_i[:-1])
    keep = np.sort(st.column("_i").to_numpy()[last])
    return table.take(pa.array(keep))


def scored_ids(root: str | os.PathLike[str], model: str, fingerprint: str) -> set[str]:
    """Image ids already scored for ``model`` with exactly this fingerprint (what a resumed run skips)."""
    done, _ = scored_and_retry(root, model, fingerprint)
    return set(done.to_pylist())


def scored_and_retry(root: str | os.PathLike[str] | Location, model: str, fingerprint: str,
                     retry: Sequence[str] = ()) -> tuple[pa.Array, pa.Array]:
    """(ids a run skips, ids it scores again) for ``model`` with exactly this fingerprint.

    An image is scored again when its latest row (newest ``scored_at``, as :func:`read_results`
    picks it) is an error of a kind in ``retry``; the new row then supersedes it.
    """
    empty = pa.array([], pa.string())
    try:
        files = part_files(root, [model])
    except ResultsError:
        return empty, empty
    if not files:
        return empty, empty
    cols = ["image_id"] if not retry else ["model", "image_id", "scored_at", "error_kind"]
    t = open_parts(files).to_table(columns=cols, filter=pc.field("model_fingerprint") == fingerprint)
    if not retry:
        return pc.unique(t.column("image_id")), empty
    t = _latest_per_image(t)
    again = pc.fill_null(pc.is_in(t.column("error_kind"), value_set=pa.array(list(retry), pa.string())), False)
    return (t.filter(pc.invert(again)).column("image_id").combine_chunks(),
            t.filter(again).column("image_id").combine_chunks())


def map_to_dict(value: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Arrow map cells arrive as lists of (key, value) pairs in Python/pandas; normalise to dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return dict(value)


def describe_markdown() -> str:
    """The schema as a Markdown table (README's reference is generated from this)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for c in COLUMNS:
        lines.append(f"| `{c.name}` | `{c.type}` | {c.doc} |")
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- schema:begin -->", "<!-- schema:end -->"


def update_readme(path: str | os.PathLike[str]) -> None:
    """Put :func:`describe_markdown` between the schema markers of a Markdown file (README.md)."""
    p = Path(path)
    text = p.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{p} has no {README_BEGIN} ... {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    p.write_text(f"{head}{README_BEGIN}\n{describe_markdown()}\n{README_END}{tail}")
