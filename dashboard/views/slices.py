"""Slices page: the clusters of a model's embeddings it gets wrong, judged, described, and shown as images.

The slices come with the verdict (``slice_gap``; :mod:`pipeline.analysis.slices`): per class, the
mixture components whose held-out accuracy falls below the rest of the class. A slice's grid shows
its most typical members (highest membership probability), its misclassified ones first when asked.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.views.common import (
    Ctx,
    badge,
    figures,
    fmt_row_caption,
    model_picker,
    show_figure,
    style_status,
)
from pipeline.analysis.slices import SliceEvidence

COLUMNS = 4
GRID = 12


def slice_table(ev: SliceEvidence, statuses: dict[str, str]) -> pd.DataFrame:
    """One row per reported slice, flagged first, then by held-out gap."""
    rows = [{"status": statuses.get(s.scope, "SKIP"), "class": s.label, "slice": s.scope.removeprefix("slice:"),
             "images": s.size, "held out": s.held_out, "accuracy": s.accuracy.value, "rest of class": s.rest.value,
             "gap [95% CI]": s.gap.fmt(), "what sets it apart": "; ".join(s.description)} for s in ev.slices]
    df = pd.DataFrame(rows, columns=["status", "class", "slice", "images", "held out", "accuracy", "rest of class",
                                     "gap [95% CI]", "what sets it apart"])
    rank = df.status.map({"FAIL": 0, "WARN": 1}).fillna(2)
    gap = pd.Series([s.gap.value for s in ev.slices], dtype=float)
    return df.assign(_r=rank, _g=-gap.fillna(0)).sort_values(["_r", "_g"], kind="stable").drop(columns=["_r", "_g"])


def spuriosity_table(ev: SliceEvidence) -> pd.DataFrame:
    return pd.DataFrame([{"class": s.label, "ranked by": s.by, "images per quantile": s.n, "top": s.top.value,
                          "bottom": s.bottom.value, "top - bottom [95% CI]": s.gap.fmt()} for s in ev.spuriosity])


def render(ctx: Ctx) -> None:
    st.header("Slices")
    st.caption("Groups of images the model gets wrong that nobody annotated: per class, clusters of the model's "
               "own embeddings (a mixture fitted with its correctness, as Domino does), judged on held-out images.")
    model = model_picker(ctx, "slices_model")
    mv = ctx.model(model)
    ev = mv.evidence.slices
    check = next((r for r in mv.checks if r.check == "slice_gap"), None)
    if check is not None:
        st.markdown(f"{badge(check.status)} `slice_gap`: {check.message or '-'}")
    if ev.n == 0:
        st.info(ev.note or "No embeddings in these results: audit with `embedding: {enabled: true}`.")
        return
    st.caption(f"{ev.n} images, {ev.classes} classes, `{ev.column}` ({ev.dims} dimensions)")
    if not ev.slices:
        st.info("No cluster is less accurate than the rest of its class on the fit half: no slice to show.")
        return
    statuses = {f.scope: f.status for f in (check.findings if check else [])}
    table = slice_table(ev, statuses)
    cfg = {c: st.column_config.NumberColumn(c, format="percent") for c in ("accuracy", "rest of class")}
    st.dataframe(style_status(table, ["status"]), hide_index=True, width="stretch", column_config=cfg)
    names = table.slice.tolist()
    if st.session_state.get("slices_selected") not in names:
        st.session_state["slices_selected"] = names[0]
    chosen = st.selectbox("Show a slice", names, key="slices_selected")
    _grid(ctx, model, next(s for s in ev.slices if s.scope == f"slice:{chosen}"), statuses)
    if ev.spuriosity:
        st.subheader("Spuriosity ranking")
        st.caption("Within each class, images ranked by off-object CAM mass or by the slice's direction; accuracy "
                   "of the top vs the bottom quantile (Moayeri et al. 2023). Context, not judged.")
        spur = spuriosity_table(ev)
        st.dataframe(spur, hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(c, format="percent") for c in ("top", "bottom")})


def _grid(ctx: Ctx, model: str, s, statuses: dict[str, str]) -> None:
    st.markdown(f"#### {s.label} #{s.cluster}: {badge(statuses.get(s.scope, 'SKIP'))}")
    st.markdown(f"{s.size} images ({s.held_out} held out): accuracy {s.accuracy.fmt(True)} vs the rest of "
                f"`{s.label}` {s.rest.fmt(True)}; gap {s.gap.fmt()}")
    for d in s.description:
        st.markdown(f"- {d}")
    wrong_first = st.toggle("Misclassified members first", value=True, key="slices_wrong_first")
    ids = list(dict.fromkeys([*s.examples, *s.members])) if wrong_first else s.members
    frame = ctx.frame()
    rows = frame[(frame.model == model) & frame.image_id.isin(ids)]
    present = set(rows.image_id)
    rows = rows.set_index("image_id", drop=False).reindex([i for i in ids if i in present]).head(GRID)
    if rows.empty:
        st.info("The slice's images are not in the current results (reload?).")
        return
    figs = figures(ctx, model, rows, max_side=160)
    cols = st.columns(COLUMNS)
    for i, ((_, r), fig) in enumerate(zip(rows.iterrows(), figs, strict=True)):
        with cols[i % COLUMNS]:
            show_figure(fig, fmt_row_caption(r))
