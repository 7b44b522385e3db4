"""Overview: every run, every model's verdict, headline numbers with CIs, errors, the trend across runs."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.views.common import Ctx, badge, style_status
from pipeline.triage import summarise


def render(ctx: Ctx) -> None:
    st.header("Overview")
    _runs(ctx)
    if ctx.verdict is None:
        return
    _verdicts(ctx)
    _review(ctx)
    _headlines(ctx)
    _errors(ctx)
    _trend(ctx)


def _runs(ctx: Ctx) -> None:
    st.subheader("Runs")
    if not ctx.runs:
        st.info("No run records in `_runs/` (results written without `cueaudit run`?).")
        return
    table = data.runs_table(ctx.root, ctx.runs)
    st.dataframe(table, hide_index=True, width="stretch")
    for r in ctx.runs:
        state = data.run_state(ctx.root, r)
        if state.startswith("running"):
            st.warning(f"Run `{r.run_id}` is {state}: the numbers below are partial "
                       "(reload to pick up new parts).")
        elif state == "failed":
            st.warning(f"Run `{r.run_id}` failed: its models hold only the rows it wrote before it stopped.")


def _verdicts(ctx: Ctx) -> None:
    v = ctx.verdict
    assert v is not None
    st.subheader("Verdicts")
    (st.success if v.passed else st.error)(
        "Gate passed: no model fails a check." if v.passed
        else "Gate failed: " + ", ".join(m.model for m in v.models if m.status == "FAIL") + " failed.")
    checks = sorted({r.check for m in v.models for r in m.checks})
    rows = []
    for m in v.models:
        by = {r.check: r.status for r in m.checks}
        rows.append({"model": m.model, "verdict": m.status, **{c: by.get(c, "") for c in checks}})
    df = pd.DataFrame(rows, columns=["model", "verdict", *checks])
    st.dataframe(style_status(df, ["verdict", *checks]), hide_index=True, width="stretch")
    judged = {m.model for m in v.models}
    for name in sorted({n for r in ctx.runs for n in r.models} - judged):
        st.info(f"`{name}` has no result rows with its current fingerprint yet: it is not judged.")
    for m in v.models:
        st.markdown(f"**{m.model}**: {badge(m.status)}")
        if m.evidence.overall.scored == 0:
            st.warning(f"`{m.model}` has no scored images ({m.evidence.errors} error rows): every check is "
                       "skipped, so its verdict says nothing about the model.")
        for r in m.checks:
            if r.status in ("FAIL", "WARN", "ERROR"):
                (st.error if r.status in ("FAIL", "ERROR") else st.warning)(
                    f"{m.model} · {r.title} ({r.check}) {r.status}: {r.message}")


def _review(ctx: Ctx) -> None:
    dec = data.decisions(ctx.root)
    if dec.empty:
        return
    st.subheader("Review")
    fps = data.cached_fingerprints(ctx.root, ctx.ver)
    for m, r in summarise(dec, fps).items():
        if not r.empty:
            st.markdown(f"**{m}**: {r.sentence()}.")
    st.caption("Decisions by reviewers (the Review page lists them), counted for each model's current "
               "fingerprint; those made before the model changed are counted apart.")


def _headlines(ctx: Ctx) -> None:
    assert ctx.verdict is not None
    st.subheader("Headline numbers")
    st.caption("Mean [95% CI] (n). Object lift is chance-corrected: (share - area) / (1 - area); 0 is a "
               "uniform map, 1 all mass on the object. BG-gap: accuracy over a same-class background minus "
               "over another class's (counterfactual).")
    df = data.headline_table(ctx.verdict)
    st.dataframe(style_status(df, ["verdict"]), hide_index=True, width="stretch")


def _errors(ctx: Ctx) -> None:
    assert ctx.verdict is not None
    st.subheader("Error rows by kind")
    df = data.errors_table(ctx.verdict)
    if df.empty:
        st.success("No error rows: every image was scored.")
        return
    wide = df.pivot_table(index="model", columns="kind", values="rows", fill_value=0, aggfunc="sum")
    wide = wide.reset_index()
    st.dataframe(wide, hide_index=True, width="stretch")


def _trend(ctx: Ctx) -> None:
    st.subheader("Trend across runs")
    finished = [r for r in ctx.runs if r.status == "finished"]
    if len(finished) < 2:
        st.info(f"{len(finished)} finished run: the trend needs two or more runs of this audit.")
        return
    if len(finished) > data.TREND_MAX_RUNS:
        st.caption(f"The latest {data.TREND_MAX_RUNS} of {len(finished)} finished runs.")
    t = data.cached_trend(ctx.root, ctx.ver, ctx.policy)
    if t.empty:
        st.info("The finished runs hold no result rows yet.")
        return
    metric = st.selectbox("Metric", list(data.HEADLINES), index=2, key="trend_metric",
                          format_func=lambda k: data.HEADLINES[k][0])
    d = t[t.metric == metric].dropna(subset=["value"])
    if d.empty:
        st.info(f"No run measured {data.HEADLINES[metric][0]}.")
        return
    base = alt.Chart(d).encode(
        x=alt.X("finished:T", title="run finished"),
        color=alt.Color("model:N"),
        tooltip=["run", "model", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
                 alt.Tooltip("hi:Q", format=".3f"), "n"],
    )
    line = base.mark_line(point=True).encode(y=alt.Y("value:Q", title=data.HEADLINES[metric][0]))
    bars = base.mark_rule().encode(y="lo:Q", y2="hi:Q")
    st.altair_chart(line + bars, width="stretch")
