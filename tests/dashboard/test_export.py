"""Exports of the explorer's selection: CSV / Parquet tables and the FiftyOne dataset directory.

The FiftyOne layout is checked field by field against FiftyOne's documented sample serialisation;
``test_fiftyone_imports_the_export`` imports it with the ``fiftyone`` package itself where that is
installed and can start its database (it is not part of any extra here: see README).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard import data, export
from dashboard.explore import FLIPPED, Filters, model_view, select
from dashboard.images import cam_heat
from pipeline.triage import ReviewStore, mark_state
from tests.dashboard.fakes import CRAFTED, FAILING, PASSING


@pytest.fixture(scope="module")
def frame(fake_results):
    return data.load_frame(fake_results.root)


def _selection(frame, model, f=None):
    view = model_view(frame, model)
    return view, select(view, f or Filters())


def _details(root, model):
    return lambda chunk: data.fetch_details(root, model, [data.row_key(r) for _, r in chunk.iterrows()])


def _fo_rows(frame, view, order):
    flips = export.table(frame, view, order)[[c for c in view.cols if c.endswith("_flip")]]
    return pd.concat([frame.iloc[order].reset_index(drop=True), flips], axis=1)


def test_the_table_holds_the_selected_rows_in_order_with_their_numbers(frame, tmp_path):
    view, order = _selection(frame, FAILING, Filters.make({"label": ["disk"]}, sort="pred_score", descending=True))
    db = ReviewStore(tmp_path / "r.sqlite")
    first = str(frame.image_id.iloc[order[0]])
    db.mark("image", FAILING, first, view.fingerprint, "label_error", note="a square")
    review = mark_state(db.current(), FAILING, view.fingerprint)
    t = export.table(frame, view, order, review)
    assert list(t.image_id) == list(frame.image_id.iloc[order]) and len(t) == 30
    np.testing.assert_allclose(t.pred_score, frame.pred_score.iloc[order])
    assert t.pred_score.is_monotonic_decreasing
    assert set(t.cf_rand_flip) == {FLIPPED} and t.correct.dtype == "boolean"
    assert json.loads(t.attributes.iloc[0]) in ({"source": "a"}, {"source": "b"})
    assert (t.review.iloc[0], t.review_note.iloc[0]) == ("label_error", "a square") and set(t.review.iloc[1:]) == {""}
    back = pd.read_csv(io.BytesIO(export.to_csv(t)))
    assert list(back.image_id) == list(t.image_id)
    np.testing.assert_allclose(back.object_share, t.object_share, rtol=1e-6)
    pq = pd.read_parquet(io.BytesIO(export.to_parquet(t)))
    pd.testing.assert_frame_equal(pq, t)


def test_heatmaps_cover_the_whole_image_and_are_zero_where_the_model_did_not_look():
    row = {"cam": [0.0, 2.0, 0.0, 0.0], "cam_h": 2, "cam_w": 2, "image_w": 48, "image_h": 32,
           "view_box": [8.0, 0.0, 40.0, 32.0]}
    hm = export.heatmap(row)
    assert hm.shape == (32, 48) and hm.dtype == np.uint8
    heat, _ = cam_heat(np.array([[0.0, 2.0], [0.0, 0.0]]), (8, 0, 40, 32), 48, 32)
    np.testing.assert_array_equal(hm, np.round(heat * 255))
    assert hm[:, :8].max() == 0 and hm[:, 40:].max() == 0 and hm.max() == 255
    small = export.heatmap({**row, "image_w": 4800, "image_h": 3200}, side=64)
    assert small.shape == (43, 64)  # the image's aspect, at most `side` pixels
    assert export.heatmap({**row, "cam": None}) is None


def test_the_fiftyone_directory_follows_the_documented_layout(fake_results, frame, tmp_path):
    view, order = _selection(frame, PASSING, Filters(rows="scored", sort="image_id"))
    rows = _fo_rows(frame, view, order)
    review = pd.DataFrame({"decision": ["confirmed_cue"], "note": ["grass"]}, index=["disk/disk_000.png"])
    res = export.write_fiftyone(tmp_path / "fo", rows, _details(fake_results.root, PASSING),
                                [str(fake_results.dataset)], review, name="fair")
    assert set(res.skipped) == set(CRAFTED) and all("outside the audited dataset roots" in r
                                                     for r in res.skipped.values())
    meta = json.loads((tmp_path / "fo" / "metadata.json").read_text())
    assert meta["media_type"] == "image" and "version" not in meta and set(meta["info"]["skipped"]) == set(CRAFTED)
    samples = json.loads((tmp_path / "fo" / "samples.json").read_text())["samples"]
    assert len(samples) == res.samples == 90
    by_id = {s["image_id"]: s for s in samples}
    s = by_id["disk/disk_000.png"]
    src = Image.open(fake_results.dataset / "disk" / "disk_000.png")
    assert (tmp_path / "fo" / s["filepath"]).read_bytes() == (fake_results.dataset / "disk/disk_000.png").read_bytes()
    assert s["ground_truth"] == {"_cls": "Classification", "tags": [], "label": "disk"}
    assert s["predictions"]["_cls"] == "Classification" and s["predictions"]["label"] == s["cam_class"]
    assert 0.6 <= s["predictions"]["confidence"] <= 0.9
    assert s["cam"]["_cls"] == "Heatmap" and s["cam"]["range"] == [0, 255]
    hm = Image.open(tmp_path / "fo" / s["cam"]["map_path"])
    assert hm.mode == "L" and hm.size == src.size  # stretched over the whole image by FiftyOne
    assert "confirmed_cue" in s["tags"] and s["review_note"] == "grass"
    assert s["attributes"] in ({"source": "a"}, {"source": "b"}) and isinstance(s["object_share"], float)
    assert s["cf_rand_flip"] == "kept" and s["correct"] in (True, False)
    assert len({x["filepath"] for x in samples}) == 90 and "cam_other" not in s
    wrong = [x for x in samples if x["correct"] is False]
    assert wrong and all("wrong" in x["tags"] for x in wrong)
    with pytest.raises(FileExistsError, match="not empty"):
        export.write_fiftyone(tmp_path / "fo", rows, _details(fake_results.root, PASSING), [])
    z = zipfile.ZipFile(io.BytesIO(export.zip_directory(tmp_path / "fo")))
    assert {"fo/metadata.json", "fo/samples.json", f"fo/{s['filepath']}", f"fo/{s['cam']['map_path']}"} <= set(
        z.namelist())


def test_export_command_writes_csv_and_fiftyone(fake_results, tmp_path, capsys):
    out = tmp_path / "wrong.csv"
    assert export.main([str(fake_results.root), "--model", FAILING, "--correct", "wrong", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert len(t) == 18 and not t.correct.any()
    fo = tmp_path / "fo"
    assert export.main([str(fake_results.root), "--model", FAILING, "--format", "fiftyone", "--limit", "5",
                        "--out", str(fo)]) == 0
    assert len(json.loads((fo / "samples.json").read_text())["samples"]) == 5
    assert export.main([str(fake_results.root), "--model", "nope", "--out", str(out)]) == 2
    assert "no results for model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_fiftyone_imports_the_export(fake_results, frame, tmp_path):
    fo = pytest.importorskip("fiftyone")
    view, order = _selection(frame, FAILING, Filters(sort="image_id"))
    order = order[:6]
    res = export.write_fiftyone(tmp_path / "fo", _fo_rows(frame, view, order), _details(fake_results.root, FAILING),
                                [str(fake_results.dataset)], name="biased")
    try:
        ds = fo.Dataset.from_dir(dataset_dir=str(res.directory), dataset_type=fo.types.FiftyOneDataset)
    except Exception as e:  # no MongoDB for FiftyOne here (its database package downloads one when installed)
        if type(e).__name__ in ("FiftyOneConfigError", "ServiceExecutableNotFound", "ServerSelectionTimeoutError"):
            pytest.skip(f"fiftyone is installed but cannot start its database: {e}")
        raise
    try:
        assert len(ds) == 6
        want = frame.iloc[order].set_index("image_id")
        for sample in ds:
            r = want.loc[sample["image_id"]]
            assert sample.ground_truth.label == r.label and sample.predictions.label == r.pred
            assert sample.predictions.confidence == pytest.approx(r.pred_score, abs=1e-6)
            assert Path(sample.filepath).is_file() and Path(sample.cam.map_path).is_file()
            hm = np.asarray(Image.open(sample.cam.map_path))
            assert hm.shape == (32, 48) and hm.max() == 255
            assert sample.object_share == pytest.approx(r.object_share, abs=1e-6)
            assert sample.attributes == r.attributes and sample.cf_rand_flip == FLIPPED
    finally:
        ds.delete()
