"""Geometry: torchvision-equivalent boxes, and image / mask / points staying aligned."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from common.annotations import ObjectAnn
from common.decode import rasterize
from common.geometry import Geometry
from workers.models import Preprocess

CROP = Preprocess(size=(224, 224), resize="resize_crop", crop_pct=0.875)


def _textured(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 7 % 256], axis=-1)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_plan_resize_is_whole_image():
    g = Geometry.plan(640, 480, Preprocess(size=(200, 300), resize="resize"))
    assert g == Geometry(640, 480, (0.0, 0.0, 640.0, 480.0), 200, 300)


@pytest.mark.parametrize(
    ("w", "h", "box"),
    [
        # 480 -> 256, 640 -> int(256 * 640 / 480) = 341; crop offsets round(58.5) = 58 and 16.
        (640, 480, (58 * 640 / 341, 30.0, 282 * 640 / 341, 450.0)),
        (480, 640, (30.0, 58 * 640 / 341, 450.0, 282 * 640 / 341)),
        (512, 512, (32.0, 32.0, 480.0, 480.0)),
    ],
)
def test_plan_resize_crop_box(w, h, box):
    g = Geometry.plan(w, h, CROP)
    assert (g.out_h, g.out_w) == (224, 224)
    assert g.box == pytest.approx(box, abs=1e-9)


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (333, 517), (224, 224), (1000, 250)])
def test_image_matches_torchvision_resize_centercrop(w, h):
    img = _textured(w, h)
    torchvision_eval = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    expected = np.asarray(torchvision_eval(img)).astype(int)
    ours = Geometry.plan(w, h, CROP).image(img).astype(int)
    assert ours.shape == (224, 224, 3)
    # The same PIL resample with the crop folded into the box: only 8-bit rounding differs.
    assert np.abs(ours - expected).mean() < 0.5
    assert np.abs(ours - expected).max() <= 1


def test_image_matches_torchvision_resize():
    img = _textured(333, 517)
    expected = np.asarray(transforms.Resize((200, 300))(img))
    ours = Geometry.plan(333, 517, Preprocess(size=(200, 300), resize="resize")).image(img)
    np.testing.assert_array_equal(ours, expected)


def test_image_on_reduced_image_uses_scale():
    img = _textured(800, 600)
    g = Geometry.plan(800, 600, CROP)
    half = img.reduce(2)  # what a 1/2 JPEG draft looks like: pixel i covers source [2i, 2i + 2)
    diff = np.abs(g.image(half, scale=0.5).astype(int) - g.image(img).astype(int))
    assert diff.mean() < 2


def test_image_requires_rgb():
    with pytest.raises(ValueError, match="RGB"):
        Geometry.plan(10, 10, CROP).image(Image.new("L", (10, 10)))


def test_points_map_box_corners_to_output_corners():
    g = Geometry.plan(640, 480, CROP)
    x0, y0, x1, y1 = g.box
    out = g.points(np.array([[x0, y0], [x1, y1], [(x0 + x1) / 2, (y0 + y1) / 2]]))
    np.testing.assert_allclose(out, [[0, 0], [224, 224], [112, 112]], atol=1e-9)
    assert g.points(np.zeros((3, 4, 2))).shape == (3, 4, 2)


def test_mask_is_soft_float_in_unit_range():
    g = Geometry.plan(100, 80, CROP)
    ones = g.mask(np.ones((80, 100), dtype=bool))
    assert ones.dtype == np.float32 and ones.shape == (224, 224)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)
    m = np.zeros((80, 100), dtype=np.uint8)
    m[20:50, 30:70] = 1
    soft = g.mask(m)
    assert soft.min() >= 0 and soft.max() <= 1
    assert ((soft > 0) & (soft < 1)).any()  # edges are soft, like the image's
    with pytest.raises(ValueError, match="source size"):
        g.mask(np.zeros((100, 80)))


@pytest.mark.parametrize(
    ("w", "h", "rect"), [(640, 480, (180, 100, 300, 220)), (300, 500, (20, 150, 170, 400))]
)
def test_mask_points_and_image_align(w, h, rect):
    x0, y0, x1, y1 = rect
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[y0:y1, x0:x1] = 255
    g = Geometry.plan(w, h, CROP)
    bright = g.image(Image.fromarray(arr))[..., 0] > 127
    src_mask = np.zeros((h, w), dtype=bool)
    src_mask[y0:y1, x0:x1] = True
    via_mask = g.mask(src_mask) > 0.5
    box = rasterize([ObjectAnn("thing", bbox=(x0, y0, x1 - x0, y1 - y0))], g, "thing").target
    assert box is not None
    via_points = box > 0.5

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    assert bright.any()
    assert iou(bright, via_mask) > 0.95
    assert iou(bright, via_points) > 0.9


def test_dict_round_trip_and_validation():
    g = Geometry.plan(640, 480, CROP)
    assert Geometry.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError, match="keys"):
        Geometry.from_dict({"src_w": 1})
    with pytest.raises(ValueError, match="inside"):
        Geometry(10, 10, (0.0, 0.0, 11.0, 10.0), 4, 4)
    with pytest.raises(ValueError, match="positive"):
        Geometry(10, 10, (0.0, 0.0, 10.0, 10.0), 0, 4)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_image_and_mask_share_the_preprocessing_filter(interpolation):
    """A mask painted into an image comes out of the geometry exactly as the image's channel does."""
    rng = np.random.default_rng(0)
    m = (rng.random((90, 120)) > 0.5).astype(np.float32)
    img = Image.fromarray(np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2))
    g = Geometry.plan(120, 90, Preprocess(size=(32, 32), crop_pct=0.875, interpolation=interpolation))
    assert g.interpolation == interpolation and Geometry.from_dict(g.to_dict()) == g
    pixels = g.image(img)[..., 0].astype(np.float32) / 255
    # PIL clips a uint8 image between its horizontal and vertical passes; bicubic overshoots at sharp
    # edges, so there the 8-bit image and the float mask differ by a few percent.
    tol = 1 / 255 + 1e-6 if interpolation == "bilinear" else 0.04
    np.testing.assert_allclose(g.mask(m), np.clip(pixels, 0, 1), atol=tol)
    other = Geometry.plan(120, 90, Preprocess(size=(32, 32), crop_pct=0.875,
                                              interpolation="bicubic" if interpolation == "bilinear" else "bilinear"))
    assert np.abs(other.mask(m) - g.mask(m)).max() > 0.05  # the filter matters on a sharp mask
