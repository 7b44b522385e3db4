"""Model page: per-class evidence, the object-share distribution, co-occurrence, background colour, checks."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.views.common import Ctx, badge, model_picker, style_status
from dashboard.views.review import finding_review_form
from pipeline.triage import TITLES, mark_state


def render(ctx: Ctx) -> None:
    st.header("Model")
    model = model_picker(ctx, "model_page_model")
    mv = ctx.model(model)
    ev = mv.evidence
    st.markdown(f"### {model}: {badge(mv.status)}")
    hw = f"{ev.cam_hw[0]}x{ev.cam_hw[1]}" if ev.cam_hw else "-"
    st.caption(f"{ev.images} images, {ev.overall.scored} scored, {ev.errors} error rows · layer "
               f"{ev.feature_layer or '-'} ({hw} map) · runs {', '.join(ev.run_ids) or '-'}")
    if ev.overall.scored == 0:
        st.warning(f"`{model}` has no scored images: all {ev.errors} rows are errors "
                   f"({', '.join(f'{k}: {n}' for k, n in ev.errors_by_kind.items()) or 'none'}).")
        _error_rows(ctx, model)
        return
    _classes(mv)
    _checks(ctx, mv)
    _distribution(ctx, model)
    _cooccurrence(ev)
    _bg_colour(ctx, mv)
    _error_rows(ctx, model)


def _classes(mv) -> None:
    st.subheader("Per class")
    df = data.class_table(mv)
    fmt = {c: "%.3f" for c in ("object share", "object lift", "object area")}
    fmt |= {c: "percent" for c in ("pointing", "BG-gap", "accuracy")}
    cfg = {c: st.column_config.NumberColumn(c, format=f) for c, f in fmt.items()}
    st.dataframe(style_status(df, ["status", "class"]), hide_index=True, width="stretch", column_config=cfg)
    st.caption("Click a header to sort. Status: the worst class-level finding over the checks "
               "(SKIP: too few images for a confident call).")


def _checks(ctx: Ctx, mv) -> None:
    st.subheader("Checks")
    dec = data.decisions(ctx.root)
    fp = data.cached_fingerprints(ctx.root, ctx.ver).get(mv.model, "")
    state = mark_state(dec, mv.model, fp, kind="finding")
    for r in mv.checks:
        with st.expander(f"{r.status} · {r.title}", expanded=r.status in ("FAIL", "ERROR")):
            st.markdown(f"{badge(r.status)} `{r.check}`: {r.message or '-'}")
            st.caption(f"statistic {r.statistic}; flags when {r.direction} warn {r.warn:g} / fail {r.fail:g} "
                       f"(whole CI beyond); severity {r.severity}")
            if r.findings:
                f = pd.DataFrame([{"scope": x.scope, "statistic": x.statistic, "estimate": x.estimate.fmt(),
                                   "status": x.status, "review": _review_of(state, f"{r.check}/{x.scope}"),
                                   "note": x.note} for x in r.findings])
                st.dataframe(style_status(f, ["status"]), hide_index=True, width="stretch")
            if fp:
                finding_review_form(ctx, mv.model, fp, r, state)
            ids = data.check_images([r]).get(r.check, [])
            if ids:
                st.markdown("Example images: " + ", ".join(f"`{x}`" for x in ids[:12]))
                st.button("Show these images in the explorer", key=f"goto_{r.check}", on_click=_goto_explorer,
                          args=(mv.model, r.check))


def _review_of(state: pd.DataFrame | None, subject: str) -> str:
    if state is None or subject not in state.index:
        return ""
    d = state.loc[subject, "decision"]
    return TITLES[d] if isinstance(d, str) else ""


def _goto_explorer(model: str, check: str) -> None:
    st.session_state["page"] = "Image explorer"
    st.session_state["explorer_model"] = model
    st.session_state["explorer_check"] = check


def _distribution(ctx: Ctx, model: str) -> None:
    st.subheader("Object share distribution")
    h = data.cached_histogram(ctx.root, ctx.ver, model)
    if h.images.sum() == 0:
        st.info("No image has an object share (no object annotations for the labels?).")
        return
    bars = alt.Chart(h).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("start:Q", bin="binned", title="fraction of the view (CAM mass or area)",
                scale=alt.Scale(domain=[0, 1])),
        x2="end:Q", y=alt.Y("images:Q", title="images", stack=None),
        color=alt.Color("quantity:N", title=None, legend=alt.Legend(orient="top", labelLimit=400)),
        tooltip=["quantity", alt.Tooltip("start:Q", format=".2f"), alt.Tooltip("end:Q", format=".2f"),
                 "images"])
    st.altair_chart(bars, width="stretch")
    st.caption("A model looking at the object puts more CAM mass on it than its area (bars right of the "
               "outline); a model reading the background piles up near 0.")


def _cooccurrence(ev) -> None:
    st.subheader("Co-occurring objects")
    df = data.cooccurrence_table(ev)
    if df.empty:
        st.info("No other annotated categories appear with the labelled objects.")
        return
    heat = alt.Chart(df).mark_rect().encode(
        x=alt.X("category:N", title="other annotated category"), y=alt.Y("class:N", title="class (label)"),
        color=alt.Color("CAM mass:Q", scale=alt.Scale(scheme="orangered", domain=[0, 1])),
        tooltip=["class", "category", alt.Tooltip("CAM mass:Q", format=".3f"),
                 alt.Tooltip("lift:Q", format=".3f"), "images with it", alt.Tooltip("rate:Q", format=".0%"),
                 "signals"])
    text = alt.Chart(df).mark_text(baseline="middle").encode(
        x="category:N", y="class:N", text=alt.Text("CAM mass:Q", format=".2f"))
    st.altair_chart(heat + text, width="stretch")
    co = ev.cooccurrence
    if co.associations:
        assoc = ", ".join(f"{k} -> {v}" for k, v in sorted(co.associations.items()))
        st.caption(f"Associations (category -> class it signals): {assoc}. Accuracy aligned "
                   f"{co.acc_aligned.fmt(True)} vs conflicting {co.acc_conflicting.fmt(True)}.")


def _bg_colour(ctx: Ctx, mv) -> None:
    st.subheader("Background colour")
    b = mv.evidence.bg_colour
    pts = data.cached_bg_points(ctx.root, ctx.ver, mv.model)
    if pts is None:
        st.info("No background colours measured (needs labelled images of two or more classes with object "
                "annotations).")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("accuracy, colour aligned", _pct(b.acc_aligned), help=b.acc_aligned.fmt(True))
    c2.metric("accuracy, colour conflicting", _pct(b.acc_conflicting), help=b.acc_conflicting.fmt(True))
    c3.metric("colour predicts the label", f"{b.predictiveness:.0%}", help=f"chance {b.chance:.0%}")
    sel = alt.selection_point(fields=["label"], bind="legend")
    points = alt.Chart(pts.points).mark_point(filled=True, size=40).encode(
        x=alt.X("pc1:Q", title="background colour, principal axis 1"),
        y=alt.Y("pc2:Q", title="principal axis 2"),
        color=alt.Color("label:N", title="label"),
        shape=alt.Shape("aligned:N", title="colour cue", scale=alt.Scale(range=["circle", "triangle-up"])),
        opacity=alt.condition(sel, alt.value(0.8), alt.value(0.1)),
        tooltip=["image_id", "label", "pred", "cue", "aligned", "correct"]).add_params(sel)
    cent = alt.Chart(pts.centroids).mark_point(shape="cross", size=300, strokeWidth=3, color="black").encode(
        x="pc1:Q", y="pc2:Q", tooltip=["label", "colour"])
    names = alt.Chart(pts.centroids).mark_text(dy=-14, fontWeight="bold").encode(
        x="pc1:Q", y="pc2:Q", text="label:N")
    st.altair_chart(points + cent + names, width="stretch")
    st.caption(f"Each point is an image's mean background colour (RGB projected on its 2 principal axes, "
               f"{pts.explained:.0%} of the variance); crosses are the class centroids. Conflicting: the "
               f"nearest centroid is another class's. Gap aligned - conflicting: {b.gap.fmt(True)}; "
               f"{b.follow_rate.fmt(True)} of conflicting images are predicted as the colour's class.")


def _pct(e) -> str:
    return f"{e.value:.1%}" if e.ok else "n/a"


def _error_rows(ctx: Ctx, model: str) -> None:
    mine = data.cached_model_rows(ctx.root, ctx.ver, model)
    n = mine.rows - mine.scored
    if n == 0:
        return
    with st.expander(f"{n} error rows"):
        if n > len(mine.errors):
            st.caption(f"The first {len(mine.errors)}.")
        st.dataframe(mine.errors, hide_index=True, width="stretch")
