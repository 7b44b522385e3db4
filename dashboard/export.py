"""Exports of the explorer's selection: a table (CSV / Parquet) and a FiftyOne dataset.

The table holds one row per selected image with its numbers (scores, shares, lift, counterfactual
predictions and flips, attributes and other shares as JSON, the review decision under the current
fingerprint). The FiftyOne dataset is a directory FiftyOne imports with
``fo.Dataset.from_dir(DIR, dataset_type=fo.types.FiftyOneDataset)``::

    metadata.json       {"name", "media_type": "image", "info"}  (no "version": FiftyOne then reads
                        samples.json as a list of serialised samples, its sample-list layout)
    samples.json        {"samples": [{"filepath": "data/...", "tags", "ground_truth", "predictions",
                                      "cam", "cam_other", <numbers>}, ...]}
    data/               the images, copied (read through the dashboard's path guard)
    fields/cam/         the CAM as an 8-bit heatmap over the whole image (0 outside the view box)
    fields/cam_other/   the other class's map, where the run stored one

Labels are ``Classification`` (``ground_truth``: the label; ``predictions``: the prediction with its
score), maps are ``Heatmap`` with ``map_path`` and ``range [0, 255]``, review decisions are sample
tags. Checked by importing with fiftyone 1.22 (``tests/dashboard/test_export.py``).

Command line, for selections too large for a browser download::

    python -m dashboard.export RESULTS --model M --format csv|parquet|fiftyone --out PATH [--sort object_share]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from dashboard.explore import FLIPS, Filters, ModelView, model_view, select
from dashboard.images import UnsafePathError, allowed_roots, cam_array, cam_heat, guard_path

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "image_id", "label", "pred", "pred_score", "target", "target_score", "correct", "object_share",
    "object_area", "object_lift", "pointing_hit", "background_share", "metric_note", "cf_fill_pred",
    "cf_fill_score", "cf_rand_pred", "cf_rand_score", "cf_rand_donor", "cf_same_pred", "cf_same_score",
    "cf_same_donor", "error_kind", "error", "model", "model_fingerprint", "run_id", "path",
)  # fmt: skip
JSON_COLUMNS = ("attributes", "other_shares")
FIFTYONE_NUMBERS = (
    "pred_score", "target_score", "object_share", "object_area", "object_lift", "background_share",
    "cf_fill_score", "cf_rand_score", "cf_same_score",
)  # fmt: skip
FIFTYONE_STRINGS = ("image_id", "model", "model_fingerprint", "run_id", "target", "metric_note", "cf_fill_pred",
                    "cf_rand_pred", "cf_rand_donor", "cf_same_pred", "cf_same_donor")
HEATMAP_SIDE = 256  # heatmaps are stored at most this large (FiftyOne stretches them over the image)
FETCH_CHUNK = 1000


# ---------------------------------------------------------------------------------------------
# Table


def table(frame: pd.DataFrame, view: ModelView, order: np.ndarray,
          review: pd.DataFrame | None = None) -> pd.DataFrame:
    """The selected rows (``order``: positions into ``frame``) with their numbers, in that order.

    ``review`` is :func:`pipeline.triage.mark_state` for the model's current fingerprint (indexed by
    image id); it adds ``review`` and ``review_note``.
    """
    d = frame[[c for c in (*TABLE_COLUMNS, *JSON_COLUMNS) if c in frame.columns]].take(order)
    out = d[[c for c in TABLE_COLUMNS if c in d.columns]].reset_index(drop=True)
    for c in ("correct", "pointing_hit"):
        if c in out:
            out[c] = out[c].map({1.0: True, 0.0: False}).astype("boolean")
    local = np.searchsorted(view.pos, order)
    for flip in FLIPS:
        if flip in view.cols:
            out[flip] = view.cols[flip].to_numpy()[local].astype(str)
    for c in JSON_COLUMNS:
        if c in d.columns:
            out[c] = [json.dumps(m, sort_keys=True) if m else "" for m in d[c].to_numpy(dtype=object)]
    if review is not None:
        ids = out["image_id"]
        out["review"] = ids.map(review["decision"]).astype(object).fillna("").astype(str) if "decision" in review else ""
        out["review_note"] = ids.map(review["note"]).astype(object).fillna("").astype(str) if "note" in review else ""
    return out


def to_csv(df: pd.DataFrame) -> bytes:
    """CSV written by Arrow (several times faster than pandas' writer at a few hundred thousand rows)."""
    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# FiftyOne


@dataclass
class FiftyOneExport:
    """What :func:`write_fiftyone` wrote."""

    directory: Path
    samples: int
    skipped: dict[str, str] = field(default_factory=dict)  # image_id -> why it was left out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _name(image_id: str, used: set[str], suffix: str) -> str:
    base = _UNSAFE.sub("_", image_id.replace("/", "__")).strip("._") or "image"
    stem, n = base.rsplit(".", 1)[0] if "." in base else base, 1
    name = f"{stem}{suffix}"
    while name in used:
        n += 1
        name = f"{stem}-{n}{suffix}"
    used.add(name)
    return name


def heatmap(row: Mapping[str, Any], column: str = "cam", side: int = HEATMAP_SIDE) -> np.ndarray | None:
    """The row's map over the whole source image as uint8 ``(h, w)`` (``max(h, w) <= side``), min-max
    normalised like the dashboard's overlay; 0 where the model did not look (outside ``view_box``)."""
    cam = cam_array(dict(row), column)
    w, h = row.get("image_w"), row.get("image_h")
    if cam is None or not w or not h:
        return None
    f = min(1.0, side / max(w, h))
    ow, oh = max(1, round(w * f)), max(1, round(h * f))
    box = row.get("view_box")
    if box is None or len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        box = (0.0, 0.0, float(w), float(h))
    heat, _ = cam_heat(cam, box, ow, oh, scale=(ow / w, oh / h))  # min-max normalised inside
    return np.round(heat * 255.0).astype(np.uint8)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _str(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _classification(label: Any, confidence: Any = None) -> dict[str, Any] | None:
    if _str(label) is None:
        return None
    out: dict[str, Any] = {"_cls": "Classification", "tags": [], "label": str(label)}
    if _num(confidence) is not None:
        out["confidence"] = _num(confidence)
    return out


def write_fiftyone(out: str | os.PathLike[str], rows: pd.DataFrame, details: Callable[[pd.DataFrame], dict],
                   roots: Sequence[str], review: pd.DataFrame | None = None,
                   name: str = "cueaudit") -> FiftyOneExport:
    """Write the FiftyOne dataset of ``rows`` (explorer rows: numbers, flips) into ``out`` (created; must
    not exist or be empty). ``details(chunk)`` returns image_id -> stored row (CAM, view box, path) for a
    chunk of rows, e.g. :func:`dashboard.data.fetch_details`; images are read only inside ``roots``."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"FiftyOne export directory {str(root)!r} is not empty")
    (root / "data").mkdir(parents=True, exist_ok=True)
    used: dict[str, set[str]] = {"data": set(), "cam": set(), "cam_other": set()}
    samples, skipped = [], {}
    for start in range(0, len(rows), FETCH_CHUNK):
        chunk = rows.iloc[start:start + FETCH_CHUNK]
        stored = details(chunk)
        for _, r in chunk.iterrows():
            iid = str(r["image_id"])
            d = stored.get(iid)
            if d is None:
                skipped[iid] = "the stored row was not found (results changed?)"
                continue
            try:
                src = guard_path(d.get("path"), allowed_roots(d.get("dataset_root"), roots),
                                 base=d.get("dataset_root"))
            except UnsafePathError as e:
                skipped[iid] = str(e)
                continue
            media = _name(iid, used["data"], src.suffix.lower() or ".img")
            shutil.copyfile(src, root / "data" / media)
            sample = _sample(r, d, f"data/{media}", review)
            for col in ("cam", "cam_other"):
                hm = heatmap(d, col)
                if hm is None:
                    continue
                (root / "fields" / col).mkdir(parents=True, exist_ok=True)
                png = _name(iid, used[col], ".png")
                Image.fromarray(hm, "L").save(root / "fields" / col / png)
                sample[col] = {"_cls": "Heatmap", "tags": [], "map_path": f"fields/{col}/{png}", "range": [0, 255]}
            samples.append(sample)
    meta = {"name": name, "media_type": "image",
            "info": {"source": "cueaudit", "model": str(rows["model"].iloc[0]) if len(rows) else "",
                     "cam": "Grad-CAM, min-max normalised per image, 0..255 over the whole image",
                     "skipped": skipped}}
    (root / "metadata.json").write_text(json.dumps(meta, indent=1))
    (root / "samples.json").write_text(json.dumps({"samples": samples}))
    return FiftyOneExport(root, len(samples), skipped)


def _sample(r: pd.Series, d: Mapping[str, Any], filepath: str, review: pd.DataFrame | None) -> dict[str, Any]:
    s: dict[str, Any] = {"filepath": filepath, "tags": []}
    gt, pr = _classification(r.get("label")), _classification(r.get("pred"), r.get("pred_score"))
    if gt:
        s["ground_truth"] = gt
    if pr:
        s["predictions"] = pr
    for c in FIFTYONE_NUMBERS:
        if c in r.index:
            s[c] = _num(r[c])
    for c in FIFTYONE_STRINGS:
        if c in r.index:
            s[c] = _str(r[c])
    for c in ("correct", "pointing_hit"):
        v = _num(r.get(c))
        s[c] = None if v is None else bool(v > 0.5)
    for flip in FLIPS:
        if flip in r.index:
            s[flip] = _str(r[flip])
    attrs = r.get("attributes")
    s["attributes"] = {str(k): str(v) for k, v in attrs.items()} if isinstance(attrs, dict) else {}
    target, pred, label = d.get("target"), d.get("pred"), d.get("label")
    s["cam_class"] = _str(target)
    if d.get("cam_other") is not None:
        s["cam_other_class"] = _str(label if target == pred else pred)
    if s["correct"] is False:
        s["tags"].append("wrong")
    if review is not None and r["image_id"] in review.index:
        rv = review.loc[r["image_id"]]
        if isinstance(rv.get("decision"), str):
            s["tags"].append(rv["decision"])
            s["review_note"] = rv.get("note") or None
    return s


def zip_directory(directory: str | os.PathLike[str]) -> bytes:
    """The directory as a zip (its name as the top folder), for a browser download."""
    d = Path(directory)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                z.write(f, Path(d.name) / f.relative_to(d))
    return buf.getvalue()


def fiftyone_zip(rows: pd.DataFrame, details: Callable[[pd.DataFrame], dict], roots: Sequence[str],
                 review: pd.DataFrame | None, name: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="cueaudit-fo-") as tmp:
        res = write_fiftyone(Path(tmp) / name, rows, details, roots, review, name=name)
        return zip_directory(res.directory)


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    from dashboard.data import decisions, fetch_details, row_key, run_roots
    from pipeline.analysis.frame import load_frame
    from pipeline.schema import ResultsError, read_runs
    from pipeline.triage import mark_state

    p = argparse.ArgumentParser(prog="python -m dashboard.export", description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--model", required=True)
    p.add_argument("--format", choices=("csv", "parquet", "fiftyone"), default="csv")
    p.add_argument("--out", required=True, type=Path, help="file (csv, parquet) or new directory (fiftyone)")
    p.add_argument("--rows", choices=("scored", "errors", "all"), default="scored")
    p.add_argument("--correct", choices=("all", "correct", "wrong"), default="all")
    p.add_argument("--label", action="append", default=[], help="only these labels (repeatable)")
    p.add_argument("--sort", default="object_share")
    p.add_argument("--descending", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="the first N of the sorted selection")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        frame = load_frame(a.results)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.model not in set(frame.model.unique()):
        print(f"error: no results for model {a.model!r} in {a.results}; present: {sorted(frame.model.unique())}",
              file=sys.stderr)
        return 2
    view = model_view(frame, a.model)
    f = Filters.make({"label": a.label}, rows=a.rows, correct=a.correct, sort=a.sort, descending=a.descending)
    order = select(view, f)[:a.limit]
    review = mark_state(decisions(str(Path(a.results).resolve())), a.model, view.fingerprint)
    rows = table(frame, view, order, review)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.format == "fiftyone":
        full = frame.iloc[order].reset_index(drop=True)
        full = pd.concat([full, rows[[c for c in FLIPS if c in rows]]], axis=1)
        roots = run_roots(read_runs(a.results))
        res = write_fiftyone(a.out, full, lambda ch: fetch_details(a.results, a.model,
                                                                   [row_key(r) for _, r in ch.iterrows()]),
                             roots, review, name=f"cueaudit-{a.model}")
        log.info("wrote %d samples to %s (%d skipped)", res.samples, res.directory, len(res.skipped))
        return 0
    a.out.write_bytes(to_csv(rows) if a.format == "csv" else to_parquet(rows))
    log.info("wrote %d rows to %s", len(rows), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
