"""The synthetic cue benchmark: deterministic, growable, honest about its cue and its annotations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cuebench.synth import CUES, SynthConfig, SynthError, generate, render, synth_suite
from common.annotations import loads
from common.registry import RegistryError

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mask_path(root: Path, image: str) -> Path:
    rel = Path(image).relative_to("images")
    return root / "masks" / rel.parent / (rel.stem + ".png")


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=CUES.names())
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp(request.param), SynthConfig(cue=request.param, n=24, correlation=0.6, seed=3))


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_same_seed_same_bytes(tmp_path: Path, fmt: str) -> None:
    cfg = SynthConfig(cue="cooccur", n=9, correlation=0.5, seed=7, image_format=fmt)
    a, b = _files(generate(tmp_path / "a", cfg)), _files(generate(tmp_path / "b", cfg))
    assert a == b
    assert sum(k.startswith("images/") for k in a) == 9
    other = _files(generate(tmp_path / "c", SynthConfig(cue="cooccur", n=9, correlation=0.5, seed=8, image_format=fmt)))
    assert a["images/disk/audit_000000." + fmt] != other["images/disk/audit_000000." + fmt]


def test_growing_keeps_existing_images(tmp_path: Path) -> None:
    small = _files(generate(tmp_path / "grow", SynthConfig(cue="watermark", n=10, correlation=0.6)))
    grown = _files(generate(tmp_path / "grow", SynthConfig(cue="watermark", n=15, correlation=0.6)))
    kept = {k: v for k, v in small.items() if k.startswith(("images/", "masks/"))}
    assert kept and all(grown[k] == v for k, v in kept.items())
    assert sum(k.startswith("images/") for k in grown) == 15
    assert len(_manifest(tmp_path / "grow")) == 15
    # Appending a later range is the same as generating everything at once.
    generate(tmp_path / "grow", SynthConfig(cue="watermark", n=5, correlation=0.6, start=15))
    at_once = _files(generate(tmp_path / "once", SynthConfig(cue="watermark", n=20, correlation=0.6)))
    assert _files(tmp_path / "grow") == at_once
    assert json.loads(at_once["synth.json"])["n_images"] == 20


def test_growing_with_another_config_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, SynthConfig(cue="background", n=3, correlation=0.6))
    with pytest.raises(SynthError, match="correlation"):
        generate(tmp_path, SynthConfig(cue="background", n=6, correlation=0.9))


@pytest.mark.parametrize(
    ("cue", "correlation"),
    [("background", 0.0), ("background", 1 / 3), ("background", 0.97), ("cooccur", 0.6), ("watermark", 0.6)],
)
def test_correlation_is_honoured(cue: str, correlation: float) -> None:
    cfg = SynthConfig(cue=cue, n=0, correlation=correlation, size=32, seed=1)
    n = 450
    scenes = [render(cfg, i) for i in range(n)]
    aligned = np.array([s.attributes["cue_aligned"] == "yes" for s in scenes])
    assert all((s.attributes["cue_class"] == s.label) == a for s, a in zip(scenes, aligned, strict=True))
    assert abs(aligned.mean() - correlation) < 4 * np.sqrt(correlation * (1 - correlation) / n) + 1e-9
    if correlation == 1 / 3:  # independent: every (label, cue class) cell near 1/9
        cells = np.zeros((3, 3))
        for s in scenes:
            cells[cfg.classes.index(s.label), cfg.classes.index(s.attributes["cue_class"])] += 1
        assert np.all(np.abs(cells / n - 1 / 9) < 0.05)


def test_background_hue_follows_the_cue_class() -> None:
    cfg = SynthConfig(cue="background", n=0, correlation=0.6)
    for i in range(30):
        s = render(cfg, i)
        k = cfg.classes.index(s.attributes["cue_class"])
        hue = float(s.attributes["background_hue"])
        assert min(abs(hue - k / 3), 1 - abs(hue - k / 3)) <= 0.031
        corner = np.asarray(s.image, dtype=np.float32)[:6, :6].reshape(-1, 3)
        assert corner.std(axis=0).max() > 2.0  # textured, not flat


def test_masks_cover_the_drawn_object(dataset: Path) -> None:
    for row in _manifest(dataset):
        img = np.asarray(Image.open(dataset / row["image"]).convert("RGB"), dtype=np.float32)
        mask = np.asarray(Image.open(_mask_path(dataset, row["image"]))) > 0
        assert 0.06 < mask.mean() < 0.27
        colour = np.median(img[mask], axis=0)
        close = np.linalg.norm(img - colour, axis=-1) < 3.0  # pixels of the (flat) object colour
        assert close[mask].mean() > 0.75  # mask pixels are object pixels (edges are anti-aliased)
        assert close[~mask].sum() <= 0.02 * mask.sum()  # object-coloured pixels lie inside the mask


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_coco_polygons_match_the_masks(dataset: Path) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "coco.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    cfg = json.loads((dataset / "synth.json").read_text())["config"]
    assert set(cfg["classes"]) <= set(names.values())
    for img in coco.loadImgs(coco.getImgIds()):
        assert (dataset / img["file_name"]).is_file() and img["width"] == img["height"] == 64
        label = Path(img["file_name"]).parent.name
        mask = np.asarray(Image.open(dataset / "masks" / label / (Path(img["file_name"]).stem + ".png"))) > 0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        targets = [a for a in anns if names[a["category_id"]] == label]
        assert len(targets) == 1 and all(a["iscrowd"] == 0 for a in anns)
        poly = coco.annToMask(targets[0]) > 0
        assert (poly & mask).sum() / (poly | mask).sum() > 0.9
        assert targets[0]["area"] == mask.sum()


def test_manifest_objects_and_attributes(dataset: Path) -> None:
    rows = _manifest(dataset)
    meta = json.loads((dataset / "synth.json").read_text())
    cue = meta["cue"]["name"]
    assert len(rows) == meta["n_images"] == 24
    assert sum(c["images"] for c in meta["counts"].values()) == 24
    for row in rows:
        objects, attrs = loads(row["objects"]), json.loads(row["attributes"])
        assert Path(row["image"]).parent.name == row["label"]
        assert objects[0].category == row["label"] and objects[0].kind == "polygons"
        assert attrs["cue"] == cue and attrs["cue_aligned"] in ("yes", "no")
        assert all(isinstance(v, str) and len(v) <= 32 for v in attrs.values())
        if cue == "cooccur":  # the distractor is an annotated object of its own category
            assert [o.category for o in objects[1:]] == [attrs["distractor"]]
            assert attrs["distractor"] == meta["cue"]["per_class"][attrs["cue_class"]]
        else:
            assert len(objects) == 1
        if cue == "watermark":  # recorded, not annotated; dark badge in the corner, clear of the object
            x, y, w, h = (int(v) for v in attrs["watermark_box"].split(","))
            img = np.asarray(Image.open(dataset / row["image"]).convert("L"), dtype=np.float32)
            badge = img[y : y + h, x : x + w]
            assert x + w < 64 and y + h < 64 and (badge < 40).mean() > 0.3 and (badge > 200).mean() > 0.1
            mask = np.asarray(Image.open(_mask_path(dataset, row["image"])))
            assert mask[y : y + h, x : x + w].max() == 0


def test_synth_suite_splits(tmp_path: Path) -> None:
    paths = synth_suite(tmp_path, "cooccur", train_n=12, audit_n=9, train_correlation=1.0, seed=2, size=48)
    assert set(paths) == {"train", "audit", "cue_reversed"}
    reversed_rows = _manifest(paths["cue_reversed"])
    assert len(reversed_rows) == 9 and all(json.loads(r["attributes"])["cue_aligned"] == "no" for r in reversed_rows)
    assert all(json.loads(r["attributes"])["cue_aligned"] == "yes" for r in _manifest(paths["train"]))
    assert Image.open(paths["audit"] / _manifest(paths["audit"])[0]["image"]).size == (48, 48)
    # splits are distinct streams
    assert _files(paths["train"])["images/disk/train_000000.png"] != _files(paths["audit"])["images/disk/audit_000000.png"]


def test_bad_configs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="valid names: background, cooccur, watermark"):
        SynthConfig(cue="texture", n=1, correlation=0.5)
    with pytest.raises(SynthError, match="correlation"):
        SynthConfig(cue="background", n=1, correlation=1.5)
    with pytest.raises(SynthError, match="split"):
        SynthConfig(cue="background", n=1, correlation=0.5, split="../x")
    with pytest.raises(SynthError, match="4 variants"):
        SynthConfig(cue="watermark", n=1, correlation=0.5, classes=("disk", "square", "triangle", "star", "disk2"))
    (tmp_path / "images" / "disk").mkdir(parents=True)
    (tmp_path / "images" / "disk" / "x.png").write_bytes(b"")
    with pytest.raises(SynthError, match="synth.json"):
        generate(tmp_path, SynthConfig(cue="background", n=1, correlation=0.5))


def test_four_classes_render() -> None:
    cfg = SynthConfig(cue="cooccur", n=0, correlation=1.0, classes=("disk", "square", "triangle", "star"))
    assert {render(cfg, i).label for i in range(4)} == set(cfg.classes)


def test_synth_imports_no_torch() -> None:
    code = "import sys, cuebench.synth; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT).returncode == 0
