"""The dashboard rebuilds the counterfactual images exactly as the prepare stage builds them, without torch."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from common import counterfactual as cf
from common.preprocess import Preprocess
from cuebench.synth import SynthConfig, generate
from dashboard.composites import composites, construction
from workers.prepare import PrepareOptions, donor_background, prepare_one

PRE = Preprocess(size=(48, 48), resize="resize_crop", crop_pct=0.875, interpolation="bilinear")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Six co-occurrence images (an object and a distractor each) as stored result rows."""
    root = generate(tmp_path_factory.mktemp("cf") / "data", SynthConfig(cue="cooccur", n=6, correlation=0.5, size=64))
    out = {}
    with open(root / "manifest.csv") as f:
        for rec in csv.DictReader(f):
            path = str(root / rec["image"])
            p = prepare_one(path, rec["label"], rec["objects"], PrepareOptions(PRE))
            g = p.geometry
            image_id = rec["image"].rsplit("/", 1)[1].split(".")[0]
            out[image_id] = {"image_id": image_id, "path": path, "dataset_root": str(root), "label": rec["label"],
                             "annotations": rec["objects"], "image_w": g["src_w"], "image_h": g["src_h"],
                             "view_box": g["box"], "input_h": 48, "input_w": 48, "_prepared": p}
    return root, out


def test_mixed_rand_and_ablation_match_the_prepare_stage(rows):
    root, by_id = rows
    ids = sorted(by_id)
    me, donor = by_id[ids[0]], by_id[ids[1]]
    row = {**me, "cf_rand_pred": "square", "cf_rand_donor": donor["image_id"], "cf_same_pred": None,
           "cf_ctx_pred": "disk", "cf_ctrl_pred": "disk"}
    panels = composites(row, {donor["image_id"]: donor}, [str(root)], dilation=0.1, seed=3)
    assert [p.title.split(" →")[0] for p in panels] == ["Mixed-Rand", "context removed", "control patch removed"]
    p, d = me["_prepared"], donor["_prepared"]
    want_rand = cf.composite(p.pixels, p.target, donor_background(d, 0.1))
    np.testing.assert_array_equal(panels[0].image, want_rand)
    ctx, ctrl = cf.ablation_indices(p.target, p.others, p.pixels.shape[:2], cf.placement_rng(3, me["image_id"]), 0.1)
    for panel, index in zip(panels[1:], (ctx, ctrl), strict=True):
        if index is None:
            assert panel.image is None and panel.note
        else:
            np.testing.assert_array_equal(panel.image, cf.apply_fill(p.pixels, index))
    assert "background of" in panels[0].title and "square" in panels[0].title


def test_files_outside_the_audited_roots_are_not_read(rows, tmp_path):
    root, by_id = rows
    me = next(iter(by_id.values()))
    row = {**me, "cf_ctx_pred": "disk"}
    (panel,) = composites(row, {}, [str(tmp_path)])  # the image lies outside this root
    assert panel.image is None and "cannot render" in panel.note
    donor = {**me, "image_id": "x", "path": "/etc/passwd"}
    (panel,) = composites({**me, "cf_rand_pred": "disk", "cf_rand_donor": "x"}, {"x": donor}, [str(root)])
    assert panel.image is None and "donor 'x'" in panel.note
    (panel,) = composites({**me, "cf_same_pred": "disk", "cf_same_donor": "gone"}, {}, [str(root)])
    assert panel.image is None and "not in these results" in panel.note


def test_construction_reads_the_run_config():
    assert construction({"counterfactual": {"dilation": 0.2, "seed": 7}}) == (0.2, 7)
    assert construction(None) == (cf.DEFAULT_DILATION, 0)
