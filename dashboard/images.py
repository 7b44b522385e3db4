"""Safe image serving and the Grad-CAM figure: path guard, colormaps, CAM overlay, object outlines.

Pure numpy + Pillow (no Streamlit, no matplotlib, no torch), so every piece is unit-tested directly.

The overlay is the classic Grad-CAM figure (Selvaraju et al. 2017; pytorch-grad-cam's
``show_cam_on_image``): the raw map is min-max normalised *for display only*, upsampled bilinearly
(half-pixel centres, like ``F.interpolate(..., align_corners=False)``) into the ``view_box`` region
of the source image the model saw, coloured with a perceptually uniform colormap (viridis, or turbo)
and alpha-blended over the image. Not jet: its uneven lightness invents edges where the map is
smooth and hides differences where it is not (Borland & Taylor, "Rainbow Color Map (Still)
Considered Harmful", IEEE CG&A 2007).

>>> heat, inside = cam_heat(np.eye(4), (0, 0, 64, 64), 64, 64)   # doctest: +SKIP
>>> Image.fromarray(overlay(img, heat, inside))                  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from common.annotations import AnnotationError, ObjectAnn, loads
from common.rle import decode_rle
from common.sources import SourceError
from common.storage import is_uri
from dashboard.remote import UnsafeSourceError, guard_source, open_source

TARGET_RGB = (0, 255, 0)  # the labelled object
OTHER_RGB = (255, 0, 255)  # other annotated categories (co-occurring objects)
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
_DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)


class UnsafePathError(ValueError):
    """A path the dashboard refuses to read (the message says why)."""


# ---------------------------------------------------------------------------------------------
# Path guard


def _real(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def guard_path(path: str | None, roots: Iterable[str | os.PathLike[str]], base: str | None = None) -> Path | str:
    """The real path of ``path`` if it is a regular file inside one of ``roots``, else raise.

    Both sides are resolved with :func:`os.path.realpath`, so ``root/../../secret`` and symlinks
    pointing out of a root are judged by where they really lead. A relative ``path`` is taken
    relative to ``base`` (the row's dataset root). A filesystem root (``/``) is never an allowed root.
    A source URI (an object, a tar member, a dataset row) is judged by :func:`dashboard.remote.guard_source`
    and returned as a string.
    """
    if not path:
        raise UnsafePathError("the row has no image path")
    if "\x00" in path:
        raise UnsafePathError(f"image path {path!r} contains a NUL byte")
    if is_uri(path) or (base and is_uri(base) and not os.path.isabs(path)):
        try:
            return guard_source(path, [os.fspath(r) for r in roots if r], base, _guard_local)
        except UnsafeSourceError as e:
            raise UnsafePathError(str(e)) from None
    p = Path(path)
    if not p.is_absolute():
        if not base:
            raise UnsafePathError(f"image path {path!r} is relative and the row has no dataset root")
        p = Path(base) / p
    real_roots = []
    for r in roots:
        if not r:
            continue
        rr = _real(r)
        if rr.parent == rr:  # "/" (or a drive root) would allow every file
            continue
        real_roots.append(rr)
    if not real_roots:
        raise UnsafePathError("no dataset root is recorded for these results, so no image is served")
    real = _real(p)
    if not any(real == r or real.is_relative_to(r) for r in real_roots):
        shown = ", ".join(str(r) for r in real_roots)
        via = f" (resolves to {str(real)!r})" if str(real) != os.path.abspath(os.fspath(p)) else ""
        raise UnsafePathError(f"image path {path!r}{via} is outside the audited dataset roots ({shown})")
    if not real.is_file():
        raise UnsafePathError(f"image file {str(real)!r} does not exist or is not a regular file")
    return real


def _guard_local(path: str, roots: Iterable[str | os.PathLike[str]]) -> Path:
    return guard_path(path, [r for r in roots if not is_uri(os.fspath(r))])  # type: ignore[return-value]


def allowed_roots(row_root: str | None, run_roots: Sequence[str]) -> list[str]:
    """The roots a row may be served from: the run records' ``dataset_roots`` when any are recorded
    (a crafted ``dataset_root`` cell cannot widen them), else the row's own ``dataset_root``."""
    if run_roots:
        return list(run_roots)
    return [row_root] if row_root else []


# ---------------------------------------------------------------------------------------------
# Colour map and CAM upsampling


# 64 samples (uint8 RGB) of matplotlib's viridis (van der Walt & Smith, CC0) and of turbo (Mikhailov,
# Google 2019, Apache-2.0), interpolated linearly: within 3/255 of the 256-entry originals interpolated
# the same way (tests/dashboard/test_images.py compares them with matplotlib's).
_LUTS = {
    "viridis": (
        "44015446075a470d6047136548186a481d6f482374482878472d7b46327e453781443b844240864045883e49893d4e8a"
        "3a538b38588c365c8d34608d32648e31688e2f6c8e2d708e2c738e2a778e297b8e277f8e26828e24868e238a8d218e8d"
        "20928c1f968b1f9a8a1f9e891fa18721a58523a98326ad812ab07f2fb47c35b7793bbb7542be714ac16d52c5695ac864"
        "65cb5e6ece5877d15381d34d8bd64695d840a0da39aadc32b5de2bc0df25cae11fd5e21adfe318eae51af4e61efde725"
    ),
    "turbo": (
        "30123b351e58392a733d358b4040a2424bb54456c74661d6466be34776ee4680f6458afc4294ff3d9efe37a8fa2fb2f4"
        "27bee920c7df1bd0d518d7ca18dec01ae4b620eaac2aefa135f39443f78752fa7a61fc6c71fe5f80ff538fff499cfe40"
        "a9fb39b4f836bef434c8ef34d2e935dbe236e3db38ebd339f1cb3af6c33afaba39fcb136fea732fe9b2dfe9029fc8423"
        "f9751df56918f15d13ec530fe7490ce14109da3907d23105ca2a04c12302b71d02ac1701a11201950d018808027a0403"
    ),
}
COLORMAPS = tuple(_LUTS)
DEFAULT_COLORMAP = "viridis"
DEFAULT_ALPHA = 0.5


def colormap(x: np.ndarray, name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``name`` (viridis or turbo) as RGB in [0, 1]: values in [0, 1], any shape ``S`` -> ``S + (3,)``."""
    if name not in _LUTS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    lut = np.frombuffer(bytes.fromhex(_LUTS[name]), np.uint8).reshape(-1, 3) / 255.0
    pos = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, 1.0) * (len(lut) - 1)
    i0 = np.minimum(np.floor(pos).astype(int), len(lut) - 2)
    f = (pos - i0)[..., None]
    return lut[i0] * (1 - f) + lut[i0 + 1] * f


def normalise(cam: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] for display; a constant (e.g. all-zero) map becomes all zeros."""
    c = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0)
    lo, hi = float(c.min()), float(c.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(c)
    return (c - lo) / (hi - lo)


def _axis_weights(n_out: int, start: float, stop: float,
                  n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sample positions of output pixels 0..n_out-1 over cells spanning [start, stop)."""
    centres = np.arange(n_out) + 0.5
    inside = (centres >= start) & (centres < stop)
    pos = (centres - start) / max(stop - start, 1e-12) * n_cells - 0.5
    pos = np.clip(pos, 0.0, n_cells - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_cells - 1)
    return i0, i1, pos - i0, inside


def cam_heat(cam: np.ndarray, view_box: Sequence[float], out_w: int, out_h: int,
             scale: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(cam_h, cam_w)`` -> (heat ``(out_h, out_w)`` in [0, 1], inside ``(out_h, out_w)`` bool).

    ``view_box`` is in source pixels; ``scale = (sx, sy)`` maps source to output pixels. Pixels
    outside the box (what the model did not see) have ``inside == False`` and heat 0.
    """
    m = normalise(np.asarray(cam, dtype=np.float64))
    if m.ndim != 2:
        raise ValueError(f"cam must be 2-D (cam_h, cam_w), got shape {m.shape}")
    ch, cw = m.shape
    x0, y0, x1, y1 = (float(v) for v in view_box)
    sx, sy = scale
    xi0, xi1, xf, xin = _axis_weights(out_w, x0 * sx, x1 * sx, cw)
    yi0, yi1, yf, yin = _axis_weights(out_h, y0 * sy, y1 * sy, ch)
    top = m[yi0][:, xi0] * (1 - xf) + m[yi0][:, xi1] * xf
    bot = m[yi1][:, xi0] * (1 - xf) + m[yi1][:, xi1] * xf
    heat = top * (1 - yf[:, None]) + bot * yf[:, None]
    inside = yin[:, None] & xin[None, :]
    return np.where(inside, heat, 0.0), inside


def overlay(img: np.ndarray, heat: np.ndarray, inside: np.ndarray | None = None,
            alpha: float = DEFAULT_ALPHA, cmap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Blend ``colormap(heat)`` with opacity ``alpha`` over an (H, W, 3) uint8 image inside the view box
    -> (H, W, 3) uint8.

    Outside the view box the image is dimmed, so what the model never saw is not mistaken for cold.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    base = np.asarray(img, dtype=np.float64) / 255.0
    out = (1 - alpha) * base + alpha * colormap(heat, cmap)
    if inside is not None:
        out = np.where(inside[..., None], out, 0.35 * base)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def cam_array(row: dict[str, Any], column: str = "cam") -> np.ndarray | None:
    """The row's ``cam`` (or ``cam_other``) list as ``(cam_h, cam_w)``, or None when absent or malformed."""
    cam, h, w = row.get(column), row.get("cam_h"), row.get("cam_w")
    if cam is None or h is None or w is None:
        return None
    a = np.asarray(cam, dtype=np.float32)
    if a.size != int(h) * int(w) or a.size == 0:
        return None
    return a.reshape(int(h), int(w))


# ---------------------------------------------------------------------------------------------
# Annotations -> outlines


def contour(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool mask (the mask minus its 4-neighbour erosion)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, constant_values=False)
    eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~eroded


def _thicken(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, constant_values=False)
    return m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


MaskLoader = Callable[[str], np.ndarray]


def draw_outlines(img: np.ndarray, objects: Sequence[ObjectAnn], label: str | None,
                  scale: tuple[float, float], load_mask: MaskLoader | None = None,
                  width: int = 2) -> tuple[np.ndarray, list[str]]:
    """Draw each object's outline (target category green, others magenta) -> (image, notes).

    Boxes and polygons are drawn as vectors; RLE and mask files as the contour of the mask.
    A shape that cannot be drawn adds a note instead of failing the whole figure.
    """
    im = Image.fromarray(np.asarray(img, dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    sx, sy = scale
    notes: list[str] = []
    arr_overlays: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    for obj in objects:
        rgb = TARGET_RGB if label is not None and obj.category == label else OTHER_RGB
        try:
            if obj.bbox is not None:
                x, y, w, h = obj.bbox
                draw.rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1], outline=rgb, width=width)
            elif obj.polygons is not None:
                for ring in obj.polygons:
                    pts = [(ring[i] * sx, ring[i + 1] * sy) for i in range(0, len(ring) - 1, 2)]
                    draw.line([*pts, pts[0]], fill=rgb, width=width, joint="curve")
            else:
                if obj.rle is not None:
                    mask = decode_rle(obj.rle)
                elif load_mask is not None and obj.mask_path is not None:
                    mask = load_mask(obj.mask_path)
                else:
                    notes.append(f"{obj.category}: mask file not drawn")
                    continue
                small = Image.fromarray(mask.astype(np.uint8) * 255).resize(im.size, Image.Resampling.NEAREST)
                edge = contour(np.asarray(small) > 127)
                if width > 1:
                    edge = _thicken(edge)
                arr_overlays.append((edge, rgb))
        except (AnnotationError, UnsafePathError, SourceError, *_DECODE_ERRORS) as e:
            notes.append(f"{obj.category}: outline not drawn ({e})")
    out = np.asarray(im).copy()
    for edge, rgb in arr_overlays:
        out[edge] = rgb
    return out, notes


# ---------------------------------------------------------------------------------------------
# Loading and composing


def load_image(path: Path | str, max_side: int, roots: Sequence[str] = ()) -> np.ndarray:
    """Decode, apply EXIF orientation (results use displayed coordinates), fit into ``max_side``.

    ``path`` is what :func:`guard_path` returned (a source URI is read through ``roots``' guard)."""
    with Image.open(open_source(path, roots, _guard_local)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise UnsafePathError(f"image {str(path)!r} has {im.width}x{im.height} pixels; not decoding it")
        im.draft("RGB", (max_side, max_side))
        shown = ImageOps.exif_transpose(im).convert("RGB")
    f = max_side / max(shown.size)
    if f < 1:
        shown.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    elif f >= 2:  # small images (thumbnails, synthetic sets): enlarge so outlines stay crisp
        shown = shown.resize((round(shown.width * f), round(shown.height * f)), Image.Resampling.BICUBIC)
    return np.asarray(shown)


def placeholder(w: int, h: int, text: str = "image unavailable") -> np.ndarray:
    im = Image.new("RGB", (max(w, 8), max(h, 8)), (200, 200, 200))
    d = ImageDraw.Draw(im)
    d.line([(0, 0), (im.width - 1, im.height - 1)], fill=(150, 150, 150), width=2)
    d.line([(0, im.height - 1), (im.width - 1, 0)], fill=(150, 150, 150), width=2)
    d.text((6, im.height // 2 - 6), text, fill=(60, 60, 60))
    return np.asarray(im)


@dataclass(frozen=True)
class OverlayStyle:
    """How maps are drawn: the colormap and the map's opacity over the image."""

    cmap: str = DEFAULT_COLORMAP
    alpha: float = DEFAULT_ALPHA


@dataclass
class Figure:
    """The panels of one image: original, original + outline, CAM overlay + outline, and, where the
    prediction and the label differ and the run stored both maps, the other class's overlay."""

    original: np.ndarray
    outlined: np.ndarray
    overlay: np.ndarray
    notes: list[str] = field(default_factory=list)
    refused: str | None = None  # why the image itself was not read
    other: np.ndarray | None = None  # overlay of ``cam_other``
    overlay_title: str = "Grad-CAM overlay"
    other_title: str = ""

    def panels(self) -> list[tuple[np.ndarray, str]]:
        out = [(self.original, "original"), (self.outlined, "object outline"), (self.overlay, self.overlay_title)]
        if self.other is not None:
            out.append((self.other, self.other_title))
        return out

    def strip(self, gap: int = 4) -> np.ndarray:
        """The panels side by side: (H, k W + (k - 1) gap, 3) uint8."""
        imgs = [p for p, _ in self.panels()]
        h = max(p.shape[0] for p in imgs)
        parts = []
        for i, p in enumerate(imgs):
            if p.shape[0] < h:
                p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
            parts.append(p)
            if i < len(imgs) - 1:
                parts.append(np.full((h, gap, 3), 255, np.uint8))
        return np.concatenate(parts, axis=1)


def map_titles(row: dict[str, Any]) -> tuple[str, str]:
    """Titles of the ``cam`` and ``cam_other`` panels: whose class each map explains."""
    target, pred, label = row.get("target"), row.get("pred"), row.get("label")
    if not target:
        return "Grad-CAM overlay", ""
    role = "prediction" if target == pred else "label" if target == label else "target"
    other, other_role = (label, "label") if target == pred else (pred, "prediction")
    return f"Grad-CAM: {target} ({role})", f"Grad-CAM: {other} ({other_role})"


def figure(row: dict[str, Any], roots: Sequence[str], max_side: int, mask_roots: Sequence[str] = (),
           style: OverlayStyle = OverlayStyle()) -> Figure:
    """Render one result row: reads the image (through :func:`guard_path`), its outlines and CAM(s).

    ``row`` needs ``path``, ``dataset_root``, ``image_w``, ``image_h``, ``view_box``, ``cam``,
    ``cam_h``, ``cam_w``, ``annotations`` and ``label`` (``cam_other``, ``target`` and ``pred`` for the
    second map). The image is served only from ``roots``; mask files from ``roots`` or ``mask_roots``
    (the mask folders the audit read). Nothing is raised for a bad row: the figure carries a
    placeholder and the reason.
    """
    src_w, src_h = row.get("image_w"), row.get("image_h")
    try:
        real = guard_path(row.get("path"), roots, base=row.get("dataset_root"))
        img = load_image(real, max_side, roots)
    except UnsafePathError as e:
        return _refused(src_w, src_h, max_side, str(e))
    except SourceError as e:
        return _refused(src_w, src_h, max_side, f"image {e.message}")
    except _DECODE_ERRORS as e:
        return _refused(src_w, src_h, max_side, f"image {row.get('path')!r} could not be decoded: {e}")
    h, w = img.shape[:2]
    if not src_w or not src_h:
        src_w, src_h = w, h
    scale = (w / float(src_w), h / float(src_h))
    notes: list[str] = []
    try:
        objects = loads(row.get("annotations"))
    except AnnotationError as e:
        objects, notes = [], [f"annotations unreadable: {e}"]
    readable = [*roots, *mask_roots]

    def load_mask(mask_path: str) -> np.ndarray:
        mp = guard_path(mask_path, readable, base=row.get("dataset_root"))
        with Image.open(open_source(mp, readable, _guard_local)) as m:
            if m.width * m.height > MAX_PIXELS:
                raise UnsafePathError(f"mask {str(mp)!r} is too large to decode")
            return np.asarray(ImageOps.exif_transpose(m).convert("L")) > 0

    width = max(2, round(max(w, h) / 160))
    outlined, more = draw_outlines(img, objects, row.get("label"), scale, load_mask, width=width)
    notes += more
    cam = cam_array(row)
    box = row.get("view_box")
    title, other_title = map_titles(row)
    if cam is None:
        notes.append("no CAM stored for this row")
        return Figure(img, outlined, outlined, notes)
    if box is None or len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        box = (0.0, 0.0, float(src_w), float(src_h))
        notes.append("no view_box: the map is spread over the whole image")

    def drawn(m: np.ndarray, whose: str) -> np.ndarray:
        if float(np.nanmax(m)) <= 0:
            notes.append(f"the map of {whose} is zero everywhere (no evidence for it)")
        heat, inside = cam_heat(m, box, w, h, scale)
        out, _ = draw_outlines(overlay(img, heat, inside, style.alpha, style.cmap), objects, row.get("label"),
                               scale, load_mask, width=max(1, width - 1))
        return out

    over = drawn(cam, str(row.get("target") or "the target"))
    alt = cam_array(row, "cam_other")
    other = None if alt is None else drawn(alt, other_title.removeprefix("Grad-CAM: "))
    return Figure(img, outlined, over, notes, overlay_title=title, other=other,
                  other_title=other_title if other is not None else "")


def _refused(src_w: Any, src_h: Any, max_side: int, reason: str) -> Figure:
    w, h = (int(src_w), int(src_h)) if src_w and src_h else (max_side, max_side)
    f = max_side / max(w, h)
    ph = placeholder(max(int(w * f), 8), max(int(h * f), 8), "not shown")
    return Figure(ph, ph, ph, [], refused=reason)
