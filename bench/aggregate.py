"""Seconds to aggregate a million-row results directory: read, analysis frame, gate, dashboard.

The results are synthesised directly as Parquet parts (no model runs): ten classes whose background
colour follows the label 60% of the time, a biased model that is right less often on the
cue-conflicting images, 7x7 CAMs, co-occurring categories on a quarter of the images, attributes,
counterfactual columns and a few error rows. They are written once through
:class:`pipeline.schema.PartWriter` in parts of ``flush_rows`` (4096) rows, as ``cueaudit run``
writes them, and cached under ``.cueaudit/bench/``.

Each stage of the analysis is also timed against :mod:`tests.bench.reference`, the straightforward
per-row implementation it replaced, on the same frame, and the two results are compared.

    python -m bench.aggregate --rows 1000000     # prints markdown
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import ModelRun, PartWriter, RunRecord, conform, write_run

log = logging.getLogger(__name__)

AGG_VERSION = 1  # bump when the synthetic rows change: the cached directory is rebuilt
CACHE = Path(".cueaudit/bench")
MODEL = "resnet50_bench"
RUN_ID = "20250101T000000Z-bench0"
FINGERPRINT = "bench0fingerprint"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CATEGORIES = ("keyboard", "person", "tree", "chair", "bottle")  # category k mostly co-occurs with class 2k
PART_ROWS = 4096
CAM = 7
TARGET_S = 10.0  # "aggregate in seconds": the whole gate over a million rows


# ---------------------------------------------------------------------------------------------
# Synthetic results


def _strings(prefix: str, values: np.ndarray, suffix: str = "") -> pa.Array:
    return pa.array([f"{prefix}{v}{suffix}" for v in values.tolist()], pa.string())


def _take(names: tuple[str, ...], idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    arr = pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(names)).cast(pa.string())
    if valid is None:
        return arr
    return pc.if_else(pa.array(valid), arr, pa.scalar(None, pa.string()))


def _map(keys: list[np.ndarray], values: list[np.ndarray], valid: np.ndarray, names: tuple[str, ...] | None,
         vtype: pa.DataType) -> pa.MapArray:
    """Up to len(keys) entries per row; a key index < 0 means "no entry"; invalid rows are null maps."""
    k = np.stack(keys, 1)
    v = np.stack(values, 1)
    present = (k >= 0) & valid[:, None]
    offsets = np.zeros(len(k) + 1, np.int32)
    np.cumsum(present.sum(1), out=offsets[1:])
    flat_k = k[present]
    key_arr = _take(names, flat_k) if names else pa.array(flat_k.astype(str).tolist(), pa.string())
    val_arr = pa.array(v[present], vtype) if vtype != pa.string() else pa.array(v[present].tolist(), pa.string())
    return pa.MapArray.from_arrays(pa.array(offsets), key_arr, val_arr, mask=pa.array(~valid))


def synth_rows(start: int, n: int, seed: int = 0) -> pa.Table:
    """Rows ``start .. start + n - 1`` of the synthetic results, as a :data:`RESULT_SCHEMA` table."""
    rng = np.random.default_rng([seed, start])
    i = np.arange(start, start + n)
    nc = len(CLASSES)
    label = rng.integers(0, nc, n)
    aligned = rng.random(n) < 0.6
    colour_class = np.where(aligned, label, (label + rng.integers(1, nc, n)) % nc)
    hues = np.linspace(0, 1, nc, endpoint=False)
    centre = np.stack([127 + 90 * np.cos(2 * np.pi * (hues + s)) for s in (0, 1 / 3, 2 / 3)], 1)
    bg = np.clip(centre[colour_class] + rng.normal(0, 25, (n, 3)), 0, 255).astype(np.float32)
    error = rng.random(n) < 0.002
    ok = ~error
    right = rng.random(n) < np.where(aligned, 0.92, 0.55)
    pred = np.where(right, label, np.where(aligned, (label + rng.integers(1, nc, n)) % nc, colour_class))
    has_obj = rng.random(n) < 0.97
    area = rng.uniform(0.05, 0.5, n).astype(np.float32)
    lift = np.clip(rng.normal(0.3, 0.2, n), -0.3, 1.0)
    share = np.clip(area + lift * (1 - area), 0, 1).astype(np.float32)
    # Co-occurring categories: one on 25% of images, two on 5%; category k signals class 2k.
    n_other = np.where(rng.random(n) < 0.25, 1, 0) + np.where(rng.random(n) < 0.05, 1, 0)
    cat_a = np.where(rng.random(n) < 0.8, np.minimum(label // 2, len(CATEGORIES) - 1),
                     rng.integers(0, len(CATEGORIES), n))
    cat_b = (cat_a + rng.integers(1, len(CATEGORIES), n)) % len(CATEGORIES)
    keys = [np.where(n_other >= 1, cat_a, -1), np.where(n_other >= 2, cat_b, -1)]
    o_area = [rng.uniform(0.01, 0.1, n).astype(np.float32) for _ in range(2)]
    o_share = [np.clip(a * rng.uniform(0.5, 3, n), 0, 0.3).astype(np.float32) for a in o_area]
    other_total = sum(np.where(k >= 0, s, 0) for k, s in zip(keys, o_share, strict=True))
    bshare = np.clip(1 - np.where(has_obj, share, 0) - other_total, 0, 1).astype(np.float32)
    ok_obj = ok & has_obj
    pscore = rng.uniform(0.3, 1.0, n).astype(np.float32)
    cam = np.round(rng.gamma(2.0, 0.5, (n, CAM * CAM)) * 32) / 32
    cam_offsets = pa.array(np.arange(n + 1, dtype=np.int32) * CAM * CAM)
    cam_arr = pa.ListArray.from_arrays(cam_offsets, pa.array(cam.astype(np.float32).ravel()), mask=pa.array(error))

    def f32(a: np.ndarray, valid: np.ndarray) -> pa.Array:
        return pa.array(np.asarray(a, np.float32), pa.float32(), mask=~valid)

    cf_rand = np.where(rng.random(n) < np.where(right, 0.85, 0.4), label, colour_class)
    cf_same = np.where(rng.random(n) < np.where(right, 0.93, 0.5), label, pred)
    cf_fill = np.where(rng.random(n) < 0.7, pred, (pred + 1) % nc)
    donor = rng.integers(0, start + n, n)
    ids = np.char.add(np.array(CLASSES)[label], np.char.mod("/%08d.jpg", i))
    image_id = pa.array(ids.tolist(), pa.string())
    yes_no = ("no", "yes")
    cols: dict[str, Any] = {
        "run_id": pa.array([RUN_ID] * n, pa.string()),
        "model": pa.array([MODEL] * n, pa.string()),
        "model_fingerprint": pa.array([FINGERPRINT] * n, pa.string()),
        "image_id": image_id,
        "path": pa.array(np.char.add("/data/bench/images/", ids).tolist(), pa.string()),
        "dataset_root": pa.array(["/data/bench"] * n, pa.string()),
        "label": _take(CLASSES, label),
        "label_index": pa.array(label.astype(np.int32)),
        "pred": _take(CLASSES, pred, ok),
        "pred_index": pa.array(pred.astype(np.int32), mask=error),
        "pred_score": f32(pscore, ok),
        "target": _take(CLASSES, pred, ok),
        "target_index": pa.array(pred.astype(np.int32), mask=error),
        "target_score": f32(pscore, ok),
        "correct": pa.array(right, mask=error),
        "feature_layer": pa.array(np.where(ok, "layer4", None).tolist(), pa.string()),
        "cam": cam_arr,
        "cam_h": pa.array(np.full(n, CAM, np.int16), mask=error),
        "cam_w": pa.array(np.full(n, CAM, np.int16), mask=error),
        "input_h": pa.array(np.full(n, 224, np.int16), mask=error),
        "input_w": pa.array(np.full(n, 224, np.int16), mask=error),
        "image_w": pa.array(np.full(n, 256, np.int32), mask=error),
        "image_h": pa.array(np.full(n, 256, np.int32), mask=error),
        "view_box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(np.float32([16, 16, 240, 240]), n)), 4,
                                                      mask=pa.array(error)),
        "object_share": f32(share, ok_obj),
        "object_area": f32(area, ok_obj),
        "object_cells": f32(area * CAM * CAM, ok_obj),
        "pointing_hit": pa.array(rng.random(n) < 0.5 + 0.4 * lift, mask=~ok_obj),
        "background_share": f32(bshare, ok),
        "other_shares": _map(keys, o_share, ok, CATEGORIES, pa.float32()),
        "other_areas": _map(keys, o_area, ok, CATEGORIES, pa.float32()),
        "bg_color": pa.FixedSizeListArray.from_arrays(pa.array(bg.ravel()), 3, mask=pa.array(error)),
        "metric_note": pa.array(np.where(ok & ~has_obj, "no_object_mask", None).tolist(), pa.string()),
        "cf_fill_pred": _take(CLASSES, cf_fill, ok_obj),
        "cf_fill_score": f32(rng.uniform(0.2, 1, n), ok_obj),
        "cf_rand_pred": _take(CLASSES, cf_rand, ok_obj),
        "cf_rand_score": f32(rng.uniform(0.1, 1, n), ok_obj),
        "cf_rand_donor": pa.array(np.char.mod("donor/%08d.jpg", donor).tolist(), pa.string(), mask=~ok_obj),
        "cf_same_pred": _take(CLASSES, cf_same, ok_obj),
        "cf_same_score": f32(rng.uniform(0.2, 1, n), ok_obj),
        "cf_same_donor": pa.array(np.char.mod("donor/%08d.jpg", (donor + 1) % (start + n)).tolist(), pa.string(),
                                  mask=~ok_obj),
        "attributes": _map([np.zeros(n, int), np.ones(n, int)],
                           [np.array(yes_no)[aligned.astype(int)], np.array(("a", "b", "c"))[i % 3]],
                           np.ones(n, bool), ("cue_aligned", "source"), pa.string()),
        "annotations": pa.array(np.char.add(np.char.add('[{"category": "', np.array(CLASSES)[label]),
                                            '", "bbox": [40, 40, 120, 120]}]').tolist(), pa.string()),
        "error": pa.array(np.char.add(np.char.add("/data/bench/images/", ids), ": cannot decode image").tolist(),
                          pa.string(), mask=ok),
        "error_kind": pa.array(["decode_error"] * n, pa.string(), mask=ok),
        "scored_at": pa.array((1_735_689_600_000 + i * 2).astype(np.int64)).cast(pa.timestamp("ms", tz="UTC")),
    }
    return conform(cols, n)


def build_results(rows: int, cache: Path = CACHE, seed: int = 0) -> tuple[Path, float]:
    """The cached results directory of ``rows`` synthetic rows (built when missing): (path, seconds to build)."""
    root = Path(cache) / f"aggregate-v{AGG_VERSION}-{rows}-s{seed}"
    done = root / ".complete"
    if done.is_file():
        return root, 0.0
    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)  # a half-built directory from an interrupted build
    writer = PartWriter(root, MODEL, RUN_ID)
    chunk = PART_ROWS * 16
    for start in range(0, rows, chunk):
        t = synth_rows(start, min(chunk, rows - start), seed)
        for off in range(0, t.num_rows, PART_ROWS):
            writer.write(t.slice(off, PART_ROWS))
    now = datetime.now(UTC).isoformat()
    write_run(root, RunRecord(run_id=RUN_ID, name="bench-aggregate", started_at=now, status="finished",
                              finished_at=now, images=rows, dataset_roots=["/data/bench"],
                              models={MODEL: ModelRun(fingerprint=FINGERPRINT, to_score=rows, scored=rows)}))
    done.write_text(json.dumps({"rows": rows, "version": AGG_VERSION}))
    return root, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Timing


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _dashboard_cold(root: Path, frame: Any = None) -> dict[str, float] | None:
    """What a first dashboard visit computes, through the pure functions its cached wrappers call."""
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # "no runtime found": expected outside `streamlit run`
    try:
        from dashboard import data
    except ImportError as e:  # the slim install has no Streamlit
        log.warning("dashboard not timed: %s", e)
        return None
    from pipeline.analysis.frame import load_frame
    from pipeline.gate import evaluate

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    data.version(root)
    data.read_runs(root)
    out["frame"], frame = _timed(lambda: load_frame(root))
    out["verdict"], _ = _timed(lambda: evaluate(root, frame=frame))
    out["overview"] = time.perf_counter() - t0
    out["histogram"], _ = _timed(lambda: data.share_histogram(frame, MODEL))
    out["bg_points"], _ = _timed(lambda: data.bg_points(frame, MODEL))
    out["model_rows"], _ = _timed(lambda: data.model_rows(frame, MODEL))
    from dashboard.explore import Filters, model_view, select

    out["gallery"], _ = _timed(lambda: select(model_view(frame, MODEL), Filters()))  # the explorer's first page
    out["model_page"] = out["histogram"] + out["bg_points"] + out["model_rows"] + out["gallery"]
    return out


def run_aggregate_bench(rows: int = 1_000_000, cache: Path = CACHE, reference: bool = True) -> dict[str, Any]:
    """Times reading, the analysis frame, each cue analysis, the whole gate and the dashboard's cold load
    over ``rows`` synthetic results; with ``reference``, the row-by-row implementation too (same frame)."""
    from pipeline import gate
    from pipeline.analysis import cues, evidence
    from pipeline.analysis.frame import ANALYSIS_COLUMNS, load_frame, prepare_frame
    from pipeline.analysis.stats import BOOTSTRAP_MAX_N
    from pipeline.gate import evaluate, stat_options
    from pipeline.schema import read_results
    from tests.bench import reference as ref

    root, built = build_results(rows, cache)
    so = stat_options(gate.GatePolicy())
    load = [os.getloadavg()[0]]
    res: dict[str, Any] = {"rows": rows, "root": str(root), "built_s": built, "stages": [], "reference": reference,
                           "parts": len(list(root.glob("model=*/*.parquet"))), "bootstrap_max_n": BOOTSTRAP_MAX_N}

    def stage(name: str, after: Callable[[], Any], before: Callable[[], Any] | None,
              same: Callable[[Any, Any], bool] | None = None) -> Any:
        t_after, out = _timed(after)
        row: dict[str, Any] = {"stage": name, "after_s": t_after, "before_s": None, "identical": None}
        if reference and before is not None:
            t_before, old = _timed(before)
            row["before_s"] = t_before
            row["identical"] = same(out, old) if same else None
        load.append(os.getloadavg()[0])
        res["stages"].append(row)
        return out

    def same_ev(a: Any, b: Any) -> bool:
        return evidence.to_jsonable(a) == evidence.to_jsonable(b)

    read_results(root, columns=list(ANALYSIS_COLUMNS))  # untimed: warm the file cache for everyone alike
    stage("read_results (analysis columns)", lambda: read_results(root, columns=list(ANALYSIS_COLUMNS)), None)
    raw = read_results(root, columns=list(ANALYSIS_COLUMNS)).to_pandas()
    stage("prepare_frame (maps -> dicts, types)", lambda: prepare_frame(raw), lambda: ref.prepare_frame(raw))
    raw = None
    df = stage("load_frame (read + pandas + prepare)", lambda: load_frame(root), lambda: ref.load_frame(root))
    for name in ("background_colour", "cooccurrence", "attribute_gaps", "counterfactual"):
        stage(f"cues.{name}", lambda n=name: getattr(cues, n)(df, so), lambda n=name: getattr(ref, n)(df, so),
              same_ev)
    stage("evidence.analyse (all of the above + per class)", lambda: evidence.analyse(df, so),
          lambda: ref.analyse(df, so), same_ev)

    def before_gate() -> Any:
        with mock.patch.object(gate, "load_frame", ref.load_frame), mock.patch.object(gate, "analyse", ref.analyse):
            return evaluate(root)

    def same_verdict(a: Any, b: Any) -> bool:
        return [(m.model, m.status, m.evidence.to_dict()) for m in a.models] == \
               [(m.model, m.status, m.evidence.to_dict()) for m in b.models]

    verdict = stage("gate.evaluate (whole gate, from disk)", lambda: evaluate(root), before_gate, same_verdict)
    res["verdict"] = {m.model: (m.status, [(c.check, c.status) for c in m.checks]) for m in verdict.models}
    df = None  # the dashboard reads its own frame
    res["dashboard"] = _dashboard_cold(root)
    load.append(os.getloadavg()[0])
    res["load_avg"] = max(load)
    res["gate_s"] = next(r["after_s"] for r in res["stages"] if r["stage"].startswith("gate.evaluate"))
    return res


def render_markdown(res: dict[str, Any]) -> str:
    lines = ["| stage | before (row-by-row) s | after s | speed-up | same result |", "|---|---|---|---|---|"]
    for r in res["stages"]:
        before = f"{r['before_s']:.2f}" if r["before_s"] is not None else "-"
        speed = f"{r['before_s'] / r['after_s']:.1f}x" if r["before_s"] is not None and r["after_s"] > 0 else "-"
        same = {True: "yes", False: "**no**", None: "-"}[r["identical"]]
        lines.append(f"| {r['stage']} | {before} | {r['after_s']:.2f} | {speed} | {same} |")
    dash = res.get("dashboard")
    if dash:
        lines.append(f"| dashboard cold load: overview (frame {dash['frame']:.2f} s + verdict "
                     f"{dash['verdict']:.2f} s) | - | {dash['overview']:.2f} | - | - |")
        lines.append(f"| dashboard model page (histogram {dash['histogram']:.2f} s, colour plot "
                     f"{dash['bg_points']:.2f} s, rows {dash['model_rows']:.2f} s, gallery {dash['gallery']:.2f} s) "
                     f"| - | {dash['model_page']:.2f} | - | - |")
    lines.append("")
    built = f"built in {res['built_s']:.0f} s" if res["built_s"] else "cached"
    lines.append(f"{res['rows']:,} rows of one model in {res['parts']} parts of {PART_ROWS} rows ({built}, "
                 f"`{res['root']}`); single runs after one untimed read (warm file cache), peak 1-min load average "
                 f"{res['load_avg']:.1f}. *Before* is `tests/bench/reference.py` (the pre-optimisation code, kept as the "
                 "oracle) on the same frame; "
                 "*same result* compares the evidence JSON exactly. Verdict: "
                 + "; ".join(f"`{m}` {s} ({', '.join(f'{c} {v}' for c, v in checks)})"
                             for m, (s, checks) in res["verdict"].items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-reference", action="store_true", help="skip timing the row-by-row reference")
    args = parser.parse_args()
    print(render_markdown(run_aggregate_bench(args.rows, reference=not args.no_reference)))
