"""Several models over one prepared batch: the same rows as separate scorers, each image decoded once."""

from __future__ import annotations

import numpy as np
import pytest

from tests.workers.test_faults import _batch
from tests.workers.test_score import PRE, SPEC, _jpeg_batch
from workers import multi
from workers.multi import MODEL_COLUMN, WANT_PREFIX, ModelJob, MultiScorer, concat_columns
from workers.prepare import PrepareOptions, prepare_batch
from workers.score import ScoreOptions, Scorer

JOBS = [ModelJob("a", SPEC, ScoreOptions(layer="features")), ModelJob("b", SPEC, ScoreOptions(layer="features.1"))]


def _rows_of(out: dict, k: int) -> dict:
    sel = out[MODEL_COLUMN] == k
    return {key: v[sel] for key, v in out.items()}


def test_each_model_gets_the_rows_a_separate_scorer_gives(tmp_path):
    batch = prepare_batch(_batch(tmp_path, 5), PrepareOptions(PRE))
    out = MultiScorer(JOBS)(batch)
    assert out[MODEL_COLUMN].tolist() == [0] * 5 + [1] * 5
    for k, job in enumerate(JOBS):
        alone = Scorer(job.spec, job.opts)(batch)
        mine = _rows_of(out, k)
        assert mine["image_id"].tolist() == alone["image_id"].tolist()
        assert mine["cam"].tolist() == alone["cam"].tolist()  # bytes of the maps: identical
        np.testing.assert_array_equal(mine["object_share"], alone["object_share"])
    # per-image costs are reported once, on the first model's rows
    assert out["_n_images"].sum() == 5 and out["_n_decodes"].sum() == 5
    assert out["_t_prepare"].sum() == pytest.approx(batch["_t_prepare"].sum())
    assert (out["_t_prepare"][5:] == 0).all()


def test_a_resumed_model_scores_only_the_rows_it_wants(tmp_path):
    batch = prepare_batch(_batch(tmp_path, 4), PrepareOptions(PRE))
    batch[f"{WANT_PREFIX}0"] = np.array([True, True, True, False])
    batch[f"{WANT_PREFIX}1"] = np.array([False, True, True, True])
    out = MultiScorer(JOBS)(batch)
    assert _rows_of(out, 0)["image_id"].tolist() == ["img0", "img1", "img2"]
    assert _rows_of(out, 1)["image_id"].tolist() == ["img1", "img2", "img3"]
    assert out["_n_images"].sum() == 4  # img3 is claimed by model b: every image counted once
    assert _rows_of(out, 1)["_n_images"].tolist() == [0, 0, 1]


def test_device_decode_happens_once_for_all_models(tmp_path, monkeypatch):
    batch = _jpeg_batch(tmp_path, n=3)
    on_dev = prepare_batch(batch, PrepareOptions(PRE, device_decode=True))
    calls = []
    real = multi.decode_rows
    monkeypatch.setattr(multi, "decode_rows", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    out = MultiScorer(JOBS)(on_dev)
    assert calls == [3]  # one batched decode of the three JPEGs, for both models
    single = Scorer(JOBS[0].spec, JOBS[0].opts)(on_dev)  # a lone scorer decodes itself: the same pixels
    np.testing.assert_array_equal(_rows_of(out, 0)["object_share"], single["object_share"])
    assert "_t_decode" in out and (out["_t_decode"][3:] == 0).all()


def test_columns_that_differ_between_models_become_per_row_objects():
    a = {"x": np.zeros((2, 3), np.float32), "y": np.array([1, 2])}
    b = {"x": np.ones((1, 5), np.float32)}
    out = concat_columns([a, b])
    assert out["x"].dtype == object and [len(r) for r in out["x"]] == [3, 3, 5]
    assert out["y"].tolist() == [1, 2, None]


def test_a_model_failing_systematically_turns_the_batch_into_a_marker(tmp_path):
    from workers.faults import FATAL
    from workers.models import ModelSpec

    broken = ModelSpec(name="broken", source="python:tests.factories:always_raises", num_classes=3,
                       classes=("a", "b", "c"), preprocess=PRE)
    batch = prepare_batch(_batch(tmp_path, 4), PrepareOptions(PRE))
    out = MultiScorer([JOBS[0], ModelJob("broken", broken, ScoreOptions())])(batch)
    assert list(out) == [FATAL] and "model 'broken': the last 4 images all failed" in out[FATAL][0]
    assert MultiScorer(JOBS)({FATAL: out[FATAL]})[FATAL][0] == out[FATAL][0]  # a prepare marker passes through
