"""What the dashboard reads, computed once per results state.

Every cached function takes the results path and :func:`version` (the newest mtime and the count of
the part files and run records), so a new part or a finished run invalidates it (Streamlit's
caching docs: key on path + mtime). The analysis frame (no CAM arrays) is read once per version and
shared read-only (``cache_resource``: ``cache_data`` would unpickle a million-row copy on every
rerun); everything derived from it is small and goes through ``cache_data``. CAMs are fetched only
for the images on screen, filtered by ``image_id`` at the Parquet scan.

The pure functions (no Streamlit) are what the tests call; the ``cached_*`` wrappers add caching.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import streamlit as st

from common.storage import Location, as_path
from dashboard.explore import Filters, ModelView, model_view, select
from pipeline.analysis.checks import RANK, SKIP, CheckResult
from pipeline.analysis.cues import StatOptions, bg_colours, colour_cue_class, counterfactual
from pipeline.analysis.evidence import ALL, ModelEvidence, analyse, group_stats
from pipeline.analysis.frame import load_frame
from pipeline.analysis.stats import Estimate
from pipeline.config import GatePolicy, load_policy
from pipeline.gate import Verdict, evaluate, stat_options
from pipeline.schema import RUNS_DIR, RunRecord, open_parts, part_files, read_runs
from pipeline.triage import COLUMNS as TRIAGE_COLUMNS
from pipeline.triage import fingerprints_of, mark_state, open_for_reading, review_db_path

OLDER = "older fingerprint"  # review state of an image decided only under another fingerprint
STALE_AFTER_S = 600  # a "running" run with no new part for this long is probably killed
TREND_MAX_RUNS = 20
TREND_COLUMNS = (
    "run_id", "model", "model_fingerprint", "image_id", "label", "pred", "pred_score", "target_score",
    "correct", "object_share", "object_area", "pointing_hit", "background_share", "cf_fill_pred",
    "cf_rand_pred", "cf_rand_score", "cf_same_pred", "cf_same_score", "error", "error_kind", "scored_at",
)  # fmt: skip
DETAIL_COLUMNS = (
    "model", "image_id", "run_id", "model_fingerprint", "scored_at", "path", "dataset_root", "label", "pred",
    "target", "image_w", "image_h", "view_box", "cam", "cam_other", "cam_h", "cam_w", "annotations", "input_h",
    "input_w",
)  # fmt: skip
PAIRS_LIMIT = 2000  # Compare lists the images with the largest differences
HEADLINES = {  # key -> (title, shown as a percentage)
    "accuracy": ("accuracy", True),
    "object_share": ("object share", False),
    "object_lift": ("object lift (chance-corrected)", False),
    "pointing": ("pointing rate", True),
    "cf_bg_gap": ("BG-gap", True),
}


# ---------------------------------------------------------------------------------------------
# Results state


def version(root: str | os.PathLike[str]) -> str:
    """``<newest mtime_ns>-<parts>-<runs>`` over part files and run records ("missing" when no directory)."""
    r = as_path(root)  # a directory or an object-store prefix (one listing of each, no per-file request)
    if not r.is_dir():
        return "missing"
    files = [*r.glob("model=*/part-*.parquet"), *(r / RUNS_DIR).glob("*.json")]
    newest = 0
    for f in files:
        try:
            newest = max(newest, f.stat().st_mtime_ns)
        except FileNotFoundError:  # replaced between glob and stat; the next rerun sees it
            continue
    n_parts = sum(1 for f in files if f.suffix == ".parquet")
    return f"{newest}-{n_parts}-{len(files) - n_parts}"


def policy_for(path: str | None) -> GatePolicy:
    return load_policy(path) if path else GatePolicy()


def run_roots(runs: Sequence[RunRecord]) -> list[str]:
    return sorted({r for run in runs for r in run.dataset_roots if r})


def run_mask_roots(runs: Sequence[RunRecord]) -> list[str]:
    """The folders of the mask files the runs read (the README's ``masks/`` beside ``images/``)."""
    return sorted({r for run in runs for r in run.mask_roots if r})


def last_activity(root: str | os.PathLike[str], run: RunRecord) -> float | None:
    """Newest mtime (epoch s) of the run's part files, else of its record."""
    times = [f.stat().st_mtime for f in as_path(root).glob(f"model=*/part-{run.run_id}-*.parquet")]
    rec = as_path(root) / RUNS_DIR / f"{run.run_id}.json"
    if rec.exists():
        times.append(rec.stat().st_mtime)
    return max(times) if times else None


def run_state(root: str | os.PathLike[str], run: RunRecord, now: float | None = None) -> str:
    """The run's status for people: a ``running`` record without activity is marked as probably killed."""
    if run.status != "running":
        return run.status
    last = last_activity(root, run)
    now = now if now is not None else datetime.now(UTC).timestamp()
    if last is not None and now - last > STALE_AFTER_S:
        return f"running? (nothing written for {_ago(now - last)}: killed or stalled)"
    return "running"


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def runs_table(root: str | os.PathLike[str], runs: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (run, model): id, status, times, images, scored/skipped/errors, fingerprint."""
    rows = []
    for r in reversed(runs):
        state = run_state(root, r)
        base = {"run": r.run_id, "status": state, "started": r.started_at, "finished": r.finished_at or "-",
                "images": r.images}
        if not r.models:
            rows.append({**base, "model": "-", "scored": 0, "skipped": 0, "errors": 0, "fingerprint": "-"})
        for name, m in sorted(r.models.items()):
            rows.append({**base, "model": name, "scored": m.scored, "skipped": m.skipped, "errors": m.errors,
                         "fingerprint": (m.fingerprint or "")[:12]})
    return pd.DataFrame(rows, columns=["run", "status", "started", "finished", "images", "model", "scored",
                                       "skipped", "errors", "fingerprint"])


# ---------------------------------------------------------------------------------------------
# Headline numbers and trend


def headline(ev: ModelEvidence) -> dict[str, Estimate]:
    o = ev.overall
    return {"accuracy": o.accuracy, "object_share": o.object_share, "object_lift": o.object_lift,
            "pointing": o.pointing, "cf_bg_gap": o.cf_bg_gap}


def headline_table(verdict: Verdict) -> pd.DataFrame:
    rows = []
    for m in verdict.models:
        ev = m.evidence
        row: dict[str, Any] = {"model": m.model, "verdict": m.status, "images": ev.images,
                               "scored": ev.overall.scored, "errors": ev.errors}
        for key, est in headline(ev).items():
            title, pct = HEADLINES[key]
            row[title] = est.fmt(pct)
        rows.append(row)
    return pd.DataFrame(rows)


def errors_table(verdict: Verdict) -> pd.DataFrame:
    rows = [{"model": m.model, "kind": k, "rows": n} for m in verdict.models
            for k, n in sorted(m.evidence.errors_by_kind.items())]
    return pd.DataFrame(rows, columns=["model", "kind", "rows"])


def trend(root: str, runs: Sequence[RunRecord], so: StatOptions) -> pd.DataFrame:
    """Headline numbers per (finished run, model) over the results as of that run (the latest runs only)."""
    finished = [r for r in runs if r.status == "finished"][-TREND_MAX_RUNS:]
    rows = []
    for r in finished:
        d = load_frame(root, as_of=r.run_id, columns=TREND_COLUMNS)
        when = pd.to_datetime(r.finished_at or r.started_at, utc=True, errors="coerce")
        for model, g in d.groupby("model"):
            gs = group_stats(ALL, g, so)
            ests = {"accuracy": gs.accuracy, "object_share": gs.object_share, "object_lift": gs.object_lift,
                    "pointing": gs.pointing, "cf_bg_gap": counterfactual(g, so).bg_gap}
            for key, e in ests.items():
                rows.append({"run": r.run_id, "finished": when, "model": str(model), "metric": key,
                             "value": e.value if e.ok else np.nan, "lo": e.lo, "hi": e.hi, "n": e.n})
    return pd.DataFrame(rows, columns=["run", "finished", "model", "metric", "value", "lo", "hi", "n"])


# ---------------------------------------------------------------------------------------------
# Model page


def check_images(checks: Sequence[CheckResult]) -> dict[str, list[str]]:
    """check name -> image ids it names (its examples and its findings' examples)."""
    out = {}
    for r in checks:
        ids = list(dict.fromkeys([*r.examples, *(x for f in r.findings for x in f.examples)]))
        if ids:
            out[r.check] = ids
    return out


def class_status(checks: Sequence[CheckResult]) -> dict[str, tuple[str, list[str]]]:
    """label -> (worst judged status of its class-scope findings, the 'check STATUS' flags)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for r in checks:
        for f in r.findings:
            if not f.scope.startswith("class:") or not f.judged:
                continue
            lab = f.scope.removeprefix("class:")
            worst, flags = out.get(lab, (SKIP, []))
            if f.status in ("WARN", "FAIL", "ERROR"):
                flags = [*flags, f"{r.check} {f.status}"]
            if RANK.get(f.status, 0) > RANK.get(worst, 0):
                worst = f.status
            out[lab] = (worst, flags)
    return out


def class_table(mv: Any) -> pd.DataFrame:
    """Per-class evidence of one ModelVerdict: numbers (sortable), CIs as text, the class status."""
    status = class_status(mv.checks)
    rows = []
    for g in [mv.evidence.overall, *mv.evidence.classes]:
        st_, flags = status.get(g.key, (mv.status if g.key == ALL else SKIP, []))
        rows.append({
            "class": g.key, "status": st_, "n": g.scored,
            "object share": _v(g.object_share), "object lift": _v(g.object_lift),
            "pointing": _v(g.pointing), "BG-gap": _v(g.cf_bg_gap), "accuracy": _v(g.accuracy),
            "object area": _v(g.object_area),
            "object lift CI": _ci(g.object_lift), "accuracy CI": _ci(g.accuracy, True),
            "flags": ", ".join(flags),
        })
    return pd.DataFrame(rows)


def _v(e: Estimate) -> float:
    return e.value if e.ok else float("nan")


def _ci(e: Estimate, pct: bool = False) -> str:
    if not e.ok or not (math.isfinite(e.lo) and math.isfinite(e.hi)):
        return "-"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    return f"[{f(e.lo)}, {f(e.hi)}]"


def share_histogram(frame: pd.DataFrame, model: str, bins: int = 20) -> pd.DataFrame:
    """Pre-binned object_share and object_area of the model's scored rows (long format)."""
    d = frame[(frame.model == model) & frame.scored]
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for col, title in (("object_share", "object share (CAM mass on the object)"),
                       ("object_area", "object area (a uniform map's share)")):
        v = d[col].to_numpy(dtype=float)
        counts, _ = np.histogram(np.clip(v[np.isfinite(v)], 0.0, 1.0), bins=edges)
        rows += [{"quantity": title, "start": edges[i], "end": edges[i + 1], "images": int(c)}
                 for i, c in enumerate(counts)]
    return pd.DataFrame(rows)


def cooccurrence_table(ev: ModelEvidence) -> pd.DataFrame:
    rows = [{"class": p.label, "category": p.category, "CAM mass": _v(p.mass), "lift": _v(p.lift),
             "images with it": p.n_with, "rate": p.rate, "area": p.area,
             "signals": ev.cooccurrence.associations.get(p.category, "")} for p in ev.cooccurrence.pairs]
    cols = ["class", "category", "CAM mass", "lift", "images with it", "rate", "area", "signals"]
    return pd.DataFrame(rows, columns=cols)


@dataclass
class BgPoints:
    points: pd.DataFrame  # pc1, pc2, label, pred, correct, cue, aligned, image_id, colour
    centroids: pd.DataFrame  # label, pc1, pc2, colour
    explained: float  # variance share of the 2-D projection


def bg_points(frame: pd.DataFrame, model: str, max_points: int = 2000, seed: int = 0) -> BgPoints | None:
    """Per-image background colours projected on their 2 principal axes, with the leave-one-out
    colour cue (the class whose mean background is nearest) and the class centroids."""
    d = frame[(frame.model == model) & frame.scored & frame.label.notna() & frame.correct.notna()]
    ok, rgb = bg_colours(d.bg_color.to_numpy())
    d, colors = d[ok], rgb / 255.0
    if len(d) < 2 or d.label.nunique() < 2:
        return None
    labels = d.label.to_numpy(dtype=object)
    cue, cent, _ = colour_cue_class(colors, labels)
    mu = colors.mean(0)
    _, s, vt = np.linalg.svd(colors - mu, full_matrices=False)
    axes = vt[:2].T
    keep = np.arange(len(d))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    proj = (colors[keep] - mu) @ axes
    var = s**2
    pts = pd.DataFrame({
        "pc1": proj[:, 0], "pc2": proj[:, 1] if proj.shape[1] > 1 else 0.0,
        "label": labels[keep].astype(str), "pred": d.pred.astype(str).to_numpy()[keep],
        "cue": cue[keep].astype(str),
        "aligned": np.where(cue[keep] == labels[keep], "aligned", "conflicting"),
        "correct": np.where(d.correct.to_numpy()[keep] > 0.5, "right", "wrong"),
        "image_id": d.image_id.astype(str).to_numpy()[keep], "colour": [_hex(c) for c in colors[keep]],
    })
    cen = pd.DataFrame([{"label": k, "pc1": float(((v - mu) @ axes)[0]),
                         "pc2": float(((v - mu) @ axes)[1]) if axes.shape[1] > 1 else 0.0, "colour": _hex(v)}
                        for k, v in cent.items()])
    return BgPoints(pts, cen, float(var[:2].sum() / var.sum()) if var.sum() > 0 else 1.0)


def _hex(rgb01: np.ndarray) -> str:
    r, g, b = (min(255, max(0, round(float(v) * 255))) for v in rgb01)
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------------------------
# Image explorer


Key = tuple[str, str, str]  # (image_id, run_id, model_fingerprint): one stored row


def row_key(row: Any) -> Key:
    return (str(row["image_id"]), str(row["run_id"]), str(row["model_fingerprint"]))


@dataclass(frozen=True)
class Locations:
    """Which part files hold which image ids, so the CAMs of a page are read from those files only.

    Ids are kept as 64-bit hashes (sorted): 12 bytes a row instead of the strings. A hash collision
    only adds a file to read; the rows themselves are still matched on the exact image id.
    """

    files: tuple[Any, ...]  # part files: Paths on disk, Locations on an object store
    hashes: np.ndarray  # (n,) uint64, sorted
    file_of: np.ndarray  # (n,) int32 index into files

    def files_for(self, image_ids: Sequence[str]) -> list[Any]:
        h = _hash(pa.array(list(image_ids), pa.string()))
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        found = {int(i) for a, b in zip(lo, hi, strict=True) for i in self.file_of[a:b]}
        return [self.files[i] for i in sorted(found)]


def _hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pd.util.hash_pandas_object(ids.to_pandas(), index=False).to_numpy()


def locate(root: str | os.PathLike[str], model: str) -> Locations:
    """Scan the model's part files for (image id, file): one pass over the image_id column."""
    files = part_files(root, [model])
    t = open_parts(files).to_table(columns=["image_id", "__filename"])
    enc = pc.dictionary_encode(t.column("__filename")).combine_chunks()
    at = {f.path if isinstance(f, Location) else str(f): i for i, f in enumerate(files)}
    which = np.array([at[f] for f in enc.dictionary.to_pylist()], dtype=np.int32)
    h = _hash(t.column("image_id"))
    order = np.argsort(h, kind="stable")
    return Locations(tuple(files), h[order], which[enc.indices.to_numpy()][order])


def fetch_details(root: str | os.PathLike[str], model: str, keys: Sequence[Key],
                  where: Locations | None = None) -> dict[str, dict[str, Any]]:
    """image_id -> the stored row (CAM, view box, annotations, sizes) for exactly these keys.

    Reads only the part files of the keys' runs (``part-<run_id>-*``), with ``where`` only those
    holding the asked ids, and only rows whose image_id is asked for, so the CAM column of a
    million-row result set is never loaded whole.
    """
    if not keys:
        return {}
    ids = sorted({k[0] for k in keys})
    files = where.files_for(ids) if where is not None else part_files(root, [model])
    run_ids = {k[1] for k in keys}
    mine = [f for f in files if any(f.name.startswith(f"part-{r}-") for r in run_ids)]
    if not mine and where is not None:  # written after the locations were taken: look everywhere
        return fetch_details(root, model, keys)
    ds = open_parts(mine or files)
    flt = (pc.field("model") == model) & pc.field("image_id").isin(ids)
    want = set(keys)
    best: dict[str, dict[str, Any]] = {}
    for row in ds.to_table(columns=list(DETAIL_COLUMNS), filter=flt).to_pylist():
        if (row["image_id"], row["run_id"], row["model_fingerprint"]) not in want:
            continue
        prev = best.get(row["image_id"])
        if prev is None or (row["scored_at"] or datetime.min.replace(tzinfo=UTC)) >= (
                prev["scored_at"] or datetime.min.replace(tzinfo=UTC)):
            best[row["image_id"]] = row
    return best


def details_table(row: pd.Series) -> pd.DataFrame:
    """The facts of one frame row as (field, value) text."""
    fields = ["image_id", "label", "pred", "pred_score", "target", "target_score", "correct", "object_share",
              "object_area", "object_lift", "pointing_hit", "background_share", "other_shares", "metric_note",
              "cf_fill_pred", "cf_rand_pred", "cf_rand_donor", "cf_same_pred", "cf_same_donor", "attributes",
              "feature_layer", "run_id", "path"]
    out = []
    for f in fields:
        if f not in row.index:
            continue
        v = row[f]
        if isinstance(v, float | np.floating):
            if not np.isfinite(v):
                v = "-"
            elif f in ("correct", "pointing_hit"):
                v = "yes" if v > 0.5 else "no"
            else:
                v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = ", ".join(f"{k}: {x:.3f}" if isinstance(x, float) else f"{k}: {x}" for k, x in v.items())
            v = v or "-"
        elif v is None or (not isinstance(v, list | np.ndarray) and pd.isna(v)):
            v = "-"
        out.append({"field": f, "value": str(v)})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------
# Compare


def class_deltas(a: ModelEvidence, b: ModelEvidence) -> pd.DataFrame:
    """Per-class object share / lift / accuracy of A and B and their differences (B - A)."""
    ca = {g.key: g for g in [a.overall, *a.classes]}
    cb = {g.key: g for g in [b.overall, *b.classes]}
    keys = [k for k in ca if k in cb] + [k for k in ca if k not in cb] + [k for k in cb if k not in ca]
    rows = []
    for k in keys:
        ga, gb = ca.get(k), cb.get(k)
        row: dict[str, Any] = {"class": k, "n A": ga.scored if ga else 0, "n B": gb.scored if gb else 0}
        for stat, title in (("object_share", "object share"), ("object_lift", "object lift"),
                            ("accuracy", "accuracy")):
            va = _v(getattr(ga, stat)) if ga else float("nan")
            vb = _v(getattr(gb, stat)) if gb else float("nan")
            row[f"{title} A"], row[f"{title} B"], row[f"Δ {title}"] = va, vb, vb - va
        rows.append(row)
    return pd.DataFrame(rows)


def paired_images(fa: pd.DataFrame, fb: pd.DataFrame, limit: int = PAIRS_LIMIT) -> tuple[pd.DataFrame, int]:
    """Images scored in both frames, largest |Δ object_share| first: (the first ``limit`` pairs, how
    many there are); columns suffixed ``_a`` / ``_b``."""
    cols = ["image_id", "label", "pred", "pred_score", "correct", "object_share", "run_id",
            "model_fingerprint", "model"]
    a, b = fa.loc[fa.scored, cols], fb.loc[fb.scored, cols]
    m = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    m = m.assign(delta=(m.object_share_b - m.object_share_a))
    order = m.delta.abs().sort_values(ascending=False, na_position="last", kind="stable").index
    return m.reindex(order[:limit]), len(m)


@dataclass
class ModelRows:
    """What the pages need to know about one model's rows without holding them."""

    rows: int
    scored: int
    labels: list[str]
    errors: pd.DataFrame  # the first error rows: image_id, error_kind, error, run_id


def model_rows(frame: pd.DataFrame, model: str, max_errors: int = 500) -> ModelRows:
    d = frame[frame.model == model]
    err = d.loc[~d.scored, ["image_id", "error_kind", "error", "run_id"]]
    return ModelRows(len(d), int(d.scored.sum()), sorted(d.label.dropna().astype(str).unique()),
                     err.head(max_errors).reset_index(drop=True))


# ---------------------------------------------------------------------------------------------
# Cached wrappers (keyed on the results path and its version)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_runs(root: str, ver: str) -> list[RunRecord]:
    return read_runs(root)


def shared_frame(root: str, ver: str, as_of: str | None = None) -> pd.DataFrame:
    """The analysis frame (no CAM arrays). Shared between sessions: callers must not modify it."""
    return _shared_frame(root, ver, as_of)  # one call shape, one cache key (st hashes args as passed)


@st.cache_resource(show_spinner="Reading results…", max_entries=4)
def _shared_frame(root: str, ver: str, as_of: str | None) -> pd.DataFrame:
    return load_frame(root, as_of=as_of)


@st.cache_data(show_spinner="Judging the models…", max_entries=8)
def cached_verdict(root: str, ver: str, policy_path: str | None) -> Verdict:
    return evaluate(root, policy_for(policy_path), frame=shared_frame(root, ver))


@st.cache_data(show_spinner="Computing the trend across runs…", max_entries=4)
def cached_trend(root: str, ver: str, policy_path: str | None) -> pd.DataFrame:
    return trend(root, cached_runs(root, ver), stat_options(policy_for(policy_path)))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_histogram(root: str, ver: str, model: str) -> pd.DataFrame:
    return share_histogram(shared_frame(root, ver), model)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_bg_points(root: str, ver: str, model: str) -> BgPoints | None:
    return bg_points(shared_frame(root, ver), model)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_fingerprints(root: str, ver: str) -> dict[str, str]:
    return fingerprints_of(shared_frame(root, ver))


@st.cache_resource(show_spinner="Indexing the model's rows…", max_entries=8)
def cached_view(root: str, ver: str, as_of: str | None, model: str) -> ModelView:
    """Shared read-only, like the frame it indexes."""
    return model_view(shared_frame(root, ver, as_of), model)


@st.cache_data(show_spinner="Filtering…", max_entries=32)
def cached_selection(root: str, ver: str, as_of: str | None, model: str, filters: Filters) -> np.ndarray:
    return select(cached_view(root, ver, as_of, model), filters)


# ---------------------------------------------------------------------------------------------
# Review decisions (read every rerun: a small table, and another reviewer may just have written)


def review_path(root: str) -> Path:
    """``$CUEAUDIT_REVIEW_DB`` or ``<results>/_review.sqlite`` (see :mod:`pipeline.triage`)."""
    return review_db_path(root)


def decisions(root: str) -> pd.DataFrame:
    """The standing decisions (:meth:`pipeline.triage.ReviewStore.current`); empty without a database."""
    store = open_for_reading(root)
    return store.current() if store is not None else pd.DataFrame(columns=TRIAGE_COLUMNS)


def decisions_history(root: str) -> pd.DataFrame:
    store = open_for_reading(root)
    return store.history() if store is not None else pd.DataFrame(columns=TRIAGE_COLUMNS)


def image_marks(dec: pd.DataFrame, model: str, fingerprint: str) -> dict[str, list[str]]:
    """review state -> image ids: each decision under the current fingerprint, and ``older fingerprint``
    for images decided only under another one."""
    state = mark_state(dec, model, fingerprint)
    out: dict[str, list[str]] = {}
    cur = state.decision.dropna()
    for d, ids in cur.groupby(cur).groups.items():
        out[str(d)] = [str(x) for x in ids]
    older = state[state.decision.isna() & state.older_decision.notna()]
    if len(older):
        out[OLDER] = [str(x) for x in older.index]
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def cached_model_rows(root: str, ver: str, model: str) -> ModelRows:
    return model_rows(shared_frame(root, ver), model)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_pairs(root: str, ver: str, as_of_a: str | None, model_a: str, as_of_b: str | None,
                 model_b: str) -> tuple[pd.DataFrame, int]:
    fa, fb = shared_frame(root, ver, as_of_a), shared_frame(root, ver, as_of_b)
    return paired_images(fa[fa.model == model_a], fb[fb.model == model_b])


@st.cache_resource(show_spinner="Indexing the part files…", max_entries=8)
def cached_locations(root: str, ver: str, model: str) -> Locations:
    return locate(root, model)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_details(root: str, ver: str, model: str, keys: tuple[Key, ...]) -> dict[str, dict[str, Any]]:
    return fetch_details(root, model, keys, cached_locations(root, ver, model))


@st.cache_data(show_spinner="Analysing…", max_entries=16)
def cached_evidence(root: str, ver: str, as_of: str | None, model: str,
                    policy_path: str | None) -> ModelEvidence:
    frame = shared_frame(root, ver, as_of)
    so = stat_options(policy_for(policy_path))
    return analyse(frame[frame.model == model], so, [model])[model]
