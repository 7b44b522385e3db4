"""The cueaudit dashboard (Streamlit). Start it with ``cueaudit dashboard RESULTS``.

Run directly: ``streamlit run dashboard/app.py -- RESULTS [--policy gate.yaml] [--review-db FILE]``. Tests, which
cannot pass script arguments, set ``CUEAUDIT_RESULTS`` (and optionally ``CUEAUDIT_POLICY``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from common.storage import as_path
from dashboard import ENV_POLICY, ENV_RESULTS, data
from dashboard.views import compare, explorer, model, overview, review
from dashboard.views import slices as slices_view
from dashboard.views.common import PAGES, Ctx, overlay_controls
from pipeline.config import ConfigError
from pipeline.schema import ResultsError, is_results_dir, part_files
from pipeline.triage import ENV_REVIEW_DB

RENDER = {"Overview": overview.render, "Model": model.render, "Image explorer": explorer.render,
          "Compare": compare.render, "Review": review.render, "Slices": slices_view.render}


def arguments() -> tuple[str | None, str | None]:
    """(results, policy) from ``streamlit run app.py -- RESULTS [--policy P]``, else the environment."""
    if sys.argv and Path(sys.argv[0]).resolve() == Path(__file__).resolve() and len(sys.argv) > 1:
        p = argparse.ArgumentParser(prog="cueaudit dashboard")
        p.add_argument("results")
        p.add_argument("--policy", default=None)
        p.add_argument("--review-db", default=None)
        args, _ = p.parse_known_args(sys.argv[1:])
        if args.review_db:
            os.environ[ENV_REVIEW_DB] = args.review_db
        return args.results, args.policy
    return os.environ.get(ENV_RESULTS) or None, os.environ.get(ENV_POLICY) or None


def context(root: str, policy: str | None) -> Ctx:
    ver = data.version(root)
    runs = data.cached_runs(root, ver)
    roots = data.run_roots(runs)
    masks = data.run_mask_roots(runs)
    if not part_files(root):
        return Ctx(root, ver, policy, runs, problem="no result files yet", roots=roots, mask_roots=masks)
    if not roots:
        frame = data.shared_frame(root, ver)
        roots = sorted({r for r in frame.dataset_root.dropna().unique() if r})
    try:
        verdict = data.cached_verdict(root, ver, policy)
    except (ResultsError, ConfigError) as e:
        return Ctx(root, ver, policy, runs, problem=str(e), roots=roots, mask_roots=masks)
    if not verdict.models:
        return Ctx(root, ver, policy, runs, roots=roots, mask_roots=masks,
                   problem="no result rows with the models' current fingerprints yet (a run of changed models "
                           "has started but written nothing)")
    return Ctx(root, ver, policy, runs, verdict=verdict, roots=roots, mask_roots=masks)


def main() -> None:
    st.set_page_config(page_title="cueaudit", page_icon="🔎", layout="wide")
    results, policy = arguments()
    st.sidebar.title("cueaudit")
    if not results:
        st.error(f"No results directory given. Start the dashboard with `cueaudit dashboard RESULTS` "
                 f"(or set {ENV_RESULTS}).")
        return
    root = str(as_path(results).expanduser().resolve())  # a directory, or an s3://... prefix as given
    st.sidebar.caption(f"Results: `{root}`" + (f"  \nPolicy: `{policy}`" if policy else ""))
    if not is_results_dir(root):
        st.error(f"`{root}` is not a cueaudit results directory (no `model=*/` part files, no `_runs/`). "
                 "Write one with `cueaudit run audit.yaml`.")
        return
    if st.session_state.get("page") not in PAGES:
        asked = st.query_params.get("page")
        st.session_state["page"] = asked if asked in PAGES else PAGES[0]
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.query_params["page"] = page
    st.sidebar.button("Reload results", help="Pick up parts written since the last view (cached by mtime).")
    review.reviewer_input()
    if page in ("Image explorer", "Compare"):
        overlay_controls()
    ctx = context(root, policy)
    if ctx.verdict is None:
        if page in ("Overview", "Review"):
            RENDER[page](ctx)
        st.info(f"Nothing to judge yet: {ctx.problem}. A run that is still starting has written no parts; "
                "reload when it has.")
        return
    RENDER[page](ctx)


main()
