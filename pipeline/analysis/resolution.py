"""Saliency at the finer layer audited beside a coarse one (the ``fine_*`` columns).

Saliency mass is blunt at coarse maps: at a 4x4 map a model reading a corner mark and one reading
the object score alike. When the automatic layer gives the median object fewer than
``min_object_cells`` feature cells, the workers also compute the map at the next finer stage in the
same pass (:mod:`workers.resolution`), and the saliency checks judge it there: its chance-corrected
object mass (``object_lift``) per model and class, and its mass on co-occurring objects. The coarse
layer's numbers stay beside it as context.

The finer map shares the image's masks, so ``object_area`` is the same; only the mass columns
change. :func:`fine_view` therefore rewrites those columns of the frame, and the usual statistics
(:func:`~pipeline.analysis.evidence.group_stats`, the co-occurrence analysis) run on it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.analysis.stats import NAN, Estimate

FINE_COLUMNS = {  # mass column -> its fine-layer column
    "object_share": "fine_object_share",
    "object_cells": "fine_object_cells",
    "background_share": "fine_background_share",
    "pointing_hit": "fine_pointing_hit",
    "other_shares": "fine_other_shares",
    "object_lift": "fine_object_lift",
}


@dataclass
class FineEvidence:
    """Saliency statistics at ``layer`` (the finer map), computed as at the feature layer.

    ``overall`` and ``classes`` are :class:`~pipeline.analysis.evidence.GroupStats`; ``cue_mass`` and
    ``cue_lift`` the co-occurrence saliency (mass on the signalling object of cue-aligned images).
    """

    layer: str
    cam_hw: tuple[int, int] | None
    median_object_cells: float
    overall: Any
    classes: list[Any] = field(default_factory=list)
    cue_mass: Estimate = NAN
    cue_lift: Estimate = NAN


def has_fine(df: pd.DataFrame) -> bool:
    return "fine_layer" in df and bool(df.fine_layer.notna().any())


def fine_view(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that have a finer map, with its mass columns in place of the feature layer's."""
    d = df[df.fine_layer.notna()]
    swap = {fine: plain for plain, fine in FINE_COLUMNS.items() if fine in d}
    return d.drop(columns=[c for c in swap.values() if c in d]).rename(columns=swap)


def fine_evidence(df: pd.DataFrame, so: Any, group_stats: Callable[..., Any], cooccurrence: Callable[..., Any],
                  overall_key: str) -> FineEvidence | None:
    """Saliency at the finer layer, or None when no row has one (``group_stats``, ``cooccurrence``
    and the overall group's key are the evidence module's, passed in to keep this module below it)."""
    if not has_fine(df):
        return None
    d = fine_view(df)
    ok = d[d.scored]
    hw = None
    if ok.fine_cam_h.notna().any():
        hw = (int(ok.fine_cam_h.dropna().iloc[0]), int(ok.fine_cam_w.dropna().iloc[0]))
    cells = ok.object_cells.dropna()
    classes = [group_stats(str(lab), g, so) for lab, g in d[d.label.notna()].groupby("label")]
    co = cooccurrence(d, so)
    return FineEvidence(
        layer=str(ok.fine_layer.dropna().iloc[0]) if ok.fine_layer.notna().any() else str(d.fine_layer.iloc[0]),
        cam_hw=hw,
        median_object_cells=float(cells.median()) if len(cells) else float("nan"),
        overall=group_stats(overall_key, d, so),
        classes=classes,
        cue_mass=co.cue_mass,
        cue_lift=co.cue_lift,
    )
