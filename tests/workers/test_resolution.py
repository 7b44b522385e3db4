"""Resolution-aware saliency: a finer layer when the objects are too small for the CAM layer's grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.annotations import ObjectAnn, dumps
from common.geometry import Geometry
from pipeline.config import parse_config
from pipeline.readers import read_manifest
from workers.models import ModelSpec, Preprocess
from workers.resolution import decide_fine_layer, object_areas, sample_rows

PRE = Preprocess(size=(64, 64), resize="resize", crop_pct=1.0)
RESNET = ModelSpec(name="r", source="python:workers.archs:tiny_resnet", num_classes=3, preprocess=PRE)


def _rows(tmp_path, box: int, n: int = 6, size: tuple[int, int] = (128, 96)) -> list[dict]:
    rows = []
    for i in range(n):
        p = tmp_path / f"{box}_{i}.png"
        Image.new("RGB", size, (i * 20, 80, 120)).save(p)
        rows.append({"image_id": f"{box}/{i}", "path": str(p), "label": "a",
                     "objects": dumps([ObjectAnn("a", bbox=(4, 4, box, box)), ObjectAnn("b", bbox=(0, 0, 90, 90))])})
    return rows


def test_object_areas_go_through_the_models_geometry(tmp_path):
    rows = _rows(tmp_path, 32)
    # 128x96 squashed to 64x64: a 32x32 box covers (32/128) * (32/96) of the input.
    np.testing.assert_allclose(object_areas(rows, PRE), [32 / 128 * 32 / 96] * 6, rtol=1e-6)
    crop = Preprocess(size=(64, 64), resize="resize_crop", crop_pct=1.0)  # a centre crop cuts the box's left
    x0, y0, x1, y1 = Geometry.plan(128, 96, crop).box
    want = (4 + 32 - x0) * 32 / ((x1 - x0) * (y1 - y0))
    assert x0 > 4 and object_areas(rows, crop)[0] == pytest.approx(want, rel=1e-6)


def test_sample_is_deterministic_and_skips_unannotated_rows(tmp_path):
    import pyarrow as pa

    rows = _rows(tmp_path, 8, n=10) + [{"image_id": "x", "path": "x.png", "label": "a", "objects": None}]
    a = [r["image_id"] for r in sample_rows(rows, 4)]
    assert a == [r["image_id"] for r in sample_rows(list(reversed(rows)), 4)] and "x" not in a
    table = pa.Table.from_pylist([{**r, "error": None} for r in reversed(rows)])
    assert [r["image_id"] for r in sample_rows(table, 4)] == a


def test_small_objects_on_a_coarse_map_get_the_next_finer_stage(tmp_path):
    # tiny_resnet at 64 px: layer4 is 4x4. A 12 px box in a 128x96 image covers 0.012 of the input.
    small = decide_fine_layer(RESNET, _rows(tmp_path, 12))
    assert (small.layer, small.grid, small.fine_layer, small.fine_grid) == ("layer4", (4, 4), "layer3", (8, 8))
    assert small.median_cells == pytest.approx(12 / 128 * 12 / 96 * 16, rel=1e-6)
    assert "also auditing layer3 (8x8)" in small.reason
    big = decide_fine_layer(RESNET, _rows(tmp_path, 90))
    assert big.fine_layer is None and "fine enough" in big.reason
    named = decide_fine_layer(RESNET, _rows(tmp_path, 12), layer="layer3")  # 64 cells: 0.75 cells
    assert named.fine_layer == "layer2"
    none = decide_fine_layer(RESNET, [])
    assert none.fine_layer is None and none.images == 0


def test_run_plan_resolves_fine_layer_auto_into_the_fingerprint(tmp_path):
    import csv

    rows = _rows(tmp_path, 12)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "bbox"])
        for r in rows:
            w.writerow([r["path"], "a", "[4, 4, 12, 12]"])
    from pipeline.run import plan_models

    model = {"name": "r", "source": "python:workers.archs:tiny_resnet", "num_classes": 3,
             "classes": ["a", "b", "c"], "preprocess": {"size": 64, "resize": "resize"}}
    raw = {"name": "t", "output": str(tmp_path / "out"), "dataset": {"format": "manifest", "path": str(tmp_path / "m.csv")},
           "models": [model]}
    loaded = parse_config(raw, tmp_path / "audit.yaml")
    manifest = read_manifest(loaded.config.dataset, loaded.base)
    auto = plan_models(loaded, manifest)[0]
    assert auto.opts.fine_layer == "layer3" and "median object covers" in auto.fine_reason
    off = plan_models(parse_config({**raw, "fine_layer": "none"}, tmp_path / "audit.yaml"), manifest)[0]
    assert off.opts.fine_layer is None and off.fingerprint != auto.fingerprint
    named = plan_models(parse_config({**raw, "models": [{**model, "fine_layer": "layer2"}]}, tmp_path / "a.yaml"),
                        manifest)[0]
    assert named.opts.fine_layer == "layer2" and named.fine_reason == "configured"
