"""Seconds for the dashboard's image explorer over a million result rows: index, filter, sort, page, export.

Uses the aggregate section's synthetic results (:func:`bench.aggregate.build_results`: one model, ten
classes, attributes, counterfactual columns, a few error rows, cached under ``.cueaudit/bench/``).
Each explorer interaction is what a rerun of the page computes for a new filter or sort: one
:func:`dashboard.explore.select` over the model's rows (the model's index is built once per results
version), the review filter, the page's rows and the CAMs of the page's images from Parquet.

    python -m bench.explorer --rows 1000000      # prints markdown
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.aggregate import CACHE, MODEL, build_results

log = logging.getLogger(__name__)

TARGET_S = 1.0  # an interaction (filter + sort + review filter + page) should answer within a second
PAGE_SIZE = 12
MARKED = 1000  # images with a review decision


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def cases() -> list[tuple[str, Any]]:
    from dashboard.explore import FLIPPED, Filters

    return [
        ("scored rows, worst object share first (the default)", Filters()),
        ("wrong predictions, prediction score descending", Filters(correct="wrong", sort="pred_score",
                                                                   descending=True)),
        ("two classes, object lift in [0, 0.2], by background share",
         Filters.make({"label": ["cat", "dog"]}, {"object_lift": (0.0, 0.2)}, sort="background_share")),
        ("Mixed-Rand flipped and attribute cue_aligned = no, by object lift",
         Filters.make({"cf_rand_flip": [FLIPPED], "attr:cue_aligned": ["no"]}, sort="object_lift")),
        ("all rows, error kind decode_error, by image id", Filters.make({"error_kind": ["decode_error"]},
                                                                        rows="all", sort="image_id")),
        ("all rows by image id, descending", Filters(rows="all", sort="image_id", descending=True)),
    ]


def run_explorer_bench(rows: int = 1_000_000, cache: Path = CACHE, repeats: int = 3) -> dict[str, Any]:
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # "no runtime found": expected outside `streamlit run`
    from dashboard import data, export
    from dashboard.explore import Filters, model_view, page, review_filter, select
    from pipeline.analysis.frame import load_frame

    root, built = build_results(rows, cache)
    out: dict[str, Any] = {"rows": rows, "repeats": repeats, "built_s": built, "stages": [], "cases": []}
    load_frame(root, columns=("model",))  # warm the file cache, as the aggregate section does
    t_frame, frame = _timed(lambda: load_frame(root))
    t_view, view = _timed(lambda: model_view(frame, MODEL))
    out["stages"] += [{"stage": "load_frame (the dashboard's shared frame, once per results version)", "s": t_frame},
                      {"stage": "model_view (the model's filter index, once per results version)", "s": t_view}]
    t_codes, _ = _timed(lambda: view.codes("image_id"))
    out["stages"].append({"stage": "image id sort codes (once, at the first sort by image id)", "s": t_codes})
    for name, f in cases():
        t, order = _timed(lambda f=f: select(view, f), repeats)
        out["cases"].append({"case": name, "s": t, "matched": len(order)})
    base = select(view, Filters())
    ids = frame.image_id.to_numpy()[base]
    rng = np.random.default_rng(0)
    marks = {"label_error": list(ids[rng.choice(len(ids), MARKED // 2, replace=False)]),
             "fine": list(ids[rng.choice(len(ids), MARKED // 2, replace=False)])}
    t_rev, unrev = _timed(lambda: review_filter(frame, base, marks, ["unreviewed"]), repeats)
    t_page, rows_ = _timed(lambda: frame.iloc[page(unrev, 2, PAGE_SIZE)], repeats)
    keys = [data.row_key(r) for _, r in rows_.iterrows()]
    t_loc, where = _timed(lambda: data.locate(root, MODEL))
    t_cam, got = _timed(lambda: data.fetch_details(root, MODEL, keys, where), repeats)
    t_scan, _ = _timed(lambda: data.fetch_details(root, MODEL, keys))
    assert len(got) == len(keys), "every image of the page has its stored row"
    out["stages"] += [
        {"stage": "part-file index: image id -> file (once per results version)", "s": t_loc},
        {"stage": f"review filter: unreviewed among {len(base):,} ({MARKED:,} marked)", "s": t_rev},
        {"stage": f"the page's rows ({PAGE_SIZE})", "s": t_page},
        {"stage": f"the page's CAMs from the files that hold them ({PAGE_SIZE} images)", "s": t_cam},
        {"stage": f"(without the index: every part file scanned for the {PAGE_SIZE} ids)", "s": t_scan},
    ]
    wrong = select(view, Filters(correct="wrong"))
    t_table, table = _timed(lambda: export.table(frame, view, wrong))
    t_csv, blob = _timed(lambda: export.to_csv(table))
    out["export"] = {"rows": len(wrong), "table_s": t_table, "csv_s": t_csv, "csv_mib": len(blob) / 2**20}
    slowest = max(out["cases"], key=lambda c: c["s"])
    out["interaction_s"] = slowest["s"] + t_rev + t_page + t_cam
    out["t"] = {"frame": t_frame, "view": t_view, "locate": t_loc, "cam": t_cam, "scan": t_scan}
    out["slowest"] = slowest["case"]
    return out


def render_markdown(res: dict[str, Any]) -> str:
    lines = ["| stage | seconds | rows matched |", "|---|---|---|"]
    for s in res["stages"]:
        lines.append(f"| {s['stage']} | {s['s']:.3f} | - |")
    for c in res["cases"]:
        lines.append(f"| select: {c['case']} | {c['s']:.3f} | {c['matched']:,} |")
    e = res["export"]
    lines.append(f"| export table of the wrong predictions | {e['table_s']:.2f} | {e['rows']:,} |")
    lines.append(f"| ... as CSV ({e['csv_mib']:.0f} MiB) | {e['csv_s']:.2f} | {e['rows']:,} |")
    lines.append("")
    lines.append(f"{res['rows']:,} rows of one model (the aggregate section's synthetic results); select, review "
                 f"filter, page and CAM fetch are medians of {res['repeats']} runs.")
    return "\n".join(lines)


def interpret(res: dict[str, Any]) -> str:
    cases = res["cases"]
    lo, hi = min(c["s"] for c in cases), max(c["s"] for c in cases)
    within = "within" if res["interaction_s"] <= TARGET_S else "over"
    e = res["export"]
    t = res["t"]
    return (f"Over {res['rows']:,} rows a new filter or sort takes {lo:.2f}-{hi:.2f} s "
            f"(slowest: {res['slowest']}); with the review filter, the page's rows and its CAMs read from Parquet "
            f"an interaction answers in {res['interaction_s']:.2f} s, {within} the {TARGET_S:.0f} s budget. "
            f"The one-off costs per results version are the shared frame ({t['frame']:.1f} s, the overview "
            f"pays it too), the model's filter index ({t['view']:.1f} s: strings to categoricals, the "
            f"attribute maps to columns) and the part-file index ({t['locate']:.1f} s), which lets a page read "
            f"its CAMs from the files that hold them ({t['cam']:.2f} s) instead of scanning every part "
            f"({t['scan']:.2f} s). Streamlit caches a selection per filter, so paging through it costs "
            f"only the page. Exporting the {e['rows']:,} wrong predictions takes {e['table_s']:.1f} s for the "
            f"table and {e['csv_s']:.1f} s for {e['csv_mib']:.0f} MiB of CSV, generated when the button is "
            f"clicked.")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.explorer", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--cache", type=Path, default=CACHE)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = run_explorer_bench(a.rows, a.cache)
    print(render_markdown(res) + "\n\n" + interpret(res))


if __name__ == "__main__":
    main()
