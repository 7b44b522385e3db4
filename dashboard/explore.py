"""The image explorer's filters, sort and paging over one model's rows, vectorised for a million rows.

:class:`ModelView` is built once per results version and model (cached by the app): the positions of
the model's rows in the shared analysis frame and the filterable columns, strings as pandas
categoricals so that a class filter compares integer codes. :func:`select` turns a :class:`Filters`
into the ordered positions of the matching rows (numpy masks and one ``argsort``, no Python loop
over rows); the page on screen is ``frame.iloc`` of a dozen of them.

Counterfactual *flips* are derived per row: ``flipped`` where the prediction on the composite
(``cf_<kind>_pred``) differs from the prediction on the image, ``kept`` where it is the same,
``not computed`` where the worker made no composite (no object mask, no donor, counterfactuals off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC = {  # column -> title (range sliders and sort keys)
    "object_share": "object share",
    "object_lift": "object lift",
    "object_area": "object area",
    "background_share": "background share",
    "pred_score": "prediction score",
    "target_score": "target score",
    "object_cells": "object cells",
    "cf_fill_score": "score, neutral background",
    "cf_rand_score": "score, other class's background",
    "cf_same_score": "score, same class's background",
}
CATEGORICAL = {  # column -> title (multiselects)
    "label": "label",
    "pred": "predicted class",
    "target": "explained class",
    "metric_note": "metric note",
    "error_kind": "error kind",
    "cf_fill_flip": "flip, neutral background",
    "cf_rand_flip": "flip, other class's background",
    "cf_same_flip": "flip, same class's background",
}
FLIPS = {"cf_fill_flip": "cf_fill_pred", "cf_rand_flip": "cf_rand_pred", "cf_same_flip": "cf_same_pred"}
FLIPPED, KEPT, NOT_COMPUTED = "flipped", "kept", "not computed"
NONE = "(none)"  # the category of a missing value (no metric note, no error)
ATTR = "attr:"  # prefix of attribute columns
SORT_TEXT = ("image_id", "label", "pred")
ROWS = ("scored", "errors", "all")
CORRECT = ("all", "correct", "wrong")


@dataclass(frozen=True)
class Filters:
    """What the explorer shows. Hashable (a cache key); ``categories`` and ``ranges`` are sorted tuples.

    A range keeps rows whose value lies in ``[lo, hi]``; a row without the value (NaN) fails it.
    ``image_ids`` (a check's examples) restricts to those images; ``None`` means no restriction.
    """

    rows: str = "scored"
    correct: str = "all"
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ranges: tuple[tuple[str, float, float], ...] = ()
    image_ids: tuple[str, ...] | None = None
    sort: str = "object_share"
    descending: bool = False

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"Filters.rows must be one of {ROWS}, got {self.rows!r}")
        if self.correct not in CORRECT:
            raise ValueError(f"Filters.correct must be one of {CORRECT}, got {self.correct!r}")

    @classmethod
    def make(cls, categories: Mapping[str, Sequence[str]] | None = None,
             ranges: Mapping[str, tuple[float, float]] | None = None, **kw: object) -> Filters:
        cats = tuple(sorted((k, tuple(sorted(map(str, v)))) for k, v in (categories or {}).items() if v))
        rng = tuple(sorted((k, float(lo), float(hi)) for k, (lo, hi) in (ranges or {}).items()))
        return cls(categories=cats, ranges=rng, **kw)  # type: ignore[arg-type]


@dataclass
class ModelView:
    """One model's rows of the shared frame, in the shape the filters need (built once per version)."""

    model: str
    pos: np.ndarray  # (n,) positions of the model's rows in the frame
    cols: pd.DataFrame  # (n, k) filterable columns, index 0..n-1
    attributes: list[str] = field(default_factory=list)
    fingerprint: str = ""  # the model's current fingerprint (what review decisions are keyed on)
    _codes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def codes(self, column: str) -> np.ndarray:
        """Integer codes ordering like the column's strings (computed once: sorting by image id)."""
        if column not in self._codes:
            s = self.cols[column]
            self._codes[column] = (np.asarray(s.cat.codes, dtype=np.float64)
                                   if isinstance(s.dtype, pd.CategoricalDtype) else _sort_codes(s))
        return self._codes[column]

    def __len__(self) -> int:
        return len(self.pos)

    def options(self, column: str) -> list[str]:
        """The values a multiselect offers, most frequent first."""
        s = self.cols[column]
        counts = s.value_counts(sort=True)
        return [str(v) for v in counts.index if counts[v] > 0]

    def bounds(self, column: str) -> tuple[float, float] | None:
        """(min, max) of the finite values, or None when there are none."""
        v = self.cols[column].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        return (float(v.min()), float(v.max())) if len(v) else None

    def numeric(self) -> list[str]:
        """The numeric columns with at least two distinct values (a range over one value filters nothing)."""
        return [c for c in NUMERIC if c in self.cols and (b := self.bounds(c)) is not None and b[1] > b[0]]

    def categorical(self) -> list[str]:
        """The categorical columns and attributes with at least two values (one value filters nothing)."""
        cands = [c for c in CATEGORICAL if c in self.cols] + [ATTR + a for a in self.attributes]
        return [c for c in cands if self.cols[c].nunique(dropna=False) > 1]


def _arrow(values: pd.Series | np.ndarray) -> pa.Array:
    arr = pa.array(values, from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _category(values: pd.Series | np.ndarray) -> pd.Categorical:
    """Strings -> a categorical with sorted categories (codes order like the strings); missing -> ``(none)``.

    Dictionary-encoded in Arrow: no Python object per row (pandas' string columns are Arrow already).
    """
    arr = _arrow(values)
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    enc = pc.dictionary_encode(arr)
    names = enc.dictionary.to_pylist()
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    missing = idx < 0
    cats = sorted({*names, NONE} if missing.any() else names)
    at = {c: i for i, c in enumerate(cats)}
    remap = np.array([at[n] for n in names], dtype=np.int64)
    codes = np.where(missing, at.get(NONE, -1), remap[np.maximum(idx, 0)] if len(names) else -1)
    return pd.Categorical.from_codes(codes, categories=cats)


def _sort_codes(values: pd.Series | np.ndarray) -> np.ndarray:
    """The rank of each string among the distinct values (NaN where missing), sorted in Arrow."""
    enc = pc.dictionary_encode(_arrow(values))
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.float64)
    rank[order] = np.arange(len(order))
    return np.where(idx < 0, np.nan, rank[np.maximum(idx, 0)] if len(order) else np.nan)


def _flips(cf: pd.Series, pred: pd.Series) -> pd.Categorical:
    a, b = _arrow(cf), _arrow(pred)
    missing = pc.or_(pc.is_null(a), pc.is_null(b)).to_numpy(zero_copy_only=False)
    flipped = pc.fill_null(pc.not_equal(a, b), False).to_numpy(zero_copy_only=False)
    return pd.Categorical.from_codes(np.where(missing, 2, np.where(flipped, 0, 1)),
                                     categories=[FLIPPED, KEPT, NOT_COMPUTED])


def model_view(frame: pd.DataFrame, model: str) -> ModelView:
    """Build the :class:`ModelView` of ``model`` (the frame is :func:`pipeline.analysis.frame.load_frame`'s)."""
    pos = np.flatnonzero((frame["model"] == model).to_numpy())
    every = len(pos) == len(frame)

    def col(name: str) -> pd.Series:
        s = frame[name]
        return s.reset_index(drop=True) if every else s.iloc[pos].reset_index(drop=True)

    cols: dict[str, object] = {"image_id": col("image_id")}
    cols["scored"] = col("scored").to_numpy(dtype=bool) if "scored" in frame else col("error").isna().to_numpy()
    cols["correct"] = col("correct").to_numpy(dtype=float)
    for c in NUMERIC:
        if c in frame:
            cols[c] = col(c).to_numpy(dtype=float)
    for c in CATEGORICAL:
        if c in frame:
            cols[c] = _category(col(c))
    pred = col("pred")
    for flip, src in FLIPS.items():
        if src in frame:
            cols[flip] = _flips(col(src), pred)
    attrs: list[str] = []
    if "attributes" in frame:
        maps = col("attributes").to_numpy(dtype=object)
        keys = sorted({k for m in maps if m for k in m})
        for k in keys:
            cols[ATTR + k] = _category(np.array([m.get(k) if m else None for m in maps], dtype=object))
        attrs = keys
    fps = col("model_fingerprint").value_counts() if "model_fingerprint" in frame else pd.Series(dtype=int)
    return ModelView(model, pos, pd.DataFrame(cols), attrs, str(fps.index[0]) if len(fps) else "")


def select(view: ModelView, f: Filters) -> np.ndarray:
    """Positions (into the frame) of the rows matching ``f``, in ``f``'s sort order (missing values last)."""
    c = view.cols
    keep = np.ones(len(view), dtype=bool)
    if f.rows == "scored":
        keep &= c["scored"].to_numpy()
    elif f.rows == "errors":
        keep &= ~c["scored"].to_numpy()
    if f.correct != "all":
        ok = c["correct"].to_numpy()
        keep &= (ok > 0.5) if f.correct == "correct" else (ok < 0.5)
    for col, allowed in f.categories:
        if col not in c:
            raise KeyError(f"explorer filter on unknown column {col!r}; filterable: {sorted(c.columns)}")
        cat = c[col].cat
        codes = [cat.categories.get_loc(v) for v in allowed if v in cat.categories]
        keep &= np.isin(cat.codes.to_numpy(), np.asarray(codes, dtype=np.int64))
    for col, lo, hi in f.ranges:
        if col not in c:
            raise KeyError(f"explorer range on unknown column {col!r}; numeric: {[k for k in NUMERIC if k in c]}")
        v = c[col].to_numpy()
        with np.errstate(invalid="ignore"):
            keep &= (v >= lo) & (v <= hi)
    if f.image_ids is not None:
        keep &= c["image_id"].isin(f.image_ids).to_numpy()
    idx = np.flatnonzero(keep)
    return view.pos[idx[_order(view, idx, f.sort, f.descending)]]


def _order(view: ModelView, idx: np.ndarray, key: str, descending: bool) -> np.ndarray:
    """Stable order of the rows ``idx`` by ``key``; rows without a value come last either way."""
    c = view.cols
    if key in SORT_TEXT:
        v = view.codes(key)[idx]  # categories are sorted: codes order like the strings
    elif key in c:
        v = c[key].to_numpy(dtype=np.float64)[idx]
    else:
        raise KeyError(f"explorer sort key {key!r} is not one of {[*SORT_TEXT, *NUMERIC]}")
    v = np.where(np.isfinite(v), -v if descending else v, np.inf)  # missing last either way
    return np.argsort(v, kind="stable")


def review_filter(frame: pd.DataFrame, order: np.ndarray, marked: Mapping[str, Sequence[str]],
                  wanted: Sequence[str]) -> np.ndarray:
    """Keep from ``order`` the images whose review state is one of ``wanted``.

    ``marked`` maps a state (a decision, ``older fingerprint``) to the image ids in it; the state
    ``unreviewed`` is every image in none of them.
    """
    if not wanted:
        return order
    ids = frame["image_id"].take(order)
    any_mark = np.zeros(len(order), dtype=bool)
    keep = np.zeros(len(order), dtype=bool)
    for state, members in marked.items():
        hit = ids.isin(list(members)).to_numpy()
        any_mark |= hit
        if state in wanted:
            keep |= hit
    if "unreviewed" in wanted:
        keep |= ~any_mark
    return order[keep]


def page(order: np.ndarray, number: int, size: int) -> np.ndarray:
    """The positions on page ``number`` (1-based) of ``size`` rows."""
    start = max(0, (number - 1) * size)
    return order[start:start + size]


def pages(n: int, size: int) -> int:
    return max(1, -(-n // size))
