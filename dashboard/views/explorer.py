"""Image explorer: filter on any result column, sort, page through every image, review, export."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import data, export
from dashboard.composites import composites, construction
from dashboard.explore import (
    ATTR,
    CATEGORICAL,
    NUMERIC,
    SORT_TEXT,
    Filters,
    ModelView,
    page,
    pages,
    review_filter,
)
from dashboard.views.common import Ctx, figures, fmt_row_caption, model_picker, show_figure
from dashboard.views.review import image_review_form
from pipeline.triage import DECISIONS, TITLES, mark_state

PAGE_SIZE = 12
COLUMNS = 3
NONE = "(none)"
ANY = "(any)"
UNREVIEWED = "unreviewed"
FIFTYONE_MAX = 2000  # larger selections: python -m dashboard.export --format fiftyone
SORT_TITLES = {**NUMERIC, "image_id": "image id", "label": "label", "pred": "predicted class"}


def render(ctx: Ctx) -> None:
    st.header("Image explorer")
    model = model_picker(ctx, "explorer_model")
    mv = ctx.model(model)
    mine = data.cached_model_rows(ctx.root, ctx.ver, model)
    view = data.cached_view(ctx.root, ctx.ver, None, model)
    frame = ctx.frame()
    f = _filters(ctx, view, mv)
    order = data.cached_selection(ctx.root, ctx.ver, None, model, f)
    dec = data.decisions(ctx.root)
    marks = data.image_marks(dec, model, view.fingerprint)
    wanted = st.session_state.get("explorer_review") or []
    order = review_filter(frame, order, marks, wanted)
    state = mark_state(dec, model, view.fingerprint)
    total = len(order)
    if total == 0:
        st.info(f"No images of `{model}` match these filters" if mine.rows
                else f"`{model}` has no result rows yet.")
        if not mine.scored:
            st.info(f"`{model}` has no scored images yet ({mine.rows} error rows).")
        _open_any(ctx, model, view, frame, state)
        return
    _exports(ctx, model, view, frame, order, state)
    _open_any(ctx, model, view, frame, state, order)
    n_pages = pages(total, PAGE_SIZE)
    shown = (model, f, tuple(wanted))
    if st.session_state.get("explorer_shown") != shown:  # another selection starts on its first page
        st.session_state["explorer_shown"] = shown
        st.session_state["explorer_page"] = 1
    if not 1 <= st.session_state.get("explorer_page", 1) <= n_pages:
        st.session_state["explorer_page"] = 1
    how = f"{SORT_TITLES.get(f.sort, f.sort)} {'descending' if f.descending else 'ascending'}"
    number = int(st.number_input(f"Page (of {n_pages}; {total} images, {how})", 1, n_pages, 1, key="explorer_page"))
    rows = frame.iloc[page(order, number, PAGE_SIZE)]
    figs = figures(ctx, model, rows, max_side=160)
    cols = st.columns(COLUMNS)
    for i, ((_, r), fig) in enumerate(zip(rows.iterrows(), figs, strict=True)):
        with cols[i % COLUMNS]:
            show_figure(fig, fmt_row_caption(r, _mark(state, r.image_id)))
            st.button("Open", key=f"open_{r.image_id}", on_click=_open, args=(str(r.image_id),))


# ---------------------------------------------------------------------------------------------
# Filters


def _filters(ctx: Ctx, view: ModelView, mv) -> Filters:
    by_check = data.check_images(mv.checks)
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    labels = c1.multiselect("Class", view.options("label") if "label" in view.cols else [], key="explorer_labels")
    preds = c2.multiselect("Predicted class", view.options("pred") if "pred" in view.cols else [],
                           key="explorer_preds")
    checks = [ANY, *by_check]
    if st.session_state.get("explorer_check") not in checks:
        st.session_state["explorer_check"] = ANY
    check = c3.selectbox("Images named by check", checks, key="explorer_check",
                         format_func=lambda c: c if c == ANY else f"{c} ({len(by_check[c])} images)")
    c4.multiselect("Review", [UNREVIEWED, *DECISIONS, data.OLDER], key="explorer_review",
                   format_func=lambda d: TITLES.get(d, d))
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    correct = c1.radio("Prediction", ["all", "correct", "wrong"], key="explorer_correct", horizontal=True)
    rows = c2.radio("Rows", ["scored", "errors", "all"], key="explorer_rows", horizontal=True,
                    help="Error rows (images that could not be scored) have an error kind instead of numbers.")
    keys = [k for k in SORT_TITLES if k in view.cols or k in SORT_TEXT]
    sort = c3.selectbox("Sort by", keys, key="explorer_sort", format_func=SORT_TITLES.get)
    descending = c4.toggle("Descending", key="explorer_desc", help="Images without the value come last.")
    cats: dict[str, list[str]] = {"label": labels, "pred": preds}
    ranges: dict[str, tuple[float, float]] = {}
    more = [c for c in view.numeric()] + [c for c in view.categorical() if c not in ("label", "pred")]
    with st.expander("More filters: scores, shares, lift, counterfactual flips, attributes, error kind, "
                     "metric note", expanded=bool(st.session_state.get("explorer_more"))):
        chosen = st.multiselect("Filter on", more, key="explorer_more", format_func=_title)
        for col in chosen:
            if col in NUMERIC:
                b = view.bounds(col)
                if b is None:
                    continue
                lo, hi = b
                got = st.slider(_title(col), lo, hi, (lo, hi), step=(hi - lo) / 200, key=f"explorer_range_{col}",
                                help="Images without this value are left out while the filter is on.")
                ranges[col] = (float(got[0]), float(got[1]))
            else:
                cats[col] = st.multiselect(_title(col), view.options(col), key=f"explorer_cat_{col}")
    ids = tuple(by_check[check]) if check != ANY else None
    return Filters.make(cats, ranges, rows=rows, correct=correct, image_ids=ids, sort=sort, descending=descending)


def _title(col: str) -> str:
    if col.startswith(ATTR):
        return f"attribute {col.removeprefix(ATTR)}"
    return NUMERIC.get(col) or CATEGORICAL.get(col) or col


def _mark(state: pd.DataFrame, image_id: str) -> str | None:
    if image_id not in state.index:
        return None
    r = state.loc[image_id]
    if isinstance(r.get("decision"), str):
        return r["decision"]
    return f"{TITLES.get(r['older_decision'], r['older_decision'])} (older fingerprint)"


# ---------------------------------------------------------------------------------------------
# One image


def _open(image_id: str) -> None:
    st.session_state["explorer_selected"] = image_id


def _open_any(ctx: Ctx, model: str, view: ModelView, frame: pd.DataFrame, state: pd.DataFrame,
              order: np.ndarray | None = None) -> None:
    """The opened image: any image of the model (a filter change does not close it)."""
    on_page = [] if order is None else [str(x) for x in frame.image_id.to_numpy()[
        page(order, st.session_state.get("explorer_page", 1), PAGE_SIZE)]]
    sel = st.session_state.get("explorer_selected", NONE)
    options = [NONE, *on_page, *([sel] if sel not in (NONE, *on_page) else [])]
    if sel not in options:
        st.session_state["explorer_selected"] = NONE
    chosen = st.selectbox("Open image", options, key="explorer_selected")
    if chosen == NONE:
        return
    hit = np.flatnonzero((view.cols["image_id"] == chosen).to_numpy())
    if not len(hit):
        st.warning(f"`{chosen}` is not an image of `{model}`.")
        return
    r = frame.iloc[view.pos[hit[0]]]
    st.subheader(f"{r.image_id}")
    (fig,) = figures(ctx, model, r.to_frame().T, max_side=512)
    show_figure(fig, fmt_row_caption(r, _mark(state, r.image_id)), large=True)
    _composites(ctx, model, view, frame, r)
    image_review_form(ctx, model, str(r.image_id), view.fingerprint, state)
    details = data.details_table(r)
    st.dataframe(details, hide_index=True, width="stretch", height=35 * (len(details) + 1) + 3)
    st.divider()


def _composites(ctx: Ctx, model: str, view: ModelView, frame: pd.DataFrame, r: pd.Series) -> None:
    """The counterfactual images this row was scored on, rebuilt from the source images (no torch)."""
    cols = [c for c in ("cf_rand_pred", "cf_same_pred", "cf_ctx_pred", "cf_ctrl_pred") if c in r.index]
    if not any(isinstance(r[c], str) and r[c] for c in cols):
        return
    with st.expander("Counterfactual images (rebuilt from the source images, masks and donors)"):
        donors = [str(r[c]) for c in ("cf_rand_donor", "cf_same_donor") if isinstance(r.get(c), str) and r[c]]
        keys = [data.row_key(r)]
        for d in donors:
            hit = np.flatnonzero((view.cols["image_id"] == d).to_numpy())
            if len(hit):
                keys.append(data.row_key(frame.iloc[view.pos[hit[0]]]))
        details = data.cached_details(ctx.root, ctx.ver, model, tuple(keys))
        mine = details.get(str(r.image_id))
        if mine is None:
            st.warning("the stored row was not found (results changed? reload)")
            return
        run = next((x for x in ctx.runs if x.run_id == r.run_id), None)
        dilation, seed = construction(run.config if run else None)
        panels = composites({**mine, **{c: r.get(c) for c in r.index if c.startswith("cf_")}},
                            {d: details[d] for d in donors if d in details}, ctx.roots, ctx.mask_roots,
                            dilation, seed)
        for col, p in zip(st.columns(len(panels)), panels, strict=True):
            if p.image is None:
                col.caption(f"{p.title}: {p.note}")
            else:
                col.image(p.image, caption=p.title, width="stretch")
        st.caption(f"prediction on the image: {r.pred}; counterfactuals built as the workers build them "
                   f"(object boxes dilated by {dilation:g}, seed {seed})")


# ---------------------------------------------------------------------------------------------
# Exports


def _exports(ctx: Ctx, model: str, view: ModelView, frame: pd.DataFrame, order: np.ndarray,
             state: pd.DataFrame) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"cueaudit-{model}-{stamp}"
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    c1.caption(f"{len(order)} of {len(view)} rows of `{model}` match. Export the selection:")
    c2.download_button("CSV", lambda: export.to_csv(export.table(frame, view, order, state)),
                       file_name=f"{name}.csv", mime="text/csv", key="export_csv", on_click="ignore")
    c3.download_button("Parquet", lambda: export.to_parquet(export.table(frame, view, order, state)),
                       file_name=f"{name}.parquet", mime="application/vnd.apache.parquet", key="export_parquet",
                       on_click="ignore")
    if len(order) <= FIFTYONE_MAX:
        def fo_zip() -> bytes:
            rows = frame.iloc[order].reset_index(drop=True)
            flips = export.table(frame, view, order)[[c for c in view.cols if c.endswith("_flip")]]
            rows = pd.concat([rows, flips], axis=1)
            return export.fiftyone_zip(
                rows, lambda ch: data.fetch_details(ctx.root, model, [data.row_key(r) for _, r in ch.iterrows()],
                                                    data.cached_locations(ctx.root, ctx.ver, model)),
                ctx.roots, state, name)

        c4.download_button("FiftyOne", fo_zip, file_name=f"{name}-fiftyone.zip", mime="application/zip",
                           key="export_fiftyone", on_click="ignore",
                           help="A zip of a FiftyOne dataset directory: images, labels, predictions, the CAM as "
                                "a heatmap. fo.Dataset.from_dir(DIR, dataset_type=fo.types.FiftyOneDataset)")
    else:
        c4.caption(f"FiftyOne: at most {FIFTYONE_MAX} images here; `python -m dashboard.export` for more.")
