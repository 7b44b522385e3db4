"""Review: marking images and findings (``confirmed cue``, ``label error``, ``fine``, a note), and the page
that lists every decision. Decisions live in :mod:`pipeline.triage`'s SQLite store beside the results."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.views.common import Ctx
from pipeline.triage import (
    CLEAR,
    DECISIONS,
    TITLES,
    ReviewError,
    ReviewStore,
    default_reviewer,
    finding_subject,
    summarise,
)

CHOICES = (*DECISIONS, CLEAR)


def reviewer_input() -> None:
    """The sidebar's reviewer name (kept for the session; recorded with every decision)."""
    if "reviewer" not in st.session_state:
        st.session_state["reviewer"] = default_reviewer()
    st.sidebar.text_input("Reviewer", key="reviewer", help="Recorded with each decision you make.")


def _flash(key: str) -> None:
    msg = st.session_state.pop(key, None)
    if msg:
        kind, text = msg
        (st.success if kind == "ok" else st.error)(text)


def _save(root: str, kind: str, model: str, subject: str, fingerprint: str, prefix: str) -> None:
    """Button callback: write the decision in the form's widgets, report in ``<prefix>_flash``."""
    decision = st.session_state.get(f"{prefix}_decision")
    note = st.session_state.get(f"{prefix}_note", "") or ""
    try:
        ReviewStore(data.review_path(root)).mark(kind, model, subject, fingerprint, decision, note,
                                                 reviewer=st.session_state.get("reviewer") or "")
    except (ReviewError, ValueError) as e:
        st.session_state[f"{prefix}_flash"] = ("error", f"Not saved: {e}")
        return
    st.session_state[f"{prefix}_note"] = ""
    what = "withdrawn" if decision == CLEAR else f"marked {TITLES[decision]}"
    st.session_state[f"{prefix}_flash"] = ("ok", f"`{subject}` {what}.")


def _standing(state: pd.DataFrame, subject: str) -> str:
    if subject not in state.index:
        return "not reviewed"
    r = state.loc[subject]
    if isinstance(r.get("decision"), str):
        who = f" by {r['reviewer']}" if r.get("reviewer") else ""
        note = f": {r['note']}" if r.get("note") else ""
        return f"**{TITLES[r['decision']]}**{who}, {str(r['decided_at'])[:16]}{note}"
    return (f"not reviewed under this fingerprint; under an older one (`{str(r['older_fingerprint'])[:12]}`, "
            f"{str(r['older_decided_at'])[:10]}) it was **{TITLES.get(r['older_decision'], r['older_decision'])}**"
            " (not carried over: the model changed)")


def _form(ctx: Ctx, kind: str, model: str, subject: str, fingerprint: str, prefix: str) -> None:
    c1, c2, c3 = st.columns([4, 3, 1])
    c1.radio("Decision", CHOICES, key=f"{prefix}_decision", horizontal=True,
             format_func=lambda d: "clear" if d == CLEAR else TITLES[d])
    c2.text_input("Note", key=f"{prefix}_note", placeholder="why (needed for 'note')")
    c3.button("Save decision", key=f"{prefix}_save", on_click=_save,
              args=(ctx.root, kind, model, subject, fingerprint, prefix), type="primary")
    _flash(f"{prefix}_flash")


def image_review_form(ctx: Ctx, model: str, image_id: str, fingerprint: str, state: pd.DataFrame) -> None:
    """The opened image's review: its standing decision and a form to change it."""
    st.markdown(f"Review of `{image_id}`: {_standing(state, image_id)}")
    _form(ctx, "image", model, image_id, fingerprint, "review")


def finding_review_form(ctx: Ctx, model: str, fingerprint: str, check: Any, state: pd.DataFrame) -> None:
    """A check's review form (the whole check or one finding); ``state`` is
    :func:`pipeline.triage.mark_state` of the model's findings."""
    subjects = [finding_subject(check.check), *[finding_subject(check.check, f.scope) for f in check.findings]]
    key = f"finding_{check.check}"
    if st.session_state.get(f"{key}_subject") not in subjects:
        st.session_state[f"{key}_subject"] = subjects[0]
    sub = st.selectbox("Review", subjects, key=f"{key}_subject",
                       format_func=lambda s: "the whole check" if "/" not in s else f"finding {s.split('/', 1)[1]}")
    st.markdown(f"`{sub}`: {_standing(state, sub)}")
    _form(ctx, "finding", model, sub, fingerprint, key)


def render(ctx: Ctx) -> None:
    st.header("Review")
    path = data.review_path(ctx.root)
    where = path.parent if not path.exists() else path
    writable = os.access(where, os.W_OK)
    st.caption(f"Decisions: `{path}`" + ("" if writable else " (read-only here: set CUEAUDIT_REVIEW_DB or "
                                                             "`--review-db` to a writable file to review)"))
    dec = data.decisions(ctx.root)
    if dec.empty:
        st.info("No decisions yet: mark images in the image explorer and findings on the model page.")
        return
    fps = data.cached_fingerprints(ctx.root, ctx.ver) if ctx.verdict is not None else {}
    st.subheader("Per model (current fingerprint)")
    rows = []
    for m, r in summarise(dec, fps).items():
        rows.append({"model": m, "fingerprint": r.fingerprint[:12],
                     "findings confirmed": r.findings.get("confirmed_cue", 0),
                     "findings fine": r.findings.get("fine", 0),
                     **{f"images {TITLES[d]}": r.images.get(d, 0) for d in DECISIONS},
                     "older fingerprint": r.older, "summary": r.sentence()})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.subheader("Decisions")
    c1, c2, c3 = st.columns([2, 2, 1])
    models = c1.multiselect("Model", sorted(dec.model.unique()), key="review_models")
    kinds = c2.multiselect("Kind", ["image", "finding"], key="review_kinds")
    history = c3.toggle("History", key="review_history", help="Every decision ever made, not only the standing ones.")
    d = data.decisions_history(ctx.root) if history else dec
    if models:
        d = d[d.model.isin(models)]
    if kinds:
        d = d[d.kind.isin(kinds)]
    d = d.assign(fingerprint_state=[("current" if fps.get(m) == fp else f"older ({fp[:12]})")
                                    for m, fp in zip(d.model, d.fingerprint, strict=True)],
                 decision=d.decision.map(lambda x: TITLES.get(x, x)))
    cols = ["model", "kind", "subject", "decision", "note", "reviewer", "decided_at", "fingerprint_state"]
    st.dataframe(d[cols], hide_index=True, width="stretch")
    st.download_button("Decisions as CSV", d[[*cols, "fingerprint"]].to_csv(index=False).encode(),
                       file_name="cueaudit-review.csv", mime="text/csv", key="review_csv")
    images = d[(d.kind == "image") & (d.fingerprint_state == "current")]
    if len(images):
        pick = st.selectbox("Open a reviewed image in the explorer", list(zip(images.model, images.subject,
                                                                               strict=True)),
                            key="review_open", format_func=lambda t: f"{t[0]} · {t[1]}")
        st.button("Open in the explorer", key="review_goto", on_click=_goto, args=pick)


def _goto(model: str, image_id: str) -> None:
    st.session_state["page"] = "Image explorer"
    st.session_state["explorer_model"] = model
    st.session_state["explorer_selected"] = image_id
