"""An exception on one image is that image's error row; the same exception on every image stops the run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.annotations import ObjectAnn, dumps
from workers import prepare as prep
from workers.faults import FATAL, SYSTEMATIC_ROWS, FailureWatch, SystematicFailure
from workers.models import ModelSpec, Preprocess
from workers.prepare import PrepareOptions, prepare_batch
from workers.score import ScoreOptions, Scorer

PRE = Preprocess(size=(32, 32), resize="resize", crop_pct=1.0)
CLASSES = ("a", "b", "c")


def _spec(factory: str) -> ModelSpec:
    return ModelSpec(name=factory, source=f"python:tests.factories:{factory}", num_classes=3, classes=CLASSES,
                     preprocess=PRE)


def _batch(tmp_path, n: int, white: set[int] = frozenset()) -> dict[str, np.ndarray]:
    """``n`` noise images (``white``: white ones instead), each with a box of its label."""
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {k: [] for k in ("image_id", "path", "label", "objects", "attributes", "dataset_root",
                                             "error")}
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        px = np.full((40, 40, 3), 255, np.uint8) if i in white else rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(px).save(p)
        for k, v in (("image_id", f"img{i}"), ("path", str(p)), ("label", CLASSES[i % 3]),
                     ("objects", dumps([ObjectAnn(CLASSES[i % 3], bbox=(5, 5, 20, 20))])), ("attributes", None),
                     ("dataset_root", str(tmp_path)), ("error", None)):
            cols[k].append(v)
    return {k: np.array(v, dtype=object) for k, v in cols.items()}


@pytest.fixture(autouse=True)
def fresh_prepare_watch(monkeypatch):
    monkeypatch.setattr(prep, "_WATCH", FailureWatch("prepare"))


def test_failure_watch_counts_failures_in_a_row_of_one_kind():
    err = ValueError("x")
    w = FailureWatch("model 'm'")
    w.record(8, [("p", err)] * 7)  # one image of the batch worked: bad images, not bad code
    assert w.streak == 0
    w.record(2, [("p", err)] * 2)
    w.record(1, [("p", err)])
    assert w.streak == 3
    w.record(1, [("p", TypeError("y"))])  # another exception type starts a new streak
    assert (w.streak, w.kind) == (1, "TypeError")
    w.record(0, [])  # a batch of error rows only attempted nothing: no change
    assert w.streak == 1
    with pytest.raises(SystematicFailure, match=r"model 'm': the last 4 images all failed with TypeError: y"):
        w.record(3, [("p", TypeError("y"))] * 3)
    w2 = FailureWatch("prepare")
    with pytest.raises(SystematicFailure):
        w2.record(SYSTEMATIC_ROWS, [("p", err)] * SYSTEMATIC_ROWS)  # one whole batch suffices


def test_an_exception_on_one_image_is_its_error_row_and_costs_no_other(tmp_path):
    batch = prepare_batch(_batch(tmp_path, 6, white={2}), PrepareOptions(PRE))
    out = Scorer(_spec("raises_on_white"), ScoreOptions())(batch)
    assert out["error_kind"].tolist() == [None, None, "internal", None, None, None]
    assert "img2.png" in out["error"][2] and "ValueError: white input" in out["error"][2]
    assert out["pred"][2] is None and out["cam"][2] is None and np.isnan(out["object_share"][2])
    # Oracle: the other images scored in a batch without the poison image, by the same network unwrapped.
    keep = [0, 1, 3, 4, 5]
    ref = Scorer(_spec("tiny_cnn"), ScoreOptions())({k: v[keep] for k, v in batch.items()})
    np.testing.assert_allclose(out["object_share"][keep], ref["object_share"], atol=1e-6)
    assert out["pred"][keep].tolist() == ref["pred"].tolist()


def test_a_model_that_always_raises_stops_after_a_whole_batch(tmp_path):
    batch = prepare_batch(_batch(tmp_path, 4), PrepareOptions(PRE))
    with pytest.raises(SystematicFailure, match="this model is broken"):
        Scorer(_spec("always_raises"), ScoreOptions())(batch)
    # one image per batch: error rows until SYSTEMATIC_ROWS in a row
    scorer = Scorer(_spec("always_raises"), ScoreOptions())
    for i in range(SYSTEMATIC_ROWS - 1):
        out = scorer({k: v[i:i + 1] for k, v in batch.items()})
        assert out["error_kind"][0] == "internal" and "RuntimeError: this model is broken" in out["error"][0]
    with pytest.raises(SystematicFailure, match=f"the last {SYSTEMATIC_ROWS} images"):
        scorer({k: v[3:4] for k, v in batch.items()})


def test_an_exception_while_preparing_one_image_is_its_error_row(tmp_path, monkeypatch):
    real = prep.rasterize

    def flaky(objects, geom, label, image_path=None):
        if image_path.endswith("img1.png"):
            raise KeyError("no such polygon")
        return real(objects, geom, label, image_path=image_path)

    monkeypatch.setattr(prep, "rasterize", flaky)
    out = prepare_batch(_batch(tmp_path, 3), PrepareOptions(PRE))
    assert out["error_kind"].tolist() == [None, "internal", None]
    assert out["error"][1].endswith("img1.png: internal error while preparing it: KeyError: 'no such polygon'")
    assert out["geometry"][1] is None and not out["pixels"][1].any() and out["pixels"][0].any()
    assert out["_n_decodes"].tolist() == [1, 1, 1]
    monkeypatch.setattr(prep, "rasterize", lambda *a, **k: 1 / 0)
    fatal = prepare_batch(_batch(tmp_path, 4), PrepareOptions(PRE))  # the batch becomes a marker for the driver
    assert list(fatal) == [FATAL] and "prepare: the last 4 images all failed with ZeroDivisionError" in fatal[FATAL][0]
