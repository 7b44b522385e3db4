"""Path guard, colormaps, CAM upsampling/overlay, outlines and mask roots: exact values on tiny inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from common.annotations import ObjectAnn, dumps
from common.rle import decode_rle
from dashboard.images import (
    COLORMAPS,
    OverlayStyle,
    UnsafePathError,
    allowed_roots,
    cam_heat,
    colormap,
    contour,
    draw_outlines,
    figure,
    guard_path,
    map_titles,
    normalise,
    overlay,
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    (root / "cls").mkdir(parents=True)
    img = root / "cls" / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(img)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    return root, img, secret


# ---------------------------------------------------------------------------------------------
# Path guard


def test_guard_serves_a_file_inside_the_root(tree):
    root, img, _ = tree
    assert guard_path(str(img), [str(root)]) == img.resolve()
    assert guard_path("cls/a.png", [str(root)], base=str(root)) == img.resolve()  # relative to the row's root


@pytest.mark.parametrize("path", ["/etc/passwd", "{root}/../secret.png", "{root}/cls/../../secret.png"])
def test_guard_refuses_paths_outside_the_root(tree, path):
    root, _, _ = tree
    with pytest.raises(UnsafePathError, match="outside the audited dataset roots"):
        guard_path(path.format(root=root), [str(root)])


def test_guard_refuses_relative_traversal_from_the_base(tree):
    root, _, _ = tree
    with pytest.raises(UnsafePathError, match="outside"):
        guard_path("../secret.png", [str(root)], base=str(root))


def test_guard_follows_symlinks_to_where_they_lead(tree):
    root, _, secret = tree
    link = root / "cls" / "link.png"
    os.symlink(secret, link)
    with pytest.raises(UnsafePathError, match="resolves to"):
        guard_path(str(link), [str(root)])
    # a symlinked *root* is fine: both sides are resolved
    alias = root.parent / "alias"
    os.symlink(root, alias)
    assert guard_path(str(alias / "cls" / "a.png"), [str(alias)]) == (root / "cls" / "a.png").resolve()


def test_guard_refuses_missing_files_filesystem_roots_and_empty_paths(tree):
    root, _, _ = tree
    with pytest.raises(UnsafePathError, match="does not exist"):
        guard_path(str(root / "cls" / "nope.png"), [str(root)])
    with pytest.raises(UnsafePathError, match="is a directory|not a regular file"):
        guard_path(str(root / "cls"), [str(root)])
    with pytest.raises(UnsafePathError, match="no dataset root"):
        guard_path("/etc/passwd", ["/"])
    with pytest.raises(UnsafePathError, match="no image path"):
        guard_path(None, [str(root)])
    with pytest.raises(UnsafePathError, match="relative"):
        guard_path("cls/a.png", [str(root)])


def test_allowed_roots_prefer_the_run_records():
    assert allowed_roots("/evil", ["/data/a", "/data/b"]) == ["/data/a", "/data/b"]
    assert allowed_roots("/data/x", []) == ["/data/x"]
    assert allowed_roots(None, []) == []


# ---------------------------------------------------------------------------------------------
# Colour map and overlay


VIRIDIS_0, VIRIDIS_1 = np.array([68, 1, 84]) / 255, np.array([253, 231, 37]) / 255


def test_colormaps_end_where_matplotlib_does_and_clip():
    c = colormap(np.array([0.0, 1.0, -3.0, 7.0, np.nan]), "viridis")
    np.testing.assert_allclose(c[0], VIRIDIS_0)
    np.testing.assert_allclose(c[1], VIRIDIS_1)
    np.testing.assert_allclose(c[2], c[0])  # clipped
    np.testing.assert_allclose(c[3], c[1])
    np.testing.assert_allclose(c[4], c[0])  # NaN counts as cold
    assert colormap(np.zeros((2, 3)), "turbo").shape == (2, 3, 3)
    with pytest.raises(ValueError, match="unknown colormap 'jet'; choose one of viridis, turbo"):
        colormap(np.zeros(1), "jet")


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormaps_match_matplotlib(name):
    mpl = pytest.importorskip("matplotlib")
    x = np.linspace(0, 1, 2001)
    lut = mpl.colormaps[name](np.linspace(0, 1, 256))[:, :3]  # the original 256 entries, linearly interpolated
    ref = np.stack([np.interp(x, np.linspace(0, 1, 256), lut[:, k]) for k in range(3)], -1)
    assert np.abs(colormap(x, name) - ref).max() <= 3 / 255


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB in [0, 1] (an independent formula: sRGB -> linear -> Y -> L*)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


def test_viridis_lightness_rises_evenly_unlike_jet():
    x = np.linspace(0, 1, 65)
    lv = _lightness(colormap(x, "viridis"))
    assert (np.diff(lv) > 0).all()  # monotone: a hotter cell always looks lighter
    steps = np.diff(lv)
    assert steps.max() < 2.5 * steps.min()  # and evenly so
    jet = np.stack([np.clip(1.5 - np.abs(4 * x - k), 0, 1) for k in (3, 2, 1)], -1)  # matplotlib's jet
    assert (np.diff(_lightness(jet)) < 0).any()  # what the dashboard no longer uses: lightness falls back


def test_normalise_is_min_max_and_zero_for_constant_maps():
    np.testing.assert_allclose(normalise(np.array([[2.0, 4.0], [6.0, 10.0]])), [[0.0, 0.25], [0.5, 1.0]])
    assert not normalise(np.zeros((3, 3))).any()
    assert not normalise(np.full((2, 2), np.nan)).any()


def test_cam_heat_is_bilinear_with_half_pixel_centres():
    cam = np.array([[0.0, 1.0]])  # 1x2 map over an 4x1 output
    heat, inside = cam_heat(cam, (0, 0, 4, 1), out_w=4, out_h=1)
    # cell centres at x = 1 and 3; pixel centres 0.5 .. 3.5 -> clamped outside the centres
    np.testing.assert_allclose(heat[0], [0.0, 0.25, 0.75, 1.0])
    assert inside.all()


def test_a_hot_cell_lands_in_the_matching_region_of_the_view_box():
    cam = np.zeros((4, 4))
    cam[3, 0] = 5.0  # bottom-left cell, raw (not normalised) values
    # source 48x32 seen through the centre 32x32 box; rendered at 2x
    heat, inside = cam_heat(cam, (8, 0, 40, 32), out_w=96, out_h=64, scale=(2.0, 2.0))
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 16 <= x < 32 and 48 <= y < 64  # the box's bottom-left quarter-cell, in output pixels
    assert not inside[:, :16].any() and not inside[:, 80:].any() and inside[:, 16:80].all()
    img = np.full((64, 96, 3), 128, np.uint8)
    out = overlay(img, heat, inside)
    hot = np.round((0.5 * 128 / 255 + 0.5 * VIRIDIS_1) * 255)
    np.testing.assert_array_equal(out[y, x], hot)  # 0.5 * grey + 0.5 * viridis(1) = light yellow
    cold = out[5, 70].astype(int)
    assert cold[2] > cold[1]  # viridis' dark violet where the map is zero
    np.testing.assert_array_equal(out[:, :16], np.full((64, 16, 3), round(128 * 0.35), np.uint8))  # dimmed


def test_overlay_opacity_blends_image_and_colormap():
    img = np.full((1, 1, 3), 200, np.uint8)
    heat = np.array([[1.0]])
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0)[0, 0], [200, 200, 200])  # the image only
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0)[0, 0], np.round(VIRIDIS_1 * 255))  # the map only
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.25)[0, 0], np.round(0.75 * 200 + 0.25 * VIRIDIS_1 * 255))
    turbo = overlay(img, np.array([[0.0]]), alpha=1.0, cmap="turbo")[0, 0]
    np.testing.assert_array_equal(turbo, np.round(colormap(np.array(0.0), "turbo") * 255))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(img, heat, alpha=1.5)


# ---------------------------------------------------------------------------------------------
# Outlines


def test_decode_rle_list_counts_are_column_major():
    m = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})  # column-major: 0, 1 1, 0 0 0
    np.testing.assert_array_equal(m, [[False, True, False], [True, False, False]])
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [2, 3], "counts": [1, 2]})


def test_decode_rle_compressed_string_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    m = np.asfortranarray((rng.random((13, 17)) > 0.6).astype(np.uint8))
    rle = mask_utils.encode(m)
    got = decode_rle({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    np.testing.assert_array_equal(got, m.astype(bool))


def test_contour_is_the_mask_boundary():
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    c = contour(m)
    assert c[1, 1] and c[1, 2] and c[3, 3] and not c[2, 2] and not c[0, 0]


def test_outlines_draw_target_green_and_others_magenta():
    img = np.zeros((40, 40, 3), np.uint8)  # a 20x20 source shown at 2x
    objs = [ObjectAnn("cat", bbox=(2.0, 2.0, 6.0, 6.0)),
            ObjectAnn("ball", polygons=((12.0, 12.0, 18.0, 12.0, 18.0, 18.0),)),
            ObjectAnn("cat", rle={"size": [20, 20], "counts": [0, 400]})]
    out, notes = draw_outlines(img, objs, "cat", scale=(2.0, 2.0), width=1)
    assert not notes
    assert tuple(out[4, 4]) == (0, 255, 0) and tuple(out[10, 4]) == (0, 255, 0)  # box edge: x = 2 * 2
    assert tuple(out[10, 10]) == (0, 0, 0)  # inside the box is untouched
    assert tuple(out[24, 30]) == (255, 0, 255)  # polygon's top edge: y = 12 * 2
    assert tuple(out[0, 30]) == (0, 255, 0) and tuple(out[39, 39]) == (0, 255, 0)  # the RLE mask's contour
    assert tuple(out[20, 20]) == (0, 0, 0)


def test_bad_annotations_become_notes_not_errors():
    img = np.zeros((4, 4, 3), np.uint8)
    _, notes = draw_outlines(img, [ObjectAnn("cat", rle={"size": [2, 2], "counts": [9]})], "cat", (1.0, 1.0))
    assert notes and "outline not drawn" in notes[0]


def test_figure_refuses_outside_paths_with_a_placeholder(tree):
    root, img, secret = tree
    row = {"path": str(secret), "dataset_root": str(root), "image_w": 8, "image_h": 8,
           "view_box": [0, 0, 8, 8], "cam": [1.0, 0.0, 0.0, 0.0], "cam_h": 2, "cam_w": 2, "label": "cat",
           "annotations": dumps([ObjectAnn("cat", bbox=(0.0, 0.0, 4.0, 4.0))])}
    fig = figure(row, [str(root)], 64)
    assert fig.refused and "outside" in fig.refused
    assert not (fig.original == (255, 0, 0)).all(axis=-1).any()  # the secret's red never shows
    ok = figure({**row, "path": str(img)}, [str(root)], 64)
    assert ok.refused is None and ok.original.shape == (64, 64, 3)
    assert tuple(ok.outlined[0, 0]) == (0, 255, 0)
    hot = ok.overlay[8, 8].astype(int)  # top-left cell is the hot one: viridis' yellow
    assert hot[0] > hot[2] and hot[1] > hot[2]
    assert ok.strip().shape == (64, 3 * 64 + 8, 3) and ok.other is None
    styled = figure({**row, "path": str(img)}, [str(root)], 64, style=OverlayStyle("turbo", 1.0))
    np.testing.assert_array_equal(styled.overlay[60, 60], np.round(colormap(np.array(0.0), "turbo") * 255))


# ---------------------------------------------------------------------------------------------
# The second map (pred != label)


def test_the_other_classs_map_is_drawn_beside_with_titles(tree):
    root, img, _ = tree
    row = {"path": str(img), "dataset_root": str(root), "image_w": 8, "image_h": 8, "view_box": [0, 0, 8, 8],
           "cam": [1.0, 0.0, 0.0, 0.0], "cam_other": [0.0, 0.0, 0.0, 1.0], "cam_h": 2, "cam_w": 2,
           "label": "cat", "pred": "dog", "target": "dog", "annotations": None}
    fig = figure(row, [str(root)], 64)
    assert [t for _, t in fig.panels()] == ["original", "object outline", "Grad-CAM: dog (prediction)",
                                            "Grad-CAM: cat (label)"]
    assert fig.overlay[4, 4, 0] > fig.overlay[60, 60, 0] and fig.other[60, 60, 0] > fig.other[4, 4, 0]
    assert fig.strip().shape == (64, 4 * 64 + 12, 3)
    assert map_titles({"target": "cat", "pred": "dog", "label": "cat"}) == ("Grad-CAM: cat (label)",
                                                                           "Grad-CAM: dog (prediction)")
    assert map_titles({}) == ("Grad-CAM overlay", "")


# ---------------------------------------------------------------------------------------------
# Mask files outside the image root (the README's images/ + masks/ layout)


@pytest.fixture
def beside(tmp_path):
    """images/cls/a.png and masks/cls/a.png side by side, and a secret mask-shaped file elsewhere."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "cls").mkdir(parents=True)
    (masks / "cls").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(images / "cls" / "a.png")
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    Image.fromarray(m).save(masks / "cls" / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "secret.png")
    return images, masks, tmp_path / "secret.png"


def _mask_row(images, mask_path):
    return {"path": str(images / "cls" / "a.png"), "dataset_root": str(images), "image_w": 8, "image_h": 8,
            "view_box": [0, 0, 8, 8], "cam": [1.0, 0.0, 0.0, 0.0], "cam_h": 2, "cam_w": 2, "label": "cls",
            "annotations": dumps([ObjectAnn("cls", mask_path=str(mask_path))])}


def test_masks_beside_the_images_are_outlined_from_a_recorded_mask_root(beside):
    images, masks, _ = beside
    row = _mask_row(images, masks / "cls" / "a.png")
    before = figure(row, [str(images)], 64)  # results written before runs recorded mask roots
    assert any("outline not drawn" in n and "outside the audited dataset roots" in n for n in before.notes)
    fig = figure(row, [str(images)], 64, mask_roots=[str(masks / "cls")])
    assert not fig.notes
    assert tuple(fig.outlined[16, 32]) == (0, 255, 0) and tuple(fig.outlined[32, 32]) == (10, 20, 30)


@pytest.mark.parametrize("where", ["{masks}/cls/../../secret.png", "{tmp}/secret.png", "{masks}/cls/link.png"])
def test_mask_roots_serve_only_what_the_audit_read(beside, where):
    images, masks, secret = beside
    os.symlink(secret, masks / "cls" / "link.png")
    path = where.format(masks=masks, tmp=secret.parent)
    fig = figure(_mask_row(images, path), [str(images)], 64, mask_roots=[str(masks / "cls")])
    assert any("outline not drawn" in n and "outside" in n for n in fig.notes), fig.notes
    assert not (fig.outlined == (0, 255, 0)).all(axis=-1).any()  # the secret's shape is never drawn


def test_a_mask_root_does_not_serve_images(beside):
    images, masks, _ = beside
    row = {**_mask_row(images, masks / "cls" / "a.png"), "path": str(masks / "cls" / "a.png")}
    fig = figure(row, [str(images)], 64, mask_roots=[str(masks / "cls")])
    assert fig.refused and "outside the audited dataset roots" in fig.refused
