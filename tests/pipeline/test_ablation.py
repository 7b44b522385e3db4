"""Context ablation vs its control on cue-aligned images: exact rates, pairing, the check's finding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis.ablation import ContextAblationEvidence, context_ablation
from pipeline.analysis.checks import CHECKS, CheckContext
from pipeline.analysis.cues import StatOptions, cooccurrence
from pipeline.analysis.evidence import analyse
from pipeline.analysis.frame import prepare_frame
from pipeline.config import GatePolicy

SO = StatOptions(n_boot=300)


def test_rates_are_paired_on_rows_with_both_counterfactuals():
    df = pd.DataFrame({
        "image_id": list("abcdef"), "pred": ["x"] * 6, "pred_score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        "target_score": [0.9] * 6,
        "cf_ctx_pred": ["y", "y", "x", "x", "y", None],
        "cf_ctx_score": [0.2, 0.3, 0.8, 0.9, 0.1, np.nan],
        "cf_ctrl_pred": ["x", "y", "x", "x", None, "x"],
        "cf_ctrl_score": [0.9, 0.4, 0.9, 0.9, np.nan, 0.9],
    })
    aligned = np.array([True, True, True, False, True, True])
    ev = context_ablation(df, aligned, SO)
    # rows a, b, c: aligned with both (d is not aligned, e has no control, f no ablation)
    assert ev.n == 3
    assert ev.flip_context.value == pytest.approx(2 / 3) and ev.flip_control.value == pytest.approx(1 / 3)
    assert ev.context_gap.value == pytest.approx(1 / 3) and ev.context_gap.n == 3
    assert ev.drop_context.value == pytest.approx(np.mean([0.7, 0.6, 0.1]))
    assert ev.examples == ["a"]  # flipped by the ablation only
    assert context_ablation(df, np.zeros(6, bool), SO) == ContextAblationEvidence()
    assert context_ablation(df.drop(columns=["cf_ctrl_pred"]), aligned, SO) == ContextAblationEvidence()


def _frame(relies: bool, n_per: int = 60) -> pd.DataFrame:
    """Mice with keyboards, cups with saucers (80% aligned); a model that relies on the context loses
    the mouse when the keyboard goes, and every model flips 5% of images under either edit."""
    rows = []
    for lab, other in (("mouse", "keyboard"), ("cup", "saucer")):
        for i in range(n_per):
            aligned = i < int(0.8 * n_per)
            obj = other if aligned else ("saucer" if other == "keyboard" else "keyboard")
            noise = i % 20 == 0
            ctx = "z" if (relies and aligned and i % 2 == 0) or noise else lab
            rows.append({
                "model": "m", "image_id": f"{lab}{i}", "label": lab, "pred": lab, "correct": 1.0,
                "object_share": 0.5, "object_area": 0.2, "object_cells": 5.0, "pointing_hit": 1.0,
                "background_share": 0.3, "other_shares": [(obj, 0.2)], "other_areas": [(obj, 0.1)],
                "bg_color": [100.0, 100.0, 100.0], "error": None, "error_kind": None, "feature_layer": "l",
                "cam_h": 8, "cam_w": 8, "run_id": "r", "pred_score": 0.9, "target_score": 0.9, "attributes": [],
                "cf_ctx_pred": ctx, "cf_ctx_score": 0.2 if ctx != lab else 0.85,
                "cf_ctrl_pred": "z" if noise else lab, "cf_ctrl_score": 0.2 if noise else 0.88,
            })
    return prepare_frame(pd.DataFrame(rows))


def test_cooccurrence_carries_the_ablation_of_aligned_images_and_the_check_judges_it():
    biased = cooccurrence(_frame(relies=True), SO)
    assert biased.n_aligned == 96 and biased.context.n == 96
    assert biased.context.flip_control.value == pytest.approx(6 / 96)  # i = 0, 20, 40 of each class
    assert biased.context.flip_context.value == pytest.approx(48 / 96)  # the even aligned ones (noise rows are even)
    assert biased.context.context_gap.lo > 0.3
    fair = cooccurrence(_frame(relies=False), SO)
    assert fair.context.context_gap.value == pytest.approx(0.0)
    for relies, worst in ((True, "FAIL"), (False, "PASS")):
        ev = analyse(_frame(relies), SO)["m"]
        res = CHECKS.get("cooccurrence_cue")().evaluate(ev, CheckContext(GatePolicy(), SO))
        (gap,) = [f for f in res.findings if f.statistic == "context_gap"]
        assert gap.status == worst and gap.judged and "flip" in gap.note
