"""The synthetic cue benchmark: deterministic, growable, honest about its cue and its annotations."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.annotations import loads
from common.registry import RegistryError
from cuebench.synth import (
    CUES,
    PUBLIC_MANIFEST,
    SynthConfig,
    SynthError,
    gaussian_blur,
    generate,
    render,
    synth_suite,
)

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mask_path(root: Path, image: str) -> Path:
    rel = Path(image).relative_to("images")
    return root / "masks" / rel.parent / (rel.stem + ".png")


def _manifest(root: Path, name: str = "manifest.csv") -> list[dict[str, str]]:
    with open(root / name, newline="") as f:
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
        if cue in ("cooccur", "keyboard"):  # the distractor is an annotated object of its own category
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
    with pytest.raises(RegistryError, match="valid names: background, cooccur, keyboard, texture, watermark"):
        SynthConfig(cue="logo", n=1, correlation=0.5)
    with pytest.raises(SynthError, match="salience"):
        SynthConfig(cue="background", n=1, correlation=0.5, salience=0.0)
    with pytest.raises(SynthError, match="backdrop"):
        SynthConfig(cue="background", n=1, correlation=0.5, backdrop="beach")  # type: ignore[arg-type]
    with pytest.raises(SynthError, match="edge_blur"):
        SynthConfig(cue="background", n=1, correlation=0.5, edge_blur=-1.0)
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


# ------------------------------------------------------------------------------- later additions


def _digest(cfg: SynthConfig, n: int = 3) -> str:
    import hashlib

    h = hashlib.sha256()
    for i in range(n):
        scene = render(cfg, i)
        h.update(np.asarray(scene.image).tobytes())
        h.update(np.asarray(scene.mask).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(("cue", "digest"), [("background", "34f7e80158ec0f68"), ("cooccur", "d0a3eb6e642579b3"),
                                             ("watermark", "6ec0ba902bf1d994")])
def test_defaults_draw_what_version_1_drew(cue: str, digest: str) -> None:
    """The pixels of SYNTH_VERSION 1 (commit 9c1b814): salience, backdrops and soft edges left the
    default rendering alone, so cached datasets and models stay valid. If this fails on purpose,
    bump SYNTH_VERSION and update the digests."""
    cfg = SynthConfig(cue=cue, n=0, correlation=0.6)
    assert _digest(cfg) == digest
    assert "salience" not in cfg.key() and "backdrop" not in cfg.stream() and "edge_blur" not in cfg.stream()
    assert SynthConfig(cue=cue, n=0, correlation=0.6, salience=0.5).stream()["salience"] == 0.5


def test_a_later_field_is_part_of_the_stream(tmp_path: Path) -> None:
    generate(tmp_path, SynthConfig(cue="watermark", n=3, correlation=0.6, salience=0.5))
    with pytest.raises(SynthError, match="salience"):
        generate(tmp_path, SynthConfig(cue="watermark", n=6, correlation=0.6))


def test_public_manifest_keeps_only_what_a_real_dataset_has(tmp_path: Path) -> None:
    for cue in ("background", "texture", "keyboard", "watermark"):
        out = generate(tmp_path / cue, SynthConfig(cue=cue, n=9, correlation=0.6, backdrop="mixed"))
        full, public = _manifest(out), _manifest(out, PUBLIC_MANIFEST)
        assert [(r["image"], r["label"], r["objects"]) for r in public] == [(r["image"], r["label"], r["objects"]) for r in full]
        for f, p in zip(full, public, strict=True):
            attrs = json.loads(p["attributes"])
            assert {"cue_aligned", "cue_class", "background_hue", "cue", "backdrop"} <= set(json.loads(f["attributes"]))
            if cue == "watermark":
                assert attrs == {"watermark": json.loads(f["attributes"])["watermark"]}
            else:
                assert attrs == {}


def _background_pixels(scene) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float image in [0, 1] and the (H, W) mask of pixels at least 3 px from every object."""
    img = np.asarray(scene.image, dtype=np.float32) / 255
    near = np.zeros(img.shape[:2], dtype=bool)
    for inst in scene.instances:
        near |= inst.mask
    for _ in range(3):  # dilate by 3 px (4-neighbourhood)
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
    return img, ~near


def _class_separation(cue: str, n: int = 240) -> float:
    """Largest distance between two cue classes' mean background colours, in pooled within-class SDs."""
    cfg = SynthConfig(cue=cue, n=0, correlation=1.0, seed=4, backdrop="mixed")
    means: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        scene = render(cfg, i)
        img, bg = _background_pixels(scene)
        means.setdefault(scene.attributes["cue_class"], []).append(img[bg].mean(0))
    cent = {k: np.mean(v, 0) for k, v in means.items()}
    sd = np.sqrt(np.mean([np.var(v, 0) for v in means.values()], 0)).mean()
    return max(np.abs(cent[a] - cent[b]).max() for a in cent for b in cent) / sd


def test_texture_is_invisible_to_colour_statistics_and_background_colour_is_not() -> None:
    assert _class_separation("texture") < 0.6  # centroids within sampling noise (SE of a difference ~ 0.16 SD)
    assert _class_separation("background") > 1.5


@pytest.mark.parametrize("salience", [0.3, 1.0])
def test_texture_stripes_follow_the_cue_class(salience: float) -> None:
    """The dominant gradient orientation of the background (structure tensor, an independent oracle)
    is the cue class's stripe angle k * 180 / 3 degrees."""
    cfg = SynthConfig(cue="texture", n=0, correlation=0.5, seed=2, salience=salience)
    for i in range(12):
        scene = render(cfg, i)
        img, bg = _background_pixels(scene)
        grey = img.mean(-1)
        gy, gx = np.gradient(grey)
        jxx, jyy, jxy = (gx * gx)[bg].sum(), (gy * gy)[bg].sum(), (gx * gy)[bg].sum()
        angle = math.degrees(0.5 * math.atan2(2 * jxy, jxx - jyy)) % 180
        want = cfg.classes.index(scene.attributes["cue_class"]) * 60
        assert min(abs(angle - want), 180 - abs(angle - want)) < 12, (i, angle, want)


def test_keyboard_sits_beside_the_target() -> None:
    cfg = SynthConfig(cue="keyboard", n=0, correlation=0.6, seed=5)
    free = SynthConfig(cue="cooccur", n=0, correlation=0.6, seed=5)

    def gap(c: SynthConfig, i: int) -> float:
        target, distractor = render(c, i).instances
        ty, tx = np.nonzero(target.mask)
        dy, dx = np.nonzero(distractor.mask)
        return float(np.sqrt((tx[:, None] - dx[None]) ** 2 + (ty[:, None] - dy[None]) ** 2).min())

    beside = [gap(cfg, i) for i in range(20)]
    anywhere = [gap(free, i) for i in range(20)]
    # A 2 px margin between the boxes, then as close as there is room; the pattern's own gaps add a few px.
    assert min(beside) >= 2 and np.median(beside) <= 6 and max(beside) <= 10, beside
    assert np.median(anywhere) > np.median(beside) + 3, anywhere


def test_salience_scales_each_cue() -> None:
    k = 3
    for sal in (0.25, 1.0):
        cfg = SynthConfig(cue="background", n=0, correlation=0.5, salience=sal)
        for i in range(9):
            scene = render(cfg, i)
            want = sal * cfg.classes.index(scene.attributes["cue_class"]) / k
            hue = float(scene.attributes["background_hue"])
            assert min(abs(hue - want), 1 - abs(hue - want)) <= 0.031
    sizes = {}
    for sal in (0.4, 1.0):
        cfg = SynthConfig(cue="cooccur", n=0, correlation=0.5, salience=sal)
        sizes[sal] = np.mean([render(cfg, i).instances[1].shape.bounds()[2] - render(cfg, i).instances[1].shape.bounds()[0]
                              for i in range(10)])
    assert sizes[0.4] / sizes[1.0] == pytest.approx(0.7, abs=0.08)
    glyph = {}
    for sal in (0.5, 1.0):
        scene = render(SynthConfig(cue="watermark", n=0, correlation=0.5, salience=sal), 0)
        x, y, w, h = (int(v) for v in scene.attributes["watermark_box"].split(","))
        glyph[sal] = (w, np.asarray(scene.image.convert("L"), dtype=np.float32)[y : y + h, x : x + w].max())
    assert glyph[0.5][0] < glyph[1.0][0] and glyph[0.5][1] < 0.65 * glyph[1.0][1]


def test_soft_edges_keep_the_half_coverage_mask(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    sharp = SynthConfig(cue="background", n=0, correlation=0.6, seed=1)
    soft = SynthConfig(cue="background", n=0, correlation=0.6, seed=1, edge_blur=1.0)
    for i in range(6):
        a, b = render(sharp, i), render(soft, i)
        ma, mb = np.asarray(a.mask) > 0, np.asarray(b.mask) > 0
        assert (ma & mb).sum() / (ma | mb).sum() > 0.9  # same object, same 0.5 level (corners round off)
        poly = b.instances[0].shape.coco_polygons()
        rles = mask_utils.frPyObjects([list(r) for r in poly], 64, 64)
        pm = mask_utils.decode(mask_utils.merge(rles)) > 0
        assert (pm & mb).sum() / (pm | mb).sum() > 0.88
        # The edge is wider: more pixels strictly between background and object colour.
        def partial(scene) -> int:
            img = np.asarray(scene.image, dtype=np.float32)
            inside = np.median(img[np.asarray(scene.mask) > 0], axis=0)
            d = np.linalg.norm(img - inside, axis=-1)
            return int(((d > 20) & (d < 0.6 * np.percentile(d, 90))).sum())
        assert partial(b) > partial(a)
    blurred = gaussian_blur(np.pad(np.ones((4, 4), np.float32), 6), 1.0)
    assert blurred.sum() == pytest.approx(16.0, rel=1e-5) and blurred.max() < 1.0


def test_photo_backdrops_are_crops_of_the_bundled_photos_tinted_by_the_cue() -> None:
    cfg = SynthConfig(cue="background", n=0, correlation=1.0, seed=3, backdrop="photo")
    tex = SynthConfig(cue="background", n=0, correlation=1.0, seed=3)
    for i in range(6):
        scene, plain = render(cfg, i), render(tex, i)
        assert scene.attributes["backdrop"] == "photo" and "backdrop" not in plain.attributes
        img, bg = _background_pixels(scene)
        ref, ref_bg = _background_pixels(plain)
        # Same colour (the cue), other structure: photo edges are stronger than the procedural shading's.
        assert np.abs(img[bg].mean(0) - ref[ref_bg].mean(0)).max() < 0.08
        edges = lambda im, m: np.abs(np.diff(im.mean(-1), axis=1))[m[:, 1:]].mean()
        assert edges(img, bg) > edges(ref, ref_bg)
    kinds = {render(SynthConfig(cue="texture", n=0, correlation=0.5, backdrop="mixed"), i).attributes["backdrop"]
             for i in range(12)}
    assert kinds == {"photo", "texture"}
