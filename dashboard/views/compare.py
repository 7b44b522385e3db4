"""Compare: two models, or one model at two runs (``as_of``), on the same classes and images."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.views.common import Ctx, badge, figures, fmt_row_caption, show_figure

SHOWN = 4
MODELS, RUNS = "two models", "one model at two runs"


def render(ctx: Ctx) -> None:
    st.header("Compare")
    mode = st.radio("Compare", [MODELS, RUNS], key="compare_mode", horizontal=True)
    if mode == MODELS:
        _models(ctx)
    else:
        _runs(ctx)


def _models(ctx: Ctx) -> None:
    names = ctx.models
    if len(names) < 2:
        st.info(f"These results hold {len(names)} model: comparing needs two.")
        return
    # Default: the worst model against the best one that has scored images.
    rank = {"FAIL": 0, "WARN": 1, "PASS": 2}
    scored = [m for m in ctx.verdict.models if m.evidence.overall.scored]
    by = sorted(scored, key=lambda m: rank.get(m.status, 3))
    first = by[0].model if by else names[0]
    second = next((m.model for m in reversed(by) if m.model != first), next(n for n in names if n != first))
    c1, c2 = st.columns(2)
    a = c1.selectbox("Model A", names, index=names.index(first), key="compare_a")
    b = c2.selectbox("Model B", names, index=names.index(second), key="compare_b")
    if a == b:
        st.info("Choose two different models.")
        return
    ma, mb = ctx.model(a), ctx.model(b)
    c1.markdown(f"**{a}**: {badge(ma.status)}")
    c2.markdown(f"**{b}**: {badge(mb.status)}")
    _side_by_side(ctx, ma.evidence, mb.evidence, (None, a), (None, b), a, b)


def _runs(ctx: Ctx) -> None:
    names = ctx.models
    runs = [r for r in ctx.runs if r.models]
    if len(runs) < 2:
        st.info(f"{len(runs)} run in these results: comparing runs needs two.")
        return
    model = st.selectbox("Model", names, key="compare_run_model")
    ids = [r.run_id for r in runs if model in r.models]
    if len(ids) < 2:
        st.info(f"`{model}` was audited by {len(ids)} run: comparing runs needs two.")
        return
    c1, c2 = st.columns(2)
    ra = c1.selectbox("Run A (as of)", ids, index=len(ids) - 2, key="compare_run_a")
    rb = c2.selectbox("Run B (as of)", ids, index=len(ids) - 1, key="compare_run_b")
    ea = data.cached_evidence(ctx.root, ctx.ver, ra, model, ctx.policy)
    eb = data.cached_evidence(ctx.root, ctx.ver, rb, model, ctx.policy)
    if ea.images == 0 or eb.images == 0:
        st.info(f"`{model}` has no result rows as of run {ra if ea.images == 0 else rb}.")
        return
    st.caption("Each side is the results as the run saw them: rows scored by that run or earlier, with the "
               "model fingerprint of the latest run up to it.")
    _side_by_side(ctx, ea, eb, (ra, model), (rb, model), f"{model} @ {ra}", f"{model} @ {rb}",
                  same_model=True)


Side = tuple[str | None, str]  # (as_of run id, or None for the current results; model)


def _side_by_side(ctx: Ctx, ea, eb, side_a: Side, side_b: Side, name_a: str, name_b: str,
                  same_model: bool = False) -> None:
    st.subheader("Per class (Δ = B - A)")
    d = data.class_deltas(ea, eb)
    pct = {c: st.column_config.NumberColumn(c, format="percent") for c in d.columns if "accuracy" in c}
    num = {c: st.column_config.NumberColumn(c, format="%.3f") for c in d.columns
           if ("share" in c or "lift" in c)}
    st.dataframe(d, hide_index=True, width="stretch", column_config={**num, **pct})
    st.subheader("The same images side by side")
    pairs, total = data.cached_pairs(ctx.root, ctx.ver, *side_a, *side_b)
    if pairs.empty:
        st.info("No image is scored on both sides.")
        return
    classes = sorted(pairs.label_a.dropna().astype(str).unique())
    labels = st.multiselect("Class", classes, key="compare_labels")
    if labels:
        pairs = pairs[pairs.label_a.isin(labels)]
    if pairs.empty:
        st.info("No shared image of these classes.")
        return
    if total > len(pairs):
        st.caption(f"The {len(pairs)} images with the largest differences of the {total} both sides scored.")
    biggest = "(largest differences)"
    pick = st.selectbox("Image (largest object-share difference first)", [biggest, *pairs.image_id],
                        key="compare_image")
    shown = pairs.head(SHOWN) if pick == biggest else pairs[pairs.image_id == pick]
    rows_a, rows_b = _side(shown, "_a"), _side(shown, "_b")
    figs_a = figures(ctx, side_a[1], rows_a, max_side=200)
    figs_b = figures(ctx, side_b[1], rows_b, max_side=200)
    ca, cb = st.columns(2)
    ca.markdown(f"**A: {name_a}**")
    cb.markdown(f"**B: {name_b}**")
    for (_, ra), (_, rb), fa_, fb_ in zip(rows_a.iterrows(), rows_b.iterrows(), figs_a, figs_b, strict=True):
        ca, cb = st.columns(2)
        with ca:
            show_figure(fa_, fmt_row_caption(ra))
        with cb:
            show_figure(fb_, fmt_row_caption(rb))
        if same_model and ra.run_id == rb.run_id and ra.model_fingerprint == rb.model_fingerprint:
            st.caption(f"{ra.image_id}: the same stored row on both sides (run B did not rescore it).")


def _side(pairs: pd.DataFrame, suffix: str) -> pd.DataFrame:
    cols = {c: c.removesuffix(suffix) for c in pairs.columns if c.endswith(suffix)}
    return pairs[["image_id", *cols]].rename(columns=cols)
