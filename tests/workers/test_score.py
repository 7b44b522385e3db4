"""prepare -> Scorer -> result table, without Ray: the worker's whole job on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.annotations import ObjectAnn, dumps
from common.counterfactual import apply_fill, fill_index
from pipeline.collect import worker_table
from pipeline.schema import RESULT_SCHEMA
from workers.models import ModelSpec, Preprocess
from workers.prepare import PrepareOptions, prepare_batch
from workers.score import RESULT_KEYS, ScoreOptions, Scorer, fill_by_index

PRE = Preprocess(size=(32, 32), resize="resize", crop_pct=1.0)
SPEC = ModelSpec(name="tiny", source="python:tests.factories:tiny_cnn", num_classes=3, classes=("a", "b", "c"),
                 preprocess=PRE)


def _manifest(tmp_path, rows):
    cols = {k: [] for k in ("image_id", "path", "label", "objects", "attributes", "dataset_root", "error")}
    for r in rows:
        for k in cols:
            cols[k].append(r.get(k))
    return {k: np.array(v, dtype=object) for k, v in cols.items()}


@pytest.fixture()
def batch(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    objs = dumps([ObjectAnn("a", bbox=(0, 0, 20, 20)), ObjectAnn("c", bbox=(20, 20, 20, 20))])
    rows = [
        {"image_id": "good", "path": str(good), "label": "a", "objects": objs, "attributes": '{"bg": "red"}'},
        {"image_id": "nolabel", "path": str(good), "label": None, "objects": None},
        {"image_id": "unknown", "path": str(good), "label": "zebra", "objects": None},
        {"image_id": "broken", "path": str(tmp_path / "broken.png"), "label": "a", "objects": None},
        {"image_id": "badann", "path": str(good), "label": "a", "objects": None, "error": "row 5: bad JSON"},
    ]
    return _manifest(tmp_path, rows)


def test_prepare_then_score(batch):
    prepared = prepare_batch(batch, PrepareOptions(PRE))
    assert prepared["pixels"].shape == (5, 32, 32, 3)
    assert prepared["error_kind"][3] in ("corrupt", "truncated", "not_an_image")
    assert json.loads(prepared["mask_names"][0]) == ["a", "c"]
    scorer = Scorer(SPEC, ScoreOptions())
    out = scorer(prepared)
    assert {k for k in out if not k.startswith("_t_")} == set(RESULT_KEYS)
    assert out["_t_score"].sum() > 0 and out["_t_prepare"].sum() > 0
    assert out["error"][0] is None and out["error"][1] is None
    assert out["error_kind"][2] == "unknown_label" and "zebra" in out["error"][2]
    assert out["error_kind"][4] == "annotation"
    # shares of the good image partition the map's mass
    others = json.loads(out["other_shares"][0])
    total = out["object_share"][0] + out["background_share"][0] + sum(others.values())
    assert total == pytest.approx(1.0, abs=1e-4)
    assert out["object_area"][0] == pytest.approx(0.25, abs=0.01)
    assert np.isnan(out["object_share"][1]) and out["metric_note"][1] == "no_object_mask"
    assert np.isnan(out["correct"][1]) and out["correct"][0] in (0.0, 1.0)
    t = worker_table(out, run_id="r", model="tiny", fingerprint="f", dataset_root="/d")
    assert t.schema == RESULT_SCHEMA and t.num_rows == 5
    row = t.to_pylist()[0]
    assert len(row["cam"]) == row["cam_h"] * row["cam_w"] == 64
    assert row["view_box"] == [0, 0, 40, 40] and row["image_w"] == 40
    assert dict(row["attributes"]) == {"bg": "red"}
    assert t.column("cam").null_count == 3 and t.column("error").null_count == 2


def test_target_label_uses_the_label_and_needs_one(batch):
    prepared = prepare_batch(batch, PrepareOptions(PRE))
    out = Scorer(SPEC, ScoreOptions(target="label"))(prepared)
    assert out["target"][0] == "a"
    assert out["error_kind"][1] == "no_label"


def test_scores_do_not_depend_on_the_batch(batch):
    prepared = prepare_batch(batch, PrepareOptions(PRE))
    scorer = Scorer(SPEC, ScoreOptions())
    full = scorer(prepared)
    one = scorer({k: v[:1] for k, v in prepared.items()})
    assert one["object_share"][0] == pytest.approx(full["object_share"][0], abs=1e-6)
    assert np.frombuffer(one["cam"][0], np.float32) == pytest.approx(np.frombuffer(full["cam"][0], np.float32), abs=1e-6)


def _cf_batch(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    obj = lambda lab: dumps([ObjectAnn(lab, bbox=(8, 8, 12, 12))])
    with_context = dumps([ObjectAnn("a", bbox=(2, 2, 10, 10)), ObjectAnn("c", bbox=(20, 20, 8, 8))])
    b = _manifest(tmp_path, [{"image_id": "0", "path": paths[0], "label": "a", "objects": with_context},
                             {"image_id": "1", "path": paths[1], "label": "b", "objects": obj("b")}])
    b.update({
        "cf_rand_id": np.array(["1", None], object), "cf_rand_path": np.array([paths[1], None], object),
        "cf_rand_label": np.array(["b", None], object), "cf_rand_objects": np.array([obj("b"), None], object),
        "cf_same_id": np.array(["2", None], object), "cf_same_path": np.array([paths[2], None], object),
        "cf_same_label": np.array(["a", None], object), "cf_same_objects": np.array([obj("a"), None], object),
    })
    return b


def test_counterfactuals_fill_rand_same_and_context(tmp_path):
    prepared = prepare_batch(_cf_batch(tmp_path), PrepareOptions(PRE, context=True))
    assert prepared["cf_rand_ok"][0] and prepared["cf_same_ok"][0] and not prepared["cf_rand_ok"][1]
    assert prepared["cf_ctx_ok"].tolist() == [True, False]  # image 1 has no other object
    assert prepared["cf_ctrl_ok"][0]
    scorer = Scorer(SPEC, ScoreOptions(counterfactual=True))
    out = scorer(prepared)
    for k in ("fill", "rand", "same", "ctx", "ctrl"):
        assert out[f"cf_{k}_pred"][0] in ("a", "b", "c") and 0 <= out[f"cf_{k}_score"][0] <= 1
    assert out["cf_rand_donor"][0] == "1" and out["cf_same_donor"][0] == "2"
    assert out["cf_ctx_pred"][1] is None and np.isnan(out["cf_ctx_score"][1])
    assert out["cf_rand_pred"][1] is None and out["cf_fill_pred"][1] is not None
    # Oracle: the ablated images built on the CPU by the numpy module, scored as plain images.
    for k in ("ctx", "ctrl"):
        plain = dict(prepared)
        plain["pixels"] = apply_fill(prepared["pixels"][0], prepared[f"cf_{k}_index"][0])[None]
        plain = {key: (v[:1] if key != "pixels" else v) for key, v in plain.items()}
        ref = Scorer(SPEC, ScoreOptions())(plain)
        assert ref["pred"][0] == out[f"cf_{k}_pred"][0]
        assert ref["target_score"][0] == pytest.approx(out[f"cf_{k}_score"][0], abs=1e-5)
    t = worker_table(out, run_id="r", model="tiny", fingerprint="f")
    assert t.column("cf_ctx_pred").to_pylist()[0] == out["cf_ctx_pred"][0] and t.column("cf_ctx_score").null_count == 1


def test_fill_by_index_matches_the_numpy_fill():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    index = np.stack([fill_index(np.array([[1, 2, 9, 7]]), (10, 10, 16, 13), (16, 16)),
                      np.full((16, 16), -1, np.int32)])
    got = fill_by_index(torch.from_numpy(px).permute(0, 3, 1, 2).float(), torch.from_numpy(index))
    want = np.stack([apply_fill(px[i], index[i]) for i in range(2)])
    assert (got.permute(0, 2, 3, 1).numpy() == want).all()


def _jpeg_batch(tmp_path, n=3, exif=False):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n):
        p = tmp_path / f"j{i}.jpg"
        arr = (rng.random((60, 90, 3)) * 40 + np.linspace(0, 200, 90)[None, :, None]).astype(np.uint8)
        kw = {}
        if exif and i == 0:
            ex = Image.Exif()
            ex[0x0112] = 6
            kw["exif"] = ex
        Image.fromarray(arr).save(p, "JPEG", quality=95, **kw)
        rows.append({"image_id": f"j{i}", "path": str(p), "label": "a",
                     "objects": dumps([ObjectAnn("a", bbox=(10, 10, 30, 30))])})
    return _manifest(tmp_path, rows)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_decode_matches_cpu_decode(tmp_path, device, interpolation):
    """JPEG bytes decoded by the actor (nvJPEG on a GPU) give the same pixels and scores as PIL."""
    batch = _jpeg_batch(tmp_path, exif=True)
    pre = Preprocess(size=(32, 32), resize="resize_crop", crop_pct=0.875, interpolation=interpolation)
    spec = ModelSpec(name="tiny", source="python:tests.factories:tiny_cnn", num_classes=3, classes=("a", "b", "c"),
                     preprocess=pre)
    on_cpu = prepare_batch(batch, PrepareOptions(pre))
    on_dev = prepare_batch(batch, PrepareOptions(pre, device_decode=True))
    assert all(isinstance(b, bytes) for b in on_dev["encoded"]) and not on_dev["pixels"].any()
    assert on_dev["geometry"][0] == on_cpu["geometry"][0]  # EXIF orientation planned from the header
    scorer = Scorer(spec, ScoreOptions(device=device, autocast="none"))
    a, b = scorer(on_cpu), scorer(on_dev)
    assert list(a["pred"]) == list(b["pred"])
    np.testing.assert_allclose(a["object_share"], b["object_share"], atol=0.03)
    ma = np.frombuffer(a["cam"][0], np.float32)
    mb = np.frombuffer(b["cam"][0], np.float32)
    assert np.corrcoef(ma, mb)[0, 1] > 0.98


def test_corrupt_jpeg_body_is_an_error_row_on_device_decode(tmp_path):
    batch = _jpeg_batch(tmp_path, n=2)
    data = open(batch["path"][1], "rb").read()
    open(batch["path"][1], "wb").write(data[:300] + bytes(len(data) - 300))  # header intact, body garbage
    on_dev = prepare_batch(batch, PrepareOptions(PRE, device_decode=True))
    out = Scorer(SPEC, ScoreOptions())(on_dev)
    assert out["error"][0] is None and out["pred"][0] is not None
    assert out["error_kind"][1] == "corrupt" and "j1.jpg" in out["error"][1]


@pytest.mark.slow
def test_compiled_model_gives_the_same_maps_and_layer_names(batch):
    prepared = prepare_batch(batch, PrepareOptions(PRE))
    plain = Scorer(SPEC, ScoreOptions(layer="features.2"))(prepared)
    compiled = Scorer(SPEC, ScoreOptions(layer="features.2", compile=True))(prepared)
    assert compiled["feature_layer"][0] == "features.2"
    np.testing.assert_allclose(np.frombuffer(compiled["cam"][0], np.float32),
                               np.frombuffer(plain["cam"][0], np.float32), atol=1e-6)


# --- label maps and the fine layer -------------------------------------------------------------

SPEC5 = ModelSpec(name="tiny5", source="python:tests.factories:tiny_cnn", num_classes=5,
                  classes=("c0", "c1", "c2", "c3", "c4"), preprocess=PRE)


def _labelled_batch(tmp_path, labels):
    rng = np.random.default_rng(3)
    rows = []
    for k, lab in enumerate(labels):
        p = tmp_path / f"l{k}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        rows.append({"image_id": f"l{k}", "path": str(p), "label": lab,
                     "objects": dumps([ObjectAnn(lab, bbox=(4, 4, 12, 12))])})
    return prepare_batch(_manifest(tmp_path, rows), PrepareOptions(PRE))


def test_label_map_sets_decide_correctness_and_the_label_target(tmp_path):
    prepared = _labelled_batch(tmp_path, ["even", "odd", "even", "c4", "nothing"])
    lm = (("even", ("c0", 2, "C4")), ("odd", (1, 3)))  # names (case-insensitive) and indices mix
    plain = Scorer(SPEC5, ScoreOptions(label_map=lm))(prepared)
    for i, lab in enumerate(["even", "odd", "even", "c4"]):
        members = {"even": {0, 2, 4}, "odd": {1, 3}, "c4": {4}}[lab]
        assert plain["correct"][i] == float(plain["pred_index"][i] in members)
        assert plain["label_index"][i] in members
    assert plain["error_kind"][4] == "unknown_label" and "label_map" in plain["error"][4]
    by_label = Scorer(SPEC5, ScoreOptions(label_map=lm, target="label"))(prepared)
    np.testing.assert_array_equal(by_label["target_index"][:4], plain["label_index"][:4])
    # The set's best class is explained exactly as if it had been named: same map as target=index.
    for i in range(4):
        one = Scorer(SPEC5, ScoreOptions(target="label", label_map=(("even", (int(plain["label_index"][i]),)),
                                                                    ("odd", (int(plain["label_index"][i]),)))))
        got = one({k: v[i:i + 1] for k, v in prepared.items()})
        want = np.frombuffer(by_label["cam"][i], np.float32)
        np.testing.assert_allclose(np.frombuffer(got["cam"][0], np.float32), want, atol=1e-5 * want.max())
    with pytest.raises(ValueError, match=r"model 'tiny5': label_map\['odd'\]: 'c9' is not a class"):
        Scorer(SPEC5, ScoreOptions(label_map=(("odd", ("c9",)),)))


def test_fine_layer_columns_match_a_separate_run_at_that_layer(tmp_path):
    prepared = _labelled_batch(tmp_path, ["c1", "c2"])
    both = Scorer(SPEC5, ScoreOptions(fine_layer="features.1"))(prepared)
    fine = Scorer(SPEC5, ScoreOptions(layer="features.1"))(prepared)
    coarse = Scorer(SPEC5, ScoreOptions())(prepared)
    assert list(both["feature_layer"]) == list(coarse["feature_layer"]) == ["features"] * 2
    assert list(both["fine_layer"]) == ["features.1"] * 2
    assert (both["fine_cam_h"][0], both["fine_cam_w"][0]) == (16, 16) and both["cam_h"][0] == 8
    for key in ("object_share", "object_cells", "background_share", "pointing_hit"):
        np.testing.assert_allclose(both[f"fine_{key}"], fine[key], rtol=1e-5)
        np.testing.assert_allclose(both[key], coarse[key], rtol=1e-5)
    np.testing.assert_allclose(np.frombuffer(both["fine_cam"][1], np.float32), np.frombuffer(fine["cam"][1], np.float32),
                               rtol=1e-5)
    t = worker_table(both, run_id="r", model="tiny5", fingerprint="f", dataset_root="/d")
    assert t.schema == RESULT_SCHEMA
    row = t.to_pylist()[0]
    assert len(row["fine_cam"]) == 256 and row["fine_layer"] == "features.1"
    assert worker_table(coarse, run_id="r", model="tiny5", fingerprint="f").column("fine_cam").null_count == 2


def test_dataset_report_lists_labels_that_map_to_nothing():
    from pipeline.dataset_report import unmapped_by_model
    from workers.models import imagenet_classes

    labels = ["dog", "fish", "tabby", "unicorn"]
    got = unmapped_by_model(labels, {"in9": ("imagenet9", imagenet_classes()), "plain": (None, imagenet_classes()),
                                     "unknown_classes": ({"unicorn": [0]}, None)})
    assert got == {"in9": ["unicorn"], "plain": ["dog", "fish", "unicorn"], "unknown_classes": ["dog", "fish", "tabby"]}


def _noise_images(tmp_path, n: int, seed: int) -> list[dict]:
    """``n`` random 32x32 PNGs as manifest rows labelled ``a``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return [{"image_id": str(i), "path": str(tmp_path / f"{i}.png"), "label": "a", "objects": None} for i in range(n)]


def test_both_maps_store_the_other_classs_map_where_pred_and_label_differ(tmp_path):
    rows = _noise_images(tmp_path, 6, seed=1)
    prepared = prepare_batch(_manifest(tmp_path, rows), PrepareOptions(PRE))
    preds = Scorer(SPEC, ScoreOptions())(prepared)["pred"]
    classes = list(SPEC.classes)
    # half the images labelled as predicted, half as another class
    labels = [p if i % 2 == 0 else classes[(classes.index(p) + 1) % 3] for i, p in enumerate(preds)]
    prepared["label"] = np.array(labels, dtype=object)
    wrong = [i % 2 == 1 for i in range(6)]
    by_pred = Scorer(SPEC, ScoreOptions())(prepared)
    by_label = Scorer(SPEC, ScoreOptions(target="label"))(prepared)
    both = Scorer(SPEC, ScoreOptions(both_maps=True))(prepared)
    both_label = Scorer(SPEC, ScoreOptions(target="label", both_maps=True))(prepared)
    for i in range(6):
        assert both["cam"][i] == by_pred["cam"][i]  # the first map is unchanged
        if not wrong[i]:
            assert both["cam_other"][i] is None and both_label["cam_other"][i] is None
            continue
        # target: predicted -> the second map is the label's; target: label -> the prediction's
        np.testing.assert_allclose(np.frombuffer(both["cam_other"][i], np.float32),
                                   np.frombuffer(by_label["cam"][i], np.float32), atol=1e-5)
        np.testing.assert_allclose(np.frombuffer(both_label["cam_other"][i], np.float32),
                                   np.frombuffer(by_pred["cam"][i], np.float32), atol=1e-5)
    t = worker_table(both, run_id="r", model="tiny", fingerprint="f", dataset_root=str(tmp_path))
    assert t.column("cam_other").null_count == 3
    assert Scorer(SPEC, ScoreOptions())(prepared)["cam_other"].tolist() == [None] * 6  # off by default


def test_embeddings_come_from_the_cam_layer(batch):
    """``embedding`` is the CAM layer's global average (the head's own pooled features here: a
    GAP -> linear net), stored as float16; the off/on split needs the object mask."""
    prepared = prepare_batch(batch, PrepareOptions(PRE))
    scorer = Scorer(SPEC, ScoreOptions())
    t = worker_table(scorer(prepared), run_id="r", model="tiny", fingerprint="f")
    assert t.schema.field("embedding").type == RESULT_SCHEMA.field("embedding").type
    rows = t.to_pylist()
    seen = {}
    handle = scorer.model.module.pool.register_forward_hook(lambda m, i, o: seen.setdefault("pooled", o.flatten(1)))
    try:
        scorer.cam(scorer._normalise(torch.from_numpy(np.asarray(prepared["pixels"])[:1])))
    finally:
        handle.remove()
    pooled = seen["pooled"][0].detach().numpy()
    assert np.asarray(rows[0]["embedding"], np.float32) == pytest.approx(pooled, rel=2e-3, abs=1e-3)
    assert len(rows[0]["embedding_off"]) == len(rows[0]["embedding_on"]) == 8
    assert rows[1]["embedding"] is not None and rows[1]["embedding_off"] is None  # no mask: no split
    assert [r["embedding"] is None for r in rows] == [r["error"] is not None for r in rows]
    off = worker_table(Scorer(SPEC, ScoreOptions(embedding=False))(prepared), run_id="r", model="tiny",
                       fingerprint="f")
    assert off.column("embedding").null_count == off.num_rows
