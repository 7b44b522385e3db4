"""Per-model and per-class evidence: object mass, chance-corrected score, pointing, cues.

Everything is computed from the Parquet facts (no CAM is recomputed), with sample counts and CIs
(Wilson score intervals for rates, the bootstrap for continuous statistics: :mod:`.stats`). ``analyse`` returns one :class:`ModelEvidence` per model; checks, report and dashboard all
read from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, is_dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.analysis.cues import (
    AttributeGap,
    BgColourEvidence,
    CooccurrenceEvidence,
    CounterfactualEvidence,
    StatOptions,
    attribute_gaps,
    background_colour,
    cooccurrence,
    counterfactual,
)
from pipeline.analysis.resolution import FineEvidence, fine_evidence
from pipeline.analysis.slices import SliceEvidence
from pipeline.analysis.stats import NAN, Estimate, median_ci

ALL = "(all)"


@dataclass
class GroupStats:
    """Object-mass statistics of one class (or of all images, ``key == "(all)"``)."""

    key: str
    n: int = 0
    scored: int = 0
    accuracy: Estimate = NAN
    object_share: Estimate = NAN
    object_share_median: Estimate = NAN
    object_area: Estimate = NAN
    object_lift: Estimate = NAN  # chance-corrected: (share - area) / (1 - area)
    pointing: Estimate = NAN
    off_object: Estimate = NAN  # images with most mass off the object (object_share < 0.5)
    background_share: Estimate = NAN
    cf_bg_gap: Estimate = NAN
    worst: list[str] = field(default_factory=list)  # image ids with the lowest object share


@dataclass
class ModelEvidence:
    model: str
    images: int
    errors: int
    errors_by_kind: dict[str, int]
    feature_layer: str | None
    cam_hw: tuple[int, int] | None
    median_object_cells: float
    overall: GroupStats
    classes: list[GroupStats]
    bg_colour: BgColourEvidence
    cooccurrence: CooccurrenceEvidence
    counterfactual: CounterfactualEvidence
    attributes: list[AttributeGap]
    run_ids: list[str] = field(default_factory=list)
    fine: FineEvidence | None = None  # saliency at the finer layer audited beside a coarse one
    slices: SliceEvidence = field(default_factory=SliceEvidence)  # filled by the gate from the embeddings

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses / Estimates / numpy -> plain JSON types (NaN -> None)."""
    if isinstance(obj, Estimate):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        # Walk the fields rather than asdict(): Estimates need their NaN -> None treatment.
        return {f: to_jsonable(getattr(obj, f)) for f in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


GROUP_COLUMNS = ("image_id", "scored", "correct", "object_share", "object_area", "object_lift", "pointing_hit",
                 "background_share")  # what group_stats reads


def group_stats(key: str, d: pd.DataFrame, so: StatOptions) -> GroupStats:
    ok = d[[c for c in GROUP_COLUMNS if c in d.columns]][d.scored]  # row-filter only what is read
    off = (ok.object_share < 0.5).astype(float).where(ok.object_share.notna())
    return GroupStats(
        key=key,
        n=len(d),
        scored=len(ok),
        accuracy=so.rate(ok.correct),
        object_share=so.mean(ok.object_share),
        object_share_median=median_ci(ok.object_share, so.conf, so.n_boot, so.seed),
        object_area=so.mean(ok.object_area),
        object_lift=so.mean(ok.object_lift),
        pointing=so.rate(ok.pointing_hit),
        off_object=so.rate(off),
        background_share=so.mean(ok.background_share),
        worst=[str(x) for x in ok[ok.object_share.notna()].nsmallest(so.examples, "object_share").image_id],
    )


def model_evidence(model: str, d: pd.DataFrame, so: StatOptions, attributes: list[str] | None = None) -> ModelEvidence:
    ok = d[[c for c in ("feature_layer", "cam_h", "cam_w", "object_cells") if c in d.columns]][d.scored]
    kinds = d.error_kind[d.error.notna()].fillna("error").value_counts().to_dict()
    layer = ok.feature_layer.dropna().iloc[0] if ok.feature_layer.notna().any() else None
    hw = None
    if ok.cam_h.notna().any():
        hw = (int(ok.cam_h.dropna().iloc[0]), int(ok.cam_w.dropna().iloc[0]))
    cells = ok.object_cells.dropna()
    cf = counterfactual(d, so)
    classes = []
    by_class = d[[c for c in ("label", *GROUP_COLUMNS) if c in d.columns]][d.label.notna()]
    for lab, g in by_class.groupby("label"):
        gs = group_stats(str(lab), g, so)
        gs.cf_bg_gap = cf.by_class.get(str(lab), NAN)
        classes.append(gs)
    overall = group_stats(ALL, d, so)
    overall.cf_bg_gap = cf.bg_gap
    return ModelEvidence(
        model=model,
        images=len(d),
        errors=int(d.error.notna().sum()),
        errors_by_kind={str(k): int(v) for k, v in kinds.items()},
        feature_layer=layer,
        cam_hw=hw,
        median_object_cells=float(cells.median()) if len(cells) else float("nan"),
        overall=overall,
        classes=classes,
        bg_colour=background_colour(d, so),
        cooccurrence=cooccurrence(d, so),
        counterfactual=cf,
        attributes=attribute_gaps(d, so, attributes),
        run_ids=sorted(d.run_id.dropna().unique().tolist()),
        fine=fine_evidence(d, so, group_stats, cooccurrence, ALL),
    )


def analyse(df: pd.DataFrame, so: StatOptions | None = None, models: list[str] | None = None,
            attributes: list[str] | None = None) -> dict[str, ModelEvidence]:
    so = so or StatOptions()
    names = models or sorted(df.model.dropna().unique())
    out = {}
    for m in names:
        mine = df.model == m
        # One model's results are often the whole frame: then skip the copy (nothing below writes to it).
        out[m] = model_evidence(m, df if mine.all() else df[mine], so, attributes)
    return out
