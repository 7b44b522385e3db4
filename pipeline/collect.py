"""Worker output columns -> rows of the Parquet schema.

Workers send Arrow-friendly primitives (-1 for a missing index, NaN for a missing float or bool,
JSON strings for maps, raw float32 bytes for the map, float16 bytes for the embeddings); this is the one place that turns them into
the typed, nullable columns of :data:`pipeline.schema.RESULT_SCHEMA`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.schema import RESULT_SCHEMA, conform

_INT_NULL_NEG = ("label_index", "pred_index", "target_index", "image_w", "image_h")
_INT_NULL_ZERO = ("cam_h", "cam_w", "input_h", "input_w", "fine_cam_h", "fine_cam_w")
_BOOL_NAN = ("correct", "pointing_hit", "fine_pointing_hit")
_FLOAT = ("pred_score", "target_score", "object_share", "object_area", "object_cells", "background_share",
          "cf_fill_score", "cf_rand_score", "cf_same_score", "cf_ctx_score", "cf_ctrl_score", "fine_object_share",
          "fine_object_cells", "fine_background_share")
_STR = ("image_id", "path", "label", "pred", "target", "feature_layer", "metric_note", "annotations", "error",
        "error_kind", "cf_fill_pred", "cf_rand_pred", "cf_same_pred", "cf_rand_donor", "cf_same_donor", "cf_ctx_pred",
        "cf_ctrl_pred", "fine_layer")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v != "" else None


def _json_map(v: Any) -> list[tuple[str, Any]] | None:
    if not isinstance(v, str) or not v:
        return None
    d = json.loads(v)
    return [(str(k), x) for k, x in d.items()] if isinstance(d, dict) else None


def _rows_or_null(a: np.ndarray, width: int) -> list[list[float] | None]:
    a = np.asarray(a, dtype=np.float32).reshape(-1, width)
    bad = ~np.isfinite(a).all(axis=1)
    return [None if b else row.tolist() for row, b in zip(a, bad, strict=True)]


def _cam_array(blobs: np.ndarray, dtype: type[np.floating] = np.float32) -> pa.Array:
    """Bytes of ``dtype`` values per row (None: a null row) -> list<dtype> without a Python loop over values."""
    size = np.dtype(dtype).itemsize
    lengths = np.array([len(b) // size if isinstance(b, bytes | bytearray) else 0 for b in blobs], dtype=np.int64)
    valid = np.array([isinstance(b, bytes | bytearray) for b in blobs], dtype=bool)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.frombuffer(b"".join(b for b in blobs if isinstance(b, bytes | bytearray)), dtype=dtype)
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.from_numpy_dtype(dtype)),
                                   mask=pa.array(~valid))
    return arr


def worker_table(batch: Mapping[str, Any], *, run_id: str, model: str, fingerprint: str,
                 dataset_root: str | None = None) -> pa.Table:
    """One batch of :class:`workers.score.Scorer` output as a table with the result schema
    (``_t_*`` timing columns are not part of it; see :func:`timings`)."""
    n = len(batch["image_id"])
    cols: dict[str, Any] = {
        "run_id": [run_id] * n,
        "model": [model] * n,
        "model_fingerprint": [fingerprint] * n,
    }
    if dataset_root is not None or "dataset_root" in batch:
        cols["dataset_root"] = [dataset_root] * n if dataset_root is not None else [_str(v) for v in batch["dataset_root"]]
    for k in _STR:
        if k in batch:
            cols[k] = [_str(v) for v in batch[k]]
    for k in _FLOAT:
        if k in batch:
            a = np.asarray(batch[k], dtype=np.float32)
            cols[k] = pa.array(a, mask=~np.isfinite(a), type=pa.float32())
    for k in _INT_NULL_NEG:
        if k in batch:
            a = np.asarray(batch[k]).astype(np.int64)
            cols[k] = pa.array(a, mask=a < 0).cast(RESULT_SCHEMA.field(k).type)
    for k in _INT_NULL_ZERO:
        if k in batch:
            a = np.asarray(batch[k]).astype(np.int64)
            cols[k] = pa.array(a, mask=a <= 0).cast(RESULT_SCHEMA.field(k).type)
    for k in _BOOL_NAN:
        if k in batch:
            a = np.asarray(batch[k], dtype=np.float32)
            cols[k] = pa.array(a > 0.5, mask=~np.isfinite(a), type=pa.bool_())
    for k in ("cam", "fine_cam", "cam_other"):
        if k in batch:
            cols[k] = _cam_array(np.asarray(batch[k], dtype=object))
    for k in ("embedding", "embedding_off", "embedding_on"):  # float16 bytes per row (workers.embed)
        if k in batch:
            cols[k] = _cam_array(np.asarray(batch[k], dtype=object), np.float16)
    if "view_box" in batch:
        cols["view_box"] = _rows_or_null(batch["view_box"], 4)
    if "bg_color" in batch:
        cols["bg_color"] = _rows_or_null(batch["bg_color"], 3)
    for k in ("other_shares", "other_areas", "attributes", "fine_other_shares"):
        if k in batch:
            cols[k] = [_json_map(v) for v in batch[k]]
    if "scored_at" in batch:
        ms = np.asarray(batch["scored_at"]).astype(np.int64)
        cols["scored_at"] = pa.array(ms, type=pa.int64()).cast(pa.timestamp("ms")).cast(pa.timestamp("ms", tz="UTC"))
    return conform(cols, n)


def timings(batch: Mapping[str, Any]) -> dict[str, float]:
    """Seconds spent on this batch per stage (``_t_prepare``, ``_t_score``), summed over its rows."""
    return {k[3:]: float(np.sum(batch[k])) for k in batch if k.startswith("_t_")}
