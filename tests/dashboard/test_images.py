"""Path guard, jet colormap, CAM upsampling/overlay and outlines: exact values on tiny inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dashboard.images import (
    UnsafePathError,
    allowed_roots,
    cam_heat,
    contour,
    draw_outlines,
    figure,
    guard_path,
    jet,
    normalise,
    overlay,
)
from common.annotations import ObjectAnn, dumps
from common.rle import decode_rle


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


def test_jet_endpoints_and_middle_match_matplotlib():
    c = jet(np.array([0.0, 0.5, 1.0, -3.0, 7.0]))
    np.testing.assert_allclose(c[0], [0.0, 0.0, 0.5])
    np.testing.assert_allclose(c[1], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(c[2], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(c[3], c[0])  # clipped
    np.testing.assert_allclose(c[4], c[2])


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
    np.testing.assert_array_equal(out[y, x], [128, 64, 64])  # 0.5 * grey + 0.5 * jet(1) = dark red
    cold = out[5, 70].astype(int)
    assert cold[2] > cold[0]  # blue where the map is zero
    np.testing.assert_array_equal(out[:, :16], np.full((64, 16, 3), round(128 * 0.35), np.uint8))  # dimmed


def test_overlay_is_half_image_half_jet():
    img = np.zeros((1, 1, 3), np.uint8)
    out = overlay(img, np.array([[1.0]]))
    np.testing.assert_array_equal(out[0, 0], [64, 0, 0])  # 0.5 * jet(1) = (0.25, 0, 0) -> 64


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
    hot = ok.overlay[8, 8].astype(int)  # top-left cell is the hot one
    assert hot[0] > hot[2]
    assert ok.strip().shape == (64, 3 * 64 + 8, 3)
