"""A folder dataset full of the inputs that break naive pipelines, with the expected outcome of each."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> expected error_kind (None: valid input, handled correctly)
EXPECTED: dict[str, str | None] = {
    "disk/ok_0.png": None,
    "disk/ok_1.png": None,
    "disk/cmyk.jpg": None,
    "disk/gray16.png": None,
    "disk/palette.png": None,
    "disk/rgba.png": None,
    "disk/gray.png": None,
    "disk/exif_rotated.jpg": None,
    "disk/empty_mask.png": None,
    "disk/corrupt.png": "corrupt",
    "disk/truncated.jpg": "truncated",
    "disk/zero.jpg": "empty_file",
    "disk/notes.txt": "not_an_image",
    "disk/bomb.png": "too_large",
    "disk/no_mask.png": "mask_missing",
    "disk/wrong_mask.png": "mask_size",
    "zebra/unknown_label.png": "unknown_label",
}


def _scene(rng: np.random.Generator, h: int = 48, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[12:36, 12:36] = 255
    img[mask > 0] = (220, 40, 40)
    return img, mask


def write_broken_folder(root: Path) -> tuple[Path, Path]:
    """Write images/ and masks/ under root; returns (images_root, masks_root)."""
    rng = np.random.default_rng(0)
    images, masks = root / "images", root / "masks"
    for name in EXPECTED:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (masks / name).parent.mkdir(parents=True, exist_ok=True)
    for name in EXPECTED:
        img, mask = _scene(rng)
        p = images / name
        stem = masks / Path(name).with_suffix(".png")
        save_mask = True
        if name.endswith("ok_0.png") or name.endswith("ok_1.png") or name.endswith("unknown_label.png"):
            Image.fromarray(img).save(p)
        elif name.endswith("cmyk.jpg"):
            Image.fromarray(img).convert("CMYK").save(p, "JPEG")
        elif name.endswith("gray16.png"):
            g = (img.mean(-1) * 257).astype(np.uint16)
            Image.fromarray(g).save(p)  # uint16 -> mode I;16
        elif name.endswith("palette.png"):
            pal = Image.fromarray(img).convert("P", palette=Image.ADAPTIVE, colors=16)
            pal.info["transparency"] = 0
            pal.save(p, transparency=0)
        elif name.endswith("rgba.png"):
            Image.fromarray(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])).save(p)
        elif name.endswith("gray.png"):
            Image.fromarray(img.mean(-1).astype(np.uint8)).save(p)
        elif name.endswith("exif_rotated.jpg"):
            # stored landscape 64x48, displayed portrait after orientation 6; the mask is for the displayed image
            stored = rng.integers(0, 80, (48, 64, 3), dtype=np.uint8)
            ex = Image.Exif()
            ex[0x0112] = 6
            Image.fromarray(stored).save(p, "JPEG", exif=ex)
            Image.fromarray(np.pad(mask, ((8, 8), (0, 0)))).save(stem)  # displayed: 48 wide, 64 high
            save_mask = False
        elif name.endswith("empty_mask.png"):
            Image.fromarray(img).save(p)
            Image.fromarray(np.zeros_like(mask)).save(stem)
            save_mask = False
        elif name.endswith("corrupt.png"):
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 200, dtype=np.uint8)))
        elif name.endswith("truncated.jpg"):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG")
            p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        elif name.endswith("zero.jpg"):
            p.write_bytes(b"")
        elif name.endswith("notes.txt"):
            p.write_text("these are notes, not an image\n")
        elif name.endswith("bomb.png"):
            Image.new("L", (3000, 3000)).save(p, optimize=True)  # 9 MP > the test's max_pixels
        elif name.endswith("no_mask.png"):
            Image.fromarray(img).save(p)
            save_mask = False
        elif name.endswith("wrong_mask.png"):
            Image.fromarray(img).save(p)
            Image.fromarray(np.zeros((10, 10), np.uint8)).save(stem)
            save_mask = False
        if save_mask:
            Image.fromarray(mask).save(stem)
    return images, masks
