"""Image explorer: a gallery, worst object share first, of original / outline / CAM overlay; one large."""

from __future__ import annotations

import math

import streamlit as st

from dashboard import data
from dashboard.views.common import Ctx, figures, fmt_row_caption, model_picker, show_figure

PAGE_SIZE = 12
COLUMNS = 3
NONE = "(none)"
ANY = "(any)"


def render(ctx: Ctx) -> None:
    st.header("Image explorer")
    model = model_picker(ctx, "explorer_model")
    mv = ctx.model(model)
    mine = data.cached_model_rows(ctx.root, ctx.ver, model)
    by_check = data.check_images(mv.checks)
    c1, c2, c3 = st.columns([2, 2, 1])
    labels = c1.multiselect("Class", mine.labels, key="explorer_labels")
    checks = [ANY, *by_check]
    if st.session_state.get("explorer_check") not in checks:
        st.session_state["explorer_check"] = ANY
    check = c2.selectbox("Images named by check", checks, key="explorer_check",
                         format_func=lambda c: c if c == ANY else f"{c} ({len(by_check[c])} images)")
    correct = c3.radio("Prediction", ["all", "correct", "wrong"], key="explorer_correct", horizontal=True)
    ids = tuple(by_check[check]) if check != ANY else None
    g, total = data.cached_gallery(ctx.root, ctx.ver, None, model, tuple(labels), ids, correct)
    if g.empty:
        st.info(f"No scored images of `{model}` match these filters" if mine.scored
                else f"`{model}` has no scored images yet ({mine.rows} error rows).")
        return
    if total > len(g):
        st.caption(f"Showing the worst {len(g)} of {total} images; filter by class, check or prediction "
                   "for the others.")
    options = [NONE, *g.image_id.astype(str)]
    if st.session_state.get("explorer_selected") not in options:
        st.session_state["explorer_selected"] = NONE
    chosen = st.selectbox("Open image", options, key="explorer_selected")
    if chosen != NONE:
        _large(ctx, model, g[g.image_id == chosen].iloc[0])
        st.divider()
    pages = max(1, math.ceil(len(g) / PAGE_SIZE))
    if not 1 <= st.session_state.get("explorer_page", 1) <= pages:
        st.session_state["explorer_page"] = 1
    page = int(st.number_input(f"Page (of {pages}; {total} images, worst object share first)", 1, pages, 1,
                               key="explorer_page"))
    rows = g.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    figs = figures(ctx, model, rows, max_side=160)
    cols = st.columns(COLUMNS)
    for i, ((_, r), fig) in enumerate(zip(rows.iterrows(), figs, strict=True)):
        with cols[i % COLUMNS]:
            show_figure(fig, fmt_row_caption(r))
            st.button("Open", key=f"open_{r.image_id}", on_click=_open, args=(str(r.image_id),))


def _open(image_id: str) -> None:
    st.session_state["explorer_selected"] = image_id


def _large(ctx: Ctx, model: str, r) -> None:
    st.subheader(f"{r.image_id}")
    (fig,) = figures(ctx, model, r.to_frame().T, max_side=512)
    show_figure(fig, fmt_row_caption(r), large=True)
    details = data.details_table(r)
    st.dataframe(details, hide_index=True, width="stretch", height=35 * (len(details) + 1) + 3)
