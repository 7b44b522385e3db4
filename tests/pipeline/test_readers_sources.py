"""The huggingface and webdataset readers, and every reader over an S3 bucket: the same manifest.

Test data are written by the libraries users write them with (``datasets``, ``webdataset``); the
readers themselves use only pyarrow and the standard library.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.annotations import ObjectAnn, loads
from common.sources import read_bytes
from pipeline.config import ConfigError, HuggingFaceDataset, WebDatasetDataset, parse_config
from pipeline.readers import ReaderError, read_manifest
from pipeline.schema import MANIFEST_SCHEMA


def _png(value: int, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


POLY = [[1.0, 1.0, 6.0, 1.0, 6.0, 5.0]]


def _hf_dataset(list_of_structs: bool = False):
    datasets = pytest.importorskip("datasets")
    cats = datasets.ClassLabel(names=["cat", "dog", "ball"])
    if list_of_structs:
        objects = datasets.List({"bbox": datasets.List(datasets.Value("float32")), "category": cats})
        objs = [[{"bbox": [1, 2, 4, 6], "category": 2}], [], [{"bbox": [0, 0, 3, 3], "category": 0}]]
    else:
        objects = {"bbox": datasets.List(datasets.List(datasets.Value("float32"))), "category": datasets.List(cats),
                   "segmentation": datasets.List(datasets.List(datasets.List(datasets.Value("float32"))))}
        objs = [{"bbox": [[1, 2, 3, 4]], "category": [2], "segmentation": [POLY]},
                {"bbox": [], "category": [], "segmentation": []},
                {"bbox": [[0, 0, 3, 3]], "category": [0], "segmentation": [[]]}]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                               "objects": objects, "name": datasets.Value("string"),
                               "cue": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "image": [{"bytes": _png(v), "path": f"{v}.png"} for v in (10, 20, 30)],
        "label": [0, 1, -1], "objects": objs, "name": ["a", "b", "c"], "cue": ["x", "y", "x"]}, features=feats)


def _hf_cfg(path, **kw) -> HuggingFaceDataset:
    return HuggingFaceDataset(format="huggingface", path=str(path), id_column="name", attributes=("cue",), **kw)


def test_huggingface_save_to_disk(tmp_path):
    _hf_dataset().save_to_disk(str(tmp_path / "ds"))
    t = read_manifest(_hf_cfg(tmp_path / "ds"), tmp_path)
    assert t.schema == MANIFEST_SCHEMA
    rows = t.to_pylist()
    assert [r["image_id"] for r in rows] == ["a", "b", "c"]
    assert [r["label"] for r in rows] == ["cat", "dog", None]  # -1 is ClassLabel's "no label"
    assert [json.loads(r["attributes"]) for r in rows] == [{"cue": "x"}, {"cue": "y"}, {"cue": "x"}]
    assert loads(rows[0]["objects"]) == [ObjectAnn("ball", polygons=tuple(tuple(r) for r in POLY))]
    assert loads(rows[2]["objects"]) == [ObjectAnn("cat", bbox=(0.0, 0.0, 3.0, 3.0))]  # empty polygon -> box
    assert rows[1]["objects"] is None and {r["dataset_root"] for r in rows} == {str(tmp_path / "ds")}
    assert all(r["path"].startswith("arrow://image/") and "?offset=" in r["path"] for r in rows)
    assert [read_bytes(r["path"]) for r in rows] == [_png(v) for v in (10, 20, 30)]


def test_huggingface_dataset_dict_needs_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": _hf_dataset(), "test": _hf_dataset()}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ReaderError, match=r"set split to one of \['train', 'test'\]|set split to one of \['test', 'train'\]"):
        read_manifest(_hf_cfg(tmp_path / "dd"), tmp_path)
    t = read_manifest(_hf_cfg(tmp_path / "dd", split="test"), tmp_path)
    assert t.num_rows == 3 and "/test/" in t.column("path")[0].as_py()


def test_huggingface_parquet_layout_split_files_and_xyxy_boxes(tmp_path):
    ds = _hf_dataset(list_of_structs=True)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        ds.to_parquet(str(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    t = read_manifest(_hf_cfg(tmp_path / "hub", split="validation", bbox_format="xyxy"), tmp_path)
    rows = t.to_pylist()
    assert len(rows) == 3 and all("validation-00000" in r["path"] for r in rows)
    assert rows[0]["path"].startswith("parquet://image/0::")
    assert loads(rows[0]["objects"]) == [ObjectAnn("ball", bbox=(1.0, 2.0, 3.0, 4.0))]  # [x0,y0,x1,y1] -> xywh
    assert read_bytes(rows[2]["path"]) == _png(30)
    # no label column: the label is picked from the objects, like COCO's
    nolabel = read_manifest(HuggingFaceDataset(format="huggingface", path=str(tmp_path / "hub"), split="train",
                                               label_column=None, label_categories=("cat",)), tmp_path)
    assert nolabel.column("label").to_pylist() == [None, None, "cat"]
    assert nolabel.column("image_id").to_pylist() == ["train/0", "train/1", "train/2"]


def test_huggingface_errors_name_the_dataset(tmp_path):
    _hf_dataset().save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ReaderError, match="no image column 'picture'"):
        read_manifest(_hf_cfg(tmp_path / "ds", image_column="picture"), tmp_path)
    with pytest.raises(ReaderError, match="attributes \\['nope'\\] are not columns"):
        read_manifest(HuggingFaceDataset(format="huggingface", path=str(tmp_path / "ds"), attributes=("nope",)),
                      tmp_path)
    with pytest.raises(ReaderError, match="does not exist"):
        read_manifest(_hf_cfg(tmp_path / "missing"), tmp_path)


def _shards(tmp_path: Path) -> Path:
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "wds"
    out.mkdir()
    samples = [
        {"__key__": "s/000000", "png": _png(10), "cls": 1},
        {"__key__": "s/000001", "jpg": _jpg(), "json": {"label": "cat", "attributes": {"cue": "x"},
                                                          "objects": [{"category": "ball", "bbox": [1, 1, 2, 2]}]}},
        {"__key__": "s/000002", "png": _png(30), "json": {"label": "dog"}, "mask.png": _png(255)},
        {"__key__": "s/000003", "txt": "no image here"},
    ]
    for i in range(2):
        with wds.TarWriter(str(out / f"part-{i:02d}.tar")) as w:
            for s in samples[2 * i: 2 * i + 2]:
                w.write(s)
    return out


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_shards_by_pattern_and_by_folder(tmp_path):
    out = _shards(tmp_path)
    cfg = WebDatasetDataset(format="webdataset", shards=str(out / "part-{00..01}.tar"), classes=("cat", "dog"))
    rows = {r["image_id"]: r for r in read_manifest(cfg, tmp_path).to_pylist()}
    assert list(rows) == ["s/000000", "s/000001", "s/000002", "s/000003"]
    assert rows["s/000000"]["label"] == "dog"  # .cls index 1 into classes
    assert rows["s/000001"]["label"] == "cat" and json.loads(rows["s/000001"]["attributes"]) == {"cue": "x"}
    assert loads(rows["s/000001"]["objects"]) == [ObjectAnn("ball", bbox=(1.0, 1.0, 2.0, 2.0))]
    (mask,) = loads(rows["s/000002"]["objects"])
    assert mask.category == "dog" and read_bytes(mask.mask_path) == _png(255)
    assert read_bytes(rows["s/000001"]["path"]) == _jpg() and read_bytes(rows["s/000002"]["path"]) == _png(30)
    assert "no image member" in rows["s/000003"]["error"]
    assert {r["dataset_root"] for r in rows.values()} == {str(out)}
    by_folder = read_manifest(WebDatasetDataset(format="webdataset", shards=str(out)), tmp_path)
    assert by_folder.column("image_id").to_pylist() == list(rows)
    assert by_folder.column("label").to_pylist()[0] == "1"  # no classes: the .cls text is the label


def test_webdataset_config_errors_name_the_file_and_field(tmp_path):
    base = {"name": "t", "output": "out", "models": [{"name": "m", "source": "timm:resnet18"}]}
    with pytest.raises(ConfigError, match=r"audit.yaml: dataset.webdataset.shards: .*unbalanced braces"):
        parse_config({**base, "dataset": {"format": "webdataset", "shards": "a-{0..3.tar"}}, tmp_path / "audit.yaml")
    with pytest.raises(ConfigError, match=r"audit.yaml: storage.endpoint_url: String should match pattern"):
        parse_config({**base, "dataset": {"format": "folder", "root": "."}, "storage": {"endpoint_url": "localhost"}},
                     tmp_path / "audit.yaml")
    with pytest.raises(ConfigError, match=r"audit.yaml: dataset.huggingface.bbox_format"):
        parse_config({**base, "dataset": {"format": "huggingface", "path": "x", "bbox_format": "cxcywh"}},
                     tmp_path / "audit.yaml")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from cuebench.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth"), SynthConfig(cue="cooccur", n=6, correlation=0.6, seed=3))


def test_every_file_reader_reads_a_bucket_like_a_folder(synth, s3, tmp_path):
    bucket = s3.make_bucket(f"readers-{uuid.uuid4().hex[:8]}")
    s3.upload(synth, f"{bucket}/synth")
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation><filename>images/disk/x.png</filename><object><name>disk</name>"
                               "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox>"
                               "</object></annotation>")
    s3.upload(voc, f"{bucket}/voc")
    cats = ["disk", "square", "triangle"]
    for fmt, local, remote in [
        ("folder", {"root": str(synth / "images"), "masks": str(synth / "masks")},
         {"root": f"{bucket}/synth/images", "masks": f"{bucket}/synth/masks"}),
        ("coco", {"annotations": str(synth / "coco.json"), "images": str(synth), "label_categories": cats},
         {"annotations": f"{bucket}/synth/coco.json", "images": f"{bucket}/synth", "label_categories": cats}),
        ("manifest", {"path": str(synth / "manifest.csv")}, {"path": f"{bucket}/synth/manifest.csv"}),
        ("voc", {"annotations": str(voc), "images": str(synth)},
         {"annotations": f"{bucket}/voc", "images": f"{bucket}/synth"}),
    ]:
        base = {"name": "t", "output": "o", "models": [{"name": "m", "source": "timm:resnet18"}]}
        a = parse_config({**base, "dataset": {"format": fmt, **local}}, tmp_path / "a.yaml").config.dataset
        b = parse_config({**base, "dataset": {"format": fmt, **remote}}, tmp_path / "a.yaml").config.dataset
        ta, tb = read_manifest(a, tmp_path).to_pylist(), read_manifest(b, tmp_path).to_pylist()
        local_root, remote_root = ta[0]["dataset_root"], tb[0]["dataset_root"]
        assert remote_root.startswith(f"{bucket}/"), remote_root

        def swap(v, lr=local_root, rr=remote_root, lm=str(synth), rm=f"{bucket}/synth"):
            return v.replace(lr, rr).replace(lm, rm) if isinstance(v, str) else v

        assert [{k: swap(v) for k, v in r.items()} for r in ta] == tb, fmt
