"""Dataset readers: each format -> the one manifest table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.annotations import loads
from pipeline.config import CocoDataset, FolderDataset, ManifestDataset, VocDataset
from pipeline.readers import READERS, ReaderError, read_manifest
from pipeline.readers.base import mask_roots, minimal_roots
from pipeline.schema import MANIFEST_SCHEMA


def _img(p: Path, size=(20, 10)) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(p)
    return p


def test_registry_lists_every_format():
    assert READERS.names() == ["coco", "folder", "huggingface", "manifest", "voc", "webdataset"]
    with pytest.raises(KeyError, match="valid names: coco, folder, huggingface, manifest, voc, webdataset"):
        READERS.get("yolo")


def test_folder_with_masks(tmp_path):
    _img(tmp_path / "imgs/cat/a.jpg")
    _img(tmp_path / "imgs/dog/b.png")
    (tmp_path / "imgs/dog/notes.txt").write_text("not an image")
    (tmp_path / "imgs/dog/.hidden.png").write_bytes(b"")
    _img(tmp_path / "masks/cat/a.png")
    t = read_manifest(FolderDataset(format="folder", root="imgs", masks="masks"), tmp_path)
    assert t.schema == MANIFEST_SCHEMA
    rows = {r["image_id"]: r for r in t.to_pylist()}
    # every non-hidden file is listed: a non-image becomes an error row later instead of vanishing
    assert set(rows) == {"cat/a.jpg", "dog/b.png", "dog/notes.txt"}
    assert rows["cat/a.jpg"]["label"] == "cat"
    (obj,) = loads(rows["cat/a.jpg"]["objects"])
    assert obj.category == "cat" and obj.mask_path == str(tmp_path / "masks/cat/a.png")
    # the missing mask of dog/b.png is still referenced: the worker reports it as mask_missing
    assert loads(rows["dog/b.png"]["objects"])[0].mask_path.endswith("masks/dog/b.png")
    assert rows["cat/a.jpg"]["dataset_root"] == str(tmp_path / "imgs")
    # the mask folders are recorded: the dashboard reads outlines only from what the audit read
    assert mask_roots(t) == [str(tmp_path / "masks/cat"), str(tmp_path / "masks/dog")]
    assert mask_roots(read_manifest(FolderDataset(format="folder", root="imgs"), tmp_path)) == []


def test_folder_errors_name_the_directory(tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        read_manifest(FolderDataset(format="folder", root="nope"), tmp_path)
    (tmp_path / "flat").mkdir()
    _img(tmp_path / "flat/x.png")
    with pytest.raises(ReaderError, match="no class sub-directories"):
        read_manifest(FolderDataset(format="folder", root="flat"), tmp_path)


def test_folder_limit(tmp_path):
    for i in range(5):
        _img(tmp_path / f"d/c/{i}.png")
    t = read_manifest(FolderDataset(format="folder", root="d", limit=3), tmp_path)
    assert t.num_rows == 3


def _coco(tmp_path: Path) -> Path:
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
            {"id": 2, "file_name": "sub/b.jpg", "width": 20, "height": 10},
            {"id": 3, "file_name": "c.jpg", "width": 20, "height": 10},
            {"id": 4, "file_name": "d.jpg", "width": 20, "height": 10},
        ],
        "categories": [{"id": 1, "name": "mouse"}, {"id": 2, "name": "keyboard"}, {"id": 3, "name": "cup"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [6, 1, 10, 6], "area": 60,
             "segmentation": {"size": [10, 20], "counts": [0, 200]}, "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 3, 3], "area": 9, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 6, 6], "area": 36, "iscrowd": 0},
            {"id": 14, "image_id": 3, "category_id": 2, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 15, "image_id": 4, "category_id": 99, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
        ],
    }
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_label_from_listed_categories(tmp_path):
    _coco(tmp_path)
    cfg = CocoDataset(format="coco", annotations="coco.json", images="imgs", label_categories=("mouse", "cup"))
    rows = {r["image_id"]: r for r in read_manifest(cfg, tmp_path).to_pylist()}
    # image 1: the keyboard is larger but not a label category -> label mouse; keyboard is an "other" object
    assert rows["a.jpg"]["label"] == "mouse"
    objs = loads(rows["a.jpg"]["objects"])
    assert {o.category: o.kind for o in objs} == {"mouse": "polygons", "keyboard": "rle"}
    assert rows["sub/b.jpg"]["label"] == "mouse"  # largest listed instance
    assert rows["sub/b.jpg"]["path"] == str(tmp_path / "imgs/sub/b.jpg")
    assert rows["c.jpg"]["label"] is None  # only a keyboard: audited without a label
    assert "unknown category_id 99" in rows["d.jpg"]["error"]


def test_coco_most_rule_and_skip(tmp_path):
    _coco(tmp_path)
    cfg = CocoDataset(format="coco", annotations="coco.json", label_rule="most", skip_unlabelled=True,
                      label_categories=("mouse", "cup"))
    ids = read_manifest(cfg, tmp_path).column("image_id").to_pylist()
    assert "c.jpg" not in ids


def test_coco_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReaderError, match="bad.json.*not valid JSON"):
        read_manifest(CocoDataset(format="coco", annotations="bad.json"), tmp_path)
    _coco(tmp_path)
    with pytest.raises(ReaderError, match=r"label_categories \['dog'\]"):
        read_manifest(CocoDataset(format="coco", annotations="coco.json", label_categories=("dog",)), tmp_path)


VOC = """<annotation><filename>{f}</filename><size><width>20</width><height>10</height></size>
<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>8</ymax></bndbox></object>
<object><name>ball</name><bndbox><xmin>12</xmin><ymin>2</ymin><xmax>14</xmax><ymax>4</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_are_converted_to_zero_based(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/x.xml").write_text(VOC.format(f="x.jpg"))
    (tmp_path / "Annotations/broken.xml").write_text("<annotation><filename>")
    t = read_manifest(VocDataset(format="voc", annotations="Annotations", images="JPEGImages"), tmp_path)
    rows = {r["image_id"]: r for r in t.to_pylist()}
    assert rows["x.jpg"]["label"] == "dog"
    dog, ball = loads(rows["x.jpg"]["objects"])
    assert dog.bbox == (0.0, 0.0, 10.0, 8.0) and ball.category == "ball"
    assert "broken.xml" in rows["broken"]["error"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_columns(tmp_path, suffix):
    rows = [
        {"image": "a.png", "label": "cat", "mask": "m/a.png", "bbox": None, "objects": None, "attributes": '{"bg": "grass"}'},
        {"image": "/abs/b.png", "label": "dog", "mask": None, "bbox": "[1, 2, 3, 4]", "objects": None, "attributes": None},
        {"image": "c.png", "label": "cat", "mask": None, "bbox": None,
         "objects": '[{"category": "ball", "bbox": [0, 0, 1, 1]}]', "attributes": None},
        {"image": "d.png", "label": "cat", "mask": None, "bbox": None, "objects": "[{bad json", "attributes": None},
        {"image": "", "label": "cat", "mask": None, "bbox": None, "objects": None, "attributes": None},
    ]
    p = tmp_path / f"m{suffix}"
    t = pa.Table.from_pylist(rows)
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(t, p)
    else:
        pq.write_table(t, p)
    out = {r["image_id"]: r for r in read_manifest(ManifestDataset(format="manifest", path=p.name), tmp_path).to_pylist()}
    assert out["a.png"]["path"] == str(tmp_path / "a.png")
    assert loads(out["a.png"]["objects"])[0].mask_path == str(tmp_path / "m/a.png")
    assert json.loads(out["a.png"]["attributes"]) == {"bg": "grass"}
    assert out["/abs/b.png"]["path"] == "/abs/b.png"
    assert loads(out["/abs/b.png"]["objects"])[0].bbox == (1, 2, 3, 4)
    assert loads(out["c.png"]["objects"])[0].category == "ball"
    assert "d.png" in out["d.png"]["error"] and "JSON" in out["d.png"]["error"]
    assert "empty image path" in out["row-4"]["error"]
    assert mask_roots(read_manifest(ManifestDataset(format="manifest", path=p.name), tmp_path)) == [str(tmp_path / "m")]


def test_minimal_roots_drop_nested_folders_and_merge_many_upwards():
    assert minimal_roots(["/d/m/a", "/d/m", "/d/mm", "/e/x/y"]) == ["/d/m", "/d/mm", "/e/x/y"]
    many = [f"/data/masks/{i:03d}" for i in range(100)] + ["/other/m"]
    assert minimal_roots(many, limit=8) == ["/data/masks", "/other/m"]
    assert minimal_roots([f"/{i}" for i in range(10)], limit=3) == [f"/{i}" for i in range(10)]  # never "/"


def test_manifest_requires_image_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(ReaderError, match=r"lacks required column\(s\) \['image'\]"):
        read_manifest(ManifestDataset(format="manifest", path="m.csv"), tmp_path)
