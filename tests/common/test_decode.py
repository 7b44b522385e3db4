"""Image loading (every way a file can be bad) and annotation rasterisation, on files built in tmp_path."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile
from pycocotools import mask as mask_utils

from common.annotations import ObjectAnn
from common.decode import ImageError, MaskError, load_for_model, open_image, polygon_coverage, rasterize
from common.geometry import Geometry
from workers.models import Preprocess

CROP = Preprocess(size=(224, 224), resize="resize_crop", crop_pct=0.875)


def _noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _quadrants(w: int, h: int) -> np.ndarray:
    """Flat colour blocks (JPEG keeps them nearly exact), asymmetric so any flip or rotation shows."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2 :] = (0, 255, 0)
    arr[h // 2 :, : w // 2] = (0, 0, 255)
    arr[h // 2 :, w // 2 :] = (255, 255, 0)
    arr[: h // 4, : w // 8] = (255, 255, 255)
    return arr


def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def _expect(kind: str, path: str, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        open_image(path, **kw)
    assert info.value.kind == kind, str(info.value)
    assert os.path.basename(path) in str(info.value)
    return info.value


# ------------------------------------------------------------------------------------------------
# open_image: modes


def test_rgb_png_is_exact(tmp_path):
    arr = _noise(37, 23)
    img = open_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert img.mode == "RGB" and img.size == (37, 23)
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_rgb_jpeg(tmp_path):
    arr = _quadrants(64, 48)
    img = open_image(_save(Image.fromarray(arr), tmp_path / "a.jpg", quality=95))
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.abs(np.asarray(img).astype(int) - arr).mean() < 4


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    path = _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = np.asarray(open_image(path)).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(rgb, (255, 0, 0), atol=6)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 257 * 128, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    img = np.asarray(open_image(path))
    np.testing.assert_array_equal(img[..., 0], [[0, 100, 128, 255]])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    path = _save(Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)), tmp_path / "f.tif")
    np.testing.assert_array_equal(np.asarray(open_image(path))[..., 1], [[0, 64, 255]])


def test_palette_transparency_goes_to_white(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    path = _save(pal, tmp_path / "pal.png", transparency=1)
    img = np.asarray(open_image(path))
    np.testing.assert_array_equal(img[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(img[0, 1], (255, 255, 255))


def test_rgba_composites_onto_white(tmp_path):
    rgba = np.array([[[200, 0, 0, 0], [200, 0, 0, 255], [200, 0, 0, 128]]], dtype=np.uint8)
    img = np.asarray(open_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))).astype(int)
    np.testing.assert_array_equal(img[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(img[0, 1], (200, 0, 0))
    # 200 * 128/255 + 255 * 127/255 = 227.4; 0 + 127
    np.testing.assert_allclose(img[0, 2], (227, 127, 127), atol=1)


def test_la_composites_onto_white(tmp_path):
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), mode="LA")
    img = np.asarray(open_image(_save(la, tmp_path / "la.png")))
    np.testing.assert_array_equal(img[0], [(255, 255, 255), (100, 100, 100)])


def test_grayscale_and_bilevel(tmp_path):
    gray = np.array([[0, 77, 255]], dtype=np.uint8)
    img = np.asarray(open_image(_save(Image.fromarray(gray), tmp_path / "g.png")))
    np.testing.assert_array_equal(img, np.repeat(gray[..., None], 3, axis=2))
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    img = np.asarray(open_image(_save(bits, tmp_path / "b.png")))
    np.testing.assert_array_equal(img[0, :, 0], [255, 0, 255])


def test_exif_rotated_jpeg_is_displayed_upright(tmp_path):
    arr = _quadrants(80, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(Image.fromarray(arr), tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    img = open_image(path)
    assert img.size == (48, 80)
    expected = np.rot90(arr, k=-1)
    assert np.abs(np.asarray(img).astype(int) - expected).mean() < 4


# ------------------------------------------------------------------------------------------------
# open_image: failures


def test_missing_empty_directory_and_text(tmp_path):
    _expect("missing", str(tmp_path / "nope.jpg"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    _expect("empty_file", str(tmp_path / "empty.jpg"))
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    _expect("not_an_image", str(tmp_path / "notes.jpg"))
    (tmp_path / "dir.png").mkdir()
    _expect("unreadable", str(tmp_path / "dir.png"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(tmp_path, fmt):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(_noise(200, 150)).save(full, fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    _expect("truncated", str(cut))
    head = tmp_path / f"head.{fmt.lower()}"
    head.write_bytes(data[:30])  # the signature survives, the header does not
    assert _expect("corrupt", str(head)).kind == "corrupt"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    real = _save(Image.fromarray(_noise(100, 60)), tmp_path / "real.png")
    err = _expect("too_large", real, max_pixels=5000)
    assert "100x60" in str(err)
    assert open_image(real, max_pixels=6000).size == (100, 60)
    # Headers claiming 10^8 pixels (PIL would only warn) and 2.5 * 10^9 (PIL raises): neither decodes.
    for name, (w, h) in {"warn.png": (10_000, 10_000), "error.png": (50_000, 50_000)}.items():
        (tmp_path / name).write_bytes(_png_header_only(w, h))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a DecompressionBombWarning must not escape
            _expect("too_large", str(tmp_path / name))


def test_image_error_pickles_with_its_kind(tmp_path):
    err = ImageError("truncated", "image 'x.jpg' is truncated", "x.jpg")
    back = pickle.loads(pickle.dumps(err))
    assert (back.kind, str(back), back.path) == ("truncated", "image 'x.jpg' is truncated", "x.jpg")
    mask_err = pickle.loads(pickle.dumps(MaskError("mask_size", "m.png vs x.jpg")))
    assert isinstance(mask_err, MaskError) and mask_err.kind == "mask_size"
    with pytest.raises(ValueError, match="unknown ImageError kind"):
        ImageError("oops", "msg")
    with pytest.raises(ValueError, match="unknown MaskError kind"):
        MaskError("truncated", "a mask error needs a mask kind")
    assert ImageError("annotation", "bad annotation JSON").kind == "annotation"  # counted by the pipeline too


# ------------------------------------------------------------------------------------------------
# load_for_model


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_for_model_matches_displayed_image(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(_quadrants(400, 300)), tmp_path / "o.jpg", quality=95, exif=exif.tobytes())
    pixels, geom = load_for_model(path, CROP)
    shown = open_image(path)
    assert (geom.src_w, geom.src_h) == shown.size
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    diff = np.abs(pixels.astype(int) - geom.image(shown))
    assert diff.mean() < 0.1 and diff.max() <= 2  # same resample, on stored pixels then transposed


@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_path_matches_full_decode(tmp_path, monkeypatch, orientation):
    w, h = 2400, 1800
    yy, xx = np.mgrid[0:h, 0:w]
    checks = (xx // 60 + yy // 60) % 2 * 200 + 20
    arr = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 53), checks], axis=-1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(arr.astype(np.uint8)), tmp_path / "big.jpg", quality=92, exif=exif.tobytes())

    drafts: list[tuple] = []
    real_draft = JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append(result)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    pixels, geom = load_for_model(path, CROP)
    assert drafts and drafts[0] is not None and drafts[0][1][2] < w  # libjpeg decoded at reduced scale
    full = geom.image(open_image(path))
    diff = np.abs(pixels.astype(int) - full)
    assert diff.mean() < 1.0 and diff.max() <= 12


def test_load_for_model_png_and_errors(tmp_path):
    arr = _noise(300, 200)
    pixels, geom = load_for_model(_save(Image.fromarray(arr), tmp_path / "a.png"), CROP)
    np.testing.assert_array_equal(pixels, geom.image(Image.fromarray(arr)))
    with pytest.raises(ImageError) as info:
        load_for_model(str(tmp_path / "gone.png"), CROP)
    assert info.value.kind == "missing"


# ------------------------------------------------------------------------------------------------
# rasterize

# 100x80 source squashed to 10x8: one output pixel is a 10x10 source block.
GEOM = Geometry(100, 80, (0.0, 0.0, 100.0, 80.0), out_h=8, out_w=10)


def test_bbox_is_exact_area_coverage():
    m = rasterize([ObjectAnn("cat", bbox=(15, 20, 30, 40))], GEOM, "cat").target
    expected = np.zeros((8, 10), dtype=np.float32)
    expected[2:6, 1] = expected[2:6, 4] = 0.5  # x 15..45 -> 1.5..4.5
    expected[2:6, 2:4] = 1.0
    np.testing.assert_array_equal(m, expected)


def test_polygon_square_triangle_and_clipping():
    square = rasterize([ObjectAnn("cat", polygons=((10, 10, 50, 10, 50, 50, 10, 50),))], GEOM, "cat").target
    expected = np.zeros((8, 10), dtype=np.float32)
    expected[1:5, 1:5] = 1.0
    np.testing.assert_array_equal(square, expected)

    tri = polygon_coverage(np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]), 5, 5)
    expected = np.array([[1, 1, 1, 0.5, 0], [1, 1, 0.5, 0, 0], [1, 0.5, 0, 0, 0], [0.5, 0, 0, 0, 0], [0] * 5])
    np.testing.assert_allclose(tri, expected, atol=1e-6)  # diagonal cells are exactly half covered

    overhang = ObjectAnn("cat", polygons=((-20, -20, 20, -20, 20, 20, -20, 20),))
    clipped = rasterize([overhang], GEOM, "cat").target
    expected = np.zeros((8, 10), dtype=np.float32)
    expected[:2, :2] = 1.0
    np.testing.assert_array_equal(clipped, expected)


def test_polygon_rings_are_unioned():
    rings = ((0, 0, 20, 0, 20, 20, 0, 20), (60, 40, 80, 40, 80, 60, 60, 60))
    m = rasterize([ObjectAnn("cat", polygons=rings)], GEOM, "cat").target
    assert m is not None and m.sum() == 8.0 and m[0, 0] == 1 and m[5, 7] == 1


def _rect_mask(h: int = 80, w: int = 100) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[20:40, 30:70] = 1
    return m


def _uncompressed(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def test_rle_compressed_and_uncompressed_agree_with_mask():
    src = _rect_mask()
    expected = GEOM.mask(src)
    rle = mask_utils.encode(np.asfortranarray(src))
    rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    compressed = rasterize([ObjectAnn("cat", rle=rle)], GEOM, "cat").target
    np.testing.assert_array_equal(compressed, expected)
    uncompressed = ObjectAnn("cat", rle={"size": [80, 100], "counts": _uncompressed(src)})
    raw = rasterize([uncompressed], GEOM, "cat").target
    np.testing.assert_array_equal(raw, expected)
    assert abs(float(expected.sum()) - 8.0) < 0.5  # 20x40 source px = 8 output px of area


def test_rle_errors():
    src = _rect_mask(60, 100)
    rle = mask_utils.encode(np.asfortranarray(src))
    with pytest.raises(MaskError) as info:
        rasterize([ObjectAnn("cat", rle=rle)], GEOM, "cat", image_path="img.jpg")
    assert info.value.kind == "mask_size"
    assert "[60, 100]" in str(info.value) and "[80, 100]" in str(info.value)
    with pytest.raises(MaskError) as info:
        rasterize([ObjectAnn("cat", rle={"size": [80, 100], "counts": [10, 20]})], GEOM, "cat")
    assert info.value.kind == "annotation"
    with pytest.raises(MaskError) as info:
        rasterize([ObjectAnn("cat", rle={"size": [80, 100], "counts": "\x01bad"})], GEOM, "cat")
    assert info.value.kind == "annotation"


def test_mask_file_relative_to_base_dir(tmp_path):
    (tmp_path / "masks").mkdir()
    Image.fromarray(_rect_mask() * 255).save(tmp_path / "masks" / "m.png")
    obj = ObjectAnn("cat", mask_path="masks/m.png")
    m = rasterize([obj], GEOM, "cat", base_dir=str(tmp_path)).target
    np.testing.assert_array_equal(m, GEOM.mask(_rect_mask()))
    # a palette mask: any non-zero index is the object
    pal = Image.fromarray(_rect_mask() * 3, mode="L").convert("P")
    pal.save(tmp_path / "masks" / "p.png")
    m = rasterize([ObjectAnn("cat", mask_path="masks/p.png")], GEOM, "cat", base_dir=str(tmp_path)).target
    np.testing.assert_array_equal(m, GEOM.mask(_rect_mask()))


def test_mask_file_errors(tmp_path):
    Image.fromarray(np.zeros((50, 100), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(MaskError) as info:
        small = ObjectAnn("cat", mask_path="small.png")
        rasterize([small], GEOM, "cat", base_dir=str(tmp_path), image_path="img.jpg")
    msg = str(info.value)
    assert info.value.kind == "mask_size"
    assert "small.png" in msg and "img.jpg" in msg and "100x50" in msg and "100x80" in msg
    with pytest.raises(MaskError) as info:
        rasterize([ObjectAnn("cat", mask_path="gone.png")], GEOM, "cat", base_dir=str(tmp_path))
    assert info.value.kind == "mask_missing" and "gone.png" in str(info.value)
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(MaskError) as info:
        rasterize([ObjectAnn("cat", mask_path="bad.png")], GEOM, "cat", base_dir=str(tmp_path))
    assert info.value.kind == "mask_corrupt" and "bad.png" in str(info.value)


def test_union_others_and_missing_label():
    objects = [
        ObjectAnn("cat", bbox=(0, 0, 20, 20)),
        ObjectAnn("cat", bbox=(10, 10, 20, 20)),
        ObjectAnn("person", bbox=(50, 0, 10, 10)),
        ObjectAnn("person", bbox=(70, 0, 10, 10)),
        ObjectAnn("car", polygons=((0, 60, 30, 60, 30, 80, 0, 80),)),
    ]
    masks = rasterize(objects, GEOM, "cat")
    assert masks.target is not None
    np.testing.assert_array_equal(masks.target, np.maximum(
        rasterize(objects[:1], GEOM, "cat").target, rasterize(objects[1:2], GEOM, "cat").target))
    assert masks.target.sum() == 7.0  # two 2x2 squares overlapping in one pixel
    assert sorted(masks.others) == ["car", "person"]
    assert masks.others["person"].sum() == 2.0 and masks.others["car"].sum() == 6.0

    none = rasterize(objects, GEOM, "dog")
    assert none.target is None and sorted(none.others) == ["car", "cat", "person"]
    assert rasterize([], GEOM, None).target is None
