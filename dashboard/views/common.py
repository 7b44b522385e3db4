"""What every page shares: the results context, status colours, and image figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.images import COLORMAPS, DEFAULT_ALPHA, Figure, OverlayStyle, figure
from pipeline.gate import Verdict
from pipeline.schema import RunRecord
from pipeline.triage import TITLES

STATUS_BG = {"PASS": "#d1f2d9", "WARN": "#fff0c2", "FAIL": "#f9c9cc", "ERROR": "#f0c2f0", "SKIP": "#e8e8e8",
             "INFO": "#d6ecfa"}
STATUS_MD = {"PASS": "green", "WARN": "orange", "FAIL": "red", "ERROR": "violet", "SKIP": "gray"}

PAGES = ("Overview", "Model", "Image explorer", "Compare", "Review", "Slices")


@dataclass(frozen=True)
class Ctx:
    """One rerun's view of the results directory."""

    root: str
    ver: str
    policy: str | None
    runs: list[RunRecord]
    verdict: Verdict | None = None
    problem: str | None = None  # why there is no verdict (no parts yet, unreadable policy, ...)
    roots: list[str] = field(default_factory=list)
    mask_roots: list[str] = field(default_factory=list)  # folders of the mask files the runs read

    @property
    def models(self) -> list[str]:
        return [m.model for m in self.verdict.models] if self.verdict else []

    def model(self, name: str) -> Any:
        assert self.verdict is not None
        return next(m for m in self.verdict.models if m.model == name)

    def frame(self, as_of: str | None = None) -> pd.DataFrame:
        return data.shared_frame(self.root, self.ver, as_of)


def badge(status: str) -> str:
    """Markdown for a coloured status, e.g. ``:red[**❌ FAIL**]``."""
    return f":{STATUS_MD.get(status, 'gray')}[**{status}**]"


def style_status(df: pd.DataFrame, columns: Sequence[str]) -> Any:
    """A Styler colouring the given status columns' cells (and the row's first cell) by status."""

    def colour(v: Any) -> str:
        bg = STATUS_BG.get(str(v).split(" ")[0], "")
        return f"background-color: {bg}" if bg else ""

    return df.style.map(colour, subset=[c for c in columns if c in df.columns])


def model_picker(ctx: Ctx, key: str, label: str = "Model", default: str | None = None) -> str:
    """A model selectbox; the first failing model by default (it is why you are here)."""
    names = ctx.models
    if key not in st.session_state or st.session_state[key] not in names:
        failing = [m.model for m in ctx.verdict.models if m.status == "FAIL"] if ctx.verdict else []
        st.session_state[key] = default if default in names else (failing or names)[0]
    return st.selectbox(label, names, key=key,
                        format_func=lambda m: f"{m}  ({ctx.model(m).status})")


@st.cache_data(show_spinner=False, max_entries=512)
def _figure(root: str, ver: str, model: str, key: data.Key, max_side: int, roots: tuple[str, ...],
            mask_roots: tuple[str, ...], style: OverlayStyle, _row: dict[str, Any]) -> Figure:
    return figure(_row, list(roots), max_side, list(mask_roots), style)


def overlay_controls() -> None:
    """The sidebar's colormap and opacity for every page that draws maps (created once per rerun)."""
    st.sidebar.radio("CAM colormap", COLORMAPS, key="overlay_cmap", horizontal=True,
                     help="Perceptually uniform: equal steps in the map look like equal steps.")
    st.sidebar.slider("CAM opacity", 0.0, 1.0, DEFAULT_ALPHA, 0.05, key="overlay_alpha")


def overlay_style() -> OverlayStyle:
    cmap = st.session_state.get("overlay_cmap", COLORMAPS[0])
    return OverlayStyle(cmap if cmap in COLORMAPS else COLORMAPS[0],
                        float(st.session_state.get("overlay_alpha", DEFAULT_ALPHA)))


def figures(ctx: Ctx, model: str, rows: pd.DataFrame, max_side: int) -> list[Figure | None]:
    """The figures of the frame ``rows`` (one Parquet scan for all of them; CAMs of these rows only)."""
    keys = [data.row_key(r) for _, r in rows.iterrows()]
    details = data.cached_details(ctx.root, ctx.ver, model, tuple(keys))
    style = overlay_style()
    out: list[Figure | None] = []
    for k in keys:
        row = details.get(k[0])
        fig = None if row is None else _figure(ctx.root, ctx.ver, model, k, max_side, tuple(ctx.roots),
                                               tuple(ctx.mask_roots), style, row)
        out.append(fig)
    return out


def show_figure(fig: Figure | None, caption: str, large: bool = False) -> None:
    """The image's panels with a caption; the refusal or drawing notes below it."""
    if fig is None:
        st.warning(f"{caption}: the stored row was not found (results changed? reload)")
        return
    if large:
        panels = fig.panels()
        for col, (img, title) in zip(st.columns(len(panels)), panels, strict=True):
            col.image(img, caption=title, width="stretch")
        st.caption(caption)
    else:
        st.image(fig.strip(), caption=caption, width="stretch")
    if fig.refused:
        st.warning(f"Image not shown: {fig.refused}")
    for note in fig.notes:
        st.caption(f"note: {note}")


def fmt_row_caption(r: pd.Series, mark: str | None = None) -> str:
    ok = r.get("correct", float("nan"))
    right = "✓" if ok > 0.5 else "✗" if ok < 0.5 else "?"
    share = r.get("object_share")
    share_s = "-" if pd.isna(share) else f"{share:.3f}"
    score = r.get("pred_score")
    score_s = "-" if pd.isna(score) else f"{score:.2f}"
    head = f"{r['image_id']} · {r.get('label')} → {r.get('pred')} ({score_s}) {right}"
    tail = f" · review: {TITLES.get(mark, mark)}" if mark else ""
    return f"{head} · object share {share_s}{tail}"
