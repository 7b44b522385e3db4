"""Results -> one pandas frame for analysis (no CAM arrays), with derived columns.

``object_lift`` is the chance-corrected object score: ``(object_share - object_area) /
(1 - object_area)``. A uniform map scores exactly its area as object share, so its lift is 0; a map
entirely on the object scores 1; a map that avoids the object goes negative. It makes images with
large and small objects comparable, which raw mass is not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.schema import map_to_dict, read_results

ANALYSIS_COLUMNS = (
    "run_id", "model", "model_fingerprint", "image_id", "path", "dataset_root", "label", "pred", "target",
    "pred_score", "target_score", "correct", "feature_layer", "cam_h", "cam_w", "object_share", "object_area",
    "object_cells", "pointing_hit", "background_share", "other_shares", "other_areas", "bg_color", "metric_note",
    "cf_fill_pred", "cf_fill_score", "cf_rand_pred", "cf_rand_score", "cf_rand_donor", "cf_same_pred",
    "cf_same_score", "cf_same_donor", "cf_ctx_pred", "cf_ctx_score", "cf_ctrl_pred", "cf_ctrl_score", "attributes",
    "error", "error_kind", "scored_at", "fine_layer", "fine_cam_h", "fine_cam_w", "fine_object_share",
    "fine_object_cells", "fine_background_share", "fine_other_shares", "fine_pointing_hit",
)  # fmt: skip


def object_lift(share: pd.Series | np.ndarray, area: pd.Series | np.ndarray) -> np.ndarray:
    s = np.asarray(share, dtype=np.float64)
    a = np.asarray(area, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (s - a) / (1.0 - a)
    lift[~np.isfinite(lift) | (a >= 1.0)] = np.nan
    return lift


MAP_COLUMNS = ("other_shares", "other_areas", "attributes", "fine_other_shares")
_BOOL_COLUMNS = ("correct", "pointing_hit", "fine_pointing_hit")
_FLOAT_COLUMNS = ("object_share", "object_area", "object_cells", "background_share", "pred_score", "target_score",
                  "cf_fill_score", "cf_rand_score", "cf_same_score", "cf_ctx_score", "cf_ctrl_score",
                  "fine_object_share", "fine_object_cells", "fine_background_share")


def prepare_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise types (maps -> dicts, nullable -> float) and add derived columns."""
    return _prepare(df.copy())


def _prepare(df: pd.DataFrame, dicts_done: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`prepare_frame` in place; ``dicts_done`` names map columns that already hold dicts."""
    for col in MAP_COLUMNS:
        if col in df and col not in dicts_done:
            df[col] = [map_to_dict(v) for v in df[col]]
    for col in _BOOL_COLUMNS:
        if col in df:
            df[col] = nullable_float(df[col])
    for col in _FLOAT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "object_share" in df and "object_area" in df:
        df["object_lift"] = object_lift(df["object_share"], df["object_area"])
    if "fine_object_share" in df and "object_area" in df:  # the finer map shares the masks: same area
        df["fine_object_lift"] = object_lift(df["fine_object_share"], df["object_area"])
    if "error" in df:
        df["scored"] = df["error"].isna()
    return df


def nullable_float(s: pd.Series) -> pd.Series:
    """True/False/None (or NA, NaN) -> 1.0/0.0/NaN, without a Python call per row."""
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biuf":
        return s.astype(float)
    values = s.to_numpy(dtype=object)
    missing = pd.isna(values)
    out = np.full(len(values), np.nan)
    out[~missing] = values[~missing].astype(float)  # float(v) per cell, as a Python loop would
    return pd.Series(out, index=s.index, name=s.name)


def map_dicts(values: pa.Array | pa.ChunkedArray) -> list[dict[str, Any]]:
    """An Arrow ``map`` column -> one dict per row (``{}`` for null), as :func:`prepare_frame` makes them.

    Reads the keys and items once as flat lists; only rows with entries build a dict from them, so a
    million mostly-empty maps cost a million ``{}`` and not a million pandas list-of-tuples cells.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    n = len(arr)
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    if n == 0 or len(arr.keys) == 0:
        return out
    offsets = arr.offsets.to_numpy()  # absolute positions into .keys / .items (slices included)
    full = (np.diff(offsets) > 0) & arr.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(full)
    pairs = list(zip(arr.keys.to_pylist(), arr.items.to_pylist(), strict=True))
    built = map(dict, map(pairs.__getitem__, map(slice, offsets[rows].tolist(), offsets[rows + 1].tolist())))
    for i, d in zip(rows.tolist(), built, strict=True):
        out[i] = d
    return out


def load_frame(root: str | os.PathLike[str], models: Sequence[str] | None = None, as_of: str | None = None,
               columns: Sequence[str] = ANALYSIS_COLUMNS) -> pd.DataFrame:
    t = read_results(root, columns=list(columns), models=models, as_of=as_of)
    maps = [c for c in t.column_names if c in MAP_COLUMNS]
    # Map columns go to dicts straight from Arrow: to_pandas() would build lists of tuples first.
    df = t.drop_columns(maps).to_pandas()
    for col in maps:
        df.insert(t.column_names.index(col), col, map_dicts(t.column(col)))
    return _prepare(df, dicts_done=maps)


# Row selection shared by the analyses (cues, ablation)


def example_ids(df: pd.DataFrame, order: str | None, k: int, ascending: bool = True) -> list[str]:
    """The image ids of the first ``k`` rows of ``df`` ordered by ``order`` (when it is a column)."""
    if df.empty:
        return []
    d = df.sort_values(order, ascending=ascending) if order and order in df else df
    return [str(x) for x in d["image_id"].head(k)]


def narrow(df: pd.DataFrame, mask: pd.Series | np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    """``df[mask]`` restricted to ``columns`` (those present): row-filtering a million-row frame copies
    every column, so the analyses select what they read first."""
    return df[[c for c in columns if c in df.columns]][mask]


def differs(a: pd.Series, b: pd.Series) -> np.ndarray:
    """``a != b`` per row as Python compares the values: a missing value differs from everything.

    Pandas' own comparison does exactly that for ``str`` columns, without a Python object per row.
    """
    if all(isinstance(x.dtype, pd.StringDtype) and x.dtype.na_value is not pd.NA for x in (a, b)):
        return (a != b).to_numpy(dtype=bool)  # missing is NaN there, and NaN != anything, as in Python
    return a.to_numpy(dtype=object) != b.to_numpy(dtype=object)
