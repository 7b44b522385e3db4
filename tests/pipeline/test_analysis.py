"""Analysis and checks on crafted frames: statistics, chance correction, cue splits, judging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis.checks import CHECKS, FAIL, PASS, SKIP, WARN, CheckContext, model_status, run_checks
from pipeline.analysis.cues import StatOptions, associations, attribute_gaps, colour_cue_class, cooccurrence
from pipeline.analysis.evidence import analyse
from pipeline.analysis.frame import object_lift, prepare_frame
from pipeline.analysis.stats import Estimate, diff_ci, mean_ci, median_ci, paired_diff_ci
from pipeline.config import GatePolicy

SO = StatOptions(n_boot=500, min_n=20)


def test_mean_ci_covers_and_switches_to_normal_for_large_n():
    rng = np.random.default_rng(0)
    small = mean_ci(rng.random(200), n_boot=500)
    assert small.lo < 0.5 < small.hi and small.n == 200
    big = mean_ci(rng.random(50_000))
    assert big.hi - big.lo < 0.01 and big.lo < 0.5 < big.hi
    assert not mean_ci([]).ok and mean_ci([np.nan, 1.0]).n == 1


def test_diff_and_paired_ci():
    a, b = np.ones(50), np.zeros(50)
    assert diff_ci(a, b).lo == pytest.approx(1.0)
    assert paired_diff_ci([1, 2, 3], [0, 1, 2]).value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff_ci([1, 2], [1])
    assert median_ci([1.0, 2.0, 3.0]).value == 2.0


def test_object_lift_is_zero_for_a_uniform_map_and_one_on_the_object():
    np.testing.assert_allclose(object_lift([0.2, 1.0, 0.0], [0.2, 0.2, 0.2]), [0.0, 1.0, -0.25])
    assert np.isnan(object_lift([0.5], [1.0])[0]) and np.isnan(object_lift([np.nan], [0.2])[0])


def test_colour_cue_leaves_the_image_out_of_its_own_centroid():
    colors = np.array([[0, 0, 0], [0.1, 0, 0], [1, 1, 1], [0.9, 1, 1]], float)
    labels = np.array(["a", "a", "b", "b"], dtype=object)
    cue, cent, acc = colour_cue_class(colors, labels)
    assert list(cue) == ["a", "a", "b", "b"] and acc == 1.0
    cue, _, _ = colour_cue_class(np.array([[0, 0, 0], [1, 1, 1], [1, 1, 1], [0.9, 1, 1]], float), labels)
    assert cue[1] == "b"  # a black-class image on a white background points to class b


def _frame(n_per=100, biased=True, seed=0):
    """Two classes; class a usually with a keyboard; a biased model fails a without keyboard."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in ("mouse", "cup"):
        for i in range(n_per):
            aligned = i < int(0.8 * n_per)
            other = "keyboard" if (lab == "mouse") == aligned else "saucer"
            correct = 1.0 if (aligned or not biased) else 0.0
            rows.append({
                "model": "m", "image_id": f"{lab}{i}", "label": lab, "pred": lab if correct else "x",
                "correct": correct, "object_share": 0.05 if biased else 0.6, "object_area": 0.2,
                "object_cells": 5.0, "pointing_hit": 0.0 if biased else 1.0, "background_share": 0.5,
                "other_shares": [(other, 0.4 if biased else 0.05)], "other_areas": [(other, 0.1)],
                "bg_color": [float(rng.integers(0, 255))] * 3, "error": None, "error_kind": None,
                "feature_layer": "layer3", "cam_h": 8, "cam_w": 8, "run_id": "r", "pred_score": 0.9,
                "target_score": 0.9, "attributes": [("cue_aligned", "yes" if aligned else "no")],
            })
    return prepare_frame(pd.DataFrame(rows))


def test_cooccurrence_split_is_label_conditioned():
    df = _frame()
    assoc = associations(df, min_n=10)
    assert assoc == {"keyboard": "mouse", "saucer": "cup"}
    ev = cooccurrence(df, SO)
    assert ev.n_aligned == 160 and ev.n_conflicting == 40
    assert ev.gap.lo > 0.9
    fair = cooccurrence(_frame(biased=False), SO)
    assert abs(fair.gap.value) < 1e-9


def test_attribute_gap_finds_the_worst_group():
    (g,) = attribute_gaps(_frame(), SO)
    assert g.attribute == "cue_aligned" and g.worst["value"] == "no" and g.worst_acc.value == 0.0


def test_checks_flag_the_biased_frame_and_pass_the_fair_one():
    pol = GatePolicy(min_n=10)
    for biased, expect in ((True, FAIL), (False, PASS)):
        df = _frame(biased=biased)
        ev = analyse(df, SO)["m"]
        res = {r.check: r for r in run_checks(ev, CheckContext(pol, SO, frame=df))}
        assert res["cooccurrence_cue"].status == expect, res["cooccurrence_cue"].message
        assert res["background_reliance"].status == expect
        assert res["counterfactual_flip"].status == SKIP and "counterfactual" in res["counterfactual_flip"].message
        assert res["regression"].status == SKIP
        assert model_status(list(res.values())) == (FAIL if biased else PASS)


def test_coarse_maps_cap_background_reliance_at_warn():
    df = _frame().assign(object_cells=0.8, cam_h=4, cam_w=4)
    ev = analyse(df, SO)["m"]
    r = CHECKS.get("background_reliance")().evaluate(ev, CheckContext(GatePolicy(min_n=10), SO, frame=df))
    assert r.status == WARN and "resolution-limited" in r.message and "4x4" in r.message


def test_too_few_images_skip_unless_evidence_is_required():
    df = _frame(n_per=5)
    ev = analyse(df, SO)["m"]
    res = run_checks(ev, CheckContext(GatePolicy(), SO, frame=df))
    assert all(r.status == SKIP for r in res)
    assert model_status(res) == PASS
    assert model_status(res, require_evidence=True) == FAIL


def test_regression_against_a_baseline_is_paired():
    base, cur = _frame(biased=False), _frame(biased=True)
    ev = analyse(cur, SO)["m"]
    r = CHECKS.get("regression")().evaluate(ev, CheckContext(GatePolicy(min_n=10), SO, frame=cur, baseline_frame=base))
    assert r.status == FAIL and "object_lift_drop" in r.message
    same = CHECKS.get("regression")().evaluate(ev, CheckContext(GatePolicy(min_n=10), SO, frame=cur, baseline_frame=cur))
    assert same.status == PASS


def test_judge_needs_the_whole_interval_beyond_the_threshold():
    chk = CHECKS.get("counterfactual_flip")()
    pol = GatePolicy().checks.counterfactual_flip
    fail, warn = pol.fail, pol.warn
    assert chk.judge(Estimate(0.5, fail + 0.01, 0.7, 100), pol, 20) == FAIL
    assert chk.judge(Estimate(0.5, (fail + warn) / 2, 0.7, 100), pol, 20) == WARN
    assert chk.judge(Estimate(0.5, warn - 0.01, 0.7, 100), pol, 20) == PASS
    assert chk.judge(Estimate(0.5, fail + 0.01, 0.7, 10), pol, 20) == SKIP
