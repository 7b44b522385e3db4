"""Context ablation: does removing the co-occurring objects change the prediction, beyond removing anything?

Saliency says where a model looks; the ablation says whether it *needs* what it looks at. The
workers remove every other annotated object of an image (its dilated boxes filled with tiles of the
image's own background, :mod:`common.counterfactual`) and, as the control, the same number of
same-size boxes of plain background elsewhere, filled the same way (``cf_ctx_*`` / ``cf_ctrl_*``).
Any edit moves an image off the training distribution a little; the control measures how much
that alone flips predictions, so the statistic is the paired difference (Newcombe's paired interval)

    context_gap = P(flip | context removed) - P(flip | same-size background removed)

on the **cue-aligned** images, whose co-occurring objects signal their own label (the keyboard
beside the mouse): a model that recognises the mouse by the keyboard flips when the keyboard goes,
a fair one no more than under the control. The images come from the co-occurrence analysis
(:func:`pipeline.analysis.cues.cooccurrence`), which decides which ones are aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.analysis.frame import differs, example_ids, narrow
from pipeline.analysis.stats import NAN, Estimate

if TYPE_CHECKING:
    from pipeline.analysis.cues import StatOptions

ABLATION_COLUMNS = ("pred", "pred_score", "image_id", "target_score", "cf_ctx_pred", "cf_ctx_score", "cf_ctrl_pred",
                    "cf_ctrl_score")
"""What :func:`context_ablation` reads."""


@dataclass
class ContextAblationEvidence:
    n: int = 0  # cue-aligned images with both the ablation and its control
    flip_context: Estimate = NAN  # the prediction changes when the other objects are removed
    flip_control: Estimate = NAN  # ... when same-size patches of plain background are removed
    context_gap: Estimate = NAN  # flip_context - flip_control, paired per image
    drop_context: Estimate = NAN  # target probability lost when the other objects are removed
    drop_control: Estimate = NAN
    examples: list[str] = field(default_factory=list)  # flipped by the ablation, not by the control


def context_ablation(df: pd.DataFrame, aligned: np.ndarray, so: StatOptions) -> ContextAblationEvidence:
    """Flip rates under context removal vs its control on the rows of ``df`` marked ``aligned`` ((N,) bool).

    Rows without both counterfactuals (no other object, no background to tile from, no room for the
    control) are left out, so the two rates are paired on the same images.
    """
    if "cf_ctx_pred" not in df or "cf_ctrl_pred" not in df:
        return ContextAblationEvidence()
    aligned = np.asarray(aligned, dtype=bool)
    both = aligned & df.cf_ctx_pred.notna().to_numpy() & df.cf_ctrl_pred.notna().to_numpy()
    d = narrow(df, both, ABLATION_COLUMNS)
    if d.empty:
        return ContextAblationEvidence()
    flip_ctx = differs(d.cf_ctx_pred, d.pred).astype(float)
    flip_ctrl = differs(d.cf_ctrl_pred, d.pred).astype(float)
    target = d.target_score.to_numpy(dtype=float)
    flipped = d[(flip_ctx > 0.5) & (flip_ctrl < 0.5)]
    return ContextAblationEvidence(
        n=len(d),
        flip_context=so.rate(flip_ctx),
        flip_control=so.rate(flip_ctrl),
        context_gap=so.paired_rate_diff(flip_ctx, flip_ctrl),
        drop_context=so.mean(target - d.cf_ctx_score.to_numpy(dtype=float)),
        drop_control=so.mean(target - d.cf_ctrl_score.to_numpy(dtype=float)),
        examples=example_ids(flipped, "pred_score", so.examples, ascending=False),
    )
