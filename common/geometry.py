"""One transform applied to the image AND its masks, so Grad-CAM maps and annotations line up.

A :class:`Geometry` is the preprocessing resize/crop expressed as a single affine map: the region
``box = (x0, y0, x1, y1)`` of the displayed source image (continuous pixel coordinates, pixel ``i``
covers ``[i, i + 1)``) is resampled onto the ``out_h x out_w`` model input. Images and soft masks go
through the same PIL call (``resize(..., BILINEAR, box=box)``, antialiased), points through the same
affine map, so a box annotation and the pixels it outlines cannot drift apart. The filter is the
preprocessing's ``interpolation`` (bilinear or bicubic), the same for image and masks.

``"resize_crop"`` reproduces torchvision's ``Resize(int(size / crop_pct)) + CenterCrop(size)``
exactly: resizing to ``(new_w, new_h)`` and cropping ``[left, left + out_w)`` samples output pixel
``i`` at source ``(left + i + 0.5) * src_w / new_w``, which is what one resize with
``box = (left * src_w / new_w, ..., (left + out_w) * src_w / new_w, ...)`` does (PIL clips the
filter support to the whole image, not to the box, so edge pixels match too).

>>> g = Geometry.plan(512, 512, Preprocess(size=(224, 224), crop_pct=0.875))
>>> g.box                                        # 512 -> 256, centre 224 crop at 16 -> source 32..480
(32.0, 32.0, 480.0, 480.0)
>>> g.points([[32.0, 480.0]]).tolist()
[[0.0, 224.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from common.preprocess import Preprocess

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Geometry:
    """The source box that fills the ``(out_h, out_w)`` model input.

    ``src_w``/``src_h`` are the *displayed* source size (after EXIF orientation); ``box`` is in
    those source pixels. Output pixel ``(i, j)`` covers source
    ``x0 + [j, j + 1) * (x1 - x0) / out_w`` by ``y0 + [i, i + 1) * (y1 - y0) / out_h``.
    """

    src_w: int
    src_h: int
    box: tuple[float, float, float, float]
    out_h: int
    out_w: int
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _FILTERS:
            raise ValueError(f"geometry interpolation must be one of {sorted(_FILTERS)}, got {self.interpolation!r}")
        if min(self.src_w, self.src_h, self.out_w, self.out_h) < 1:
            raise ValueError(
                f"geometry sizes must be positive: source {self.src_w}x{self.src_h}, "
                f"output {self.out_w}x{self.out_h}"
            )
        x0, y0, x1, y1 = self.box
        if not (0 <= x0 < x1 <= self.src_w and 0 <= y0 < y1 <= self.src_h):
            raise ValueError(
                f"geometry box {self.box!r} must be a non-empty region inside the "
                f"{self.src_w}x{self.src_h} source"
            )

    @classmethod
    def plan(cls, src_w: int, src_h: int, pre: Preprocess) -> Geometry:
        """The geometry ``pre`` applies to a ``src_w x src_h`` (displayed) image.

        ``"resize"`` squashes the whole image. ``"resize_crop"`` scales so that the image covers
        ``floor(size / crop_pct)`` on both axes (for a square size: the shorter side becomes
        ``int(size / crop_pct)``, the longer ``int(short * long / short_src)``, torchvision's rounding),
        then takes the centre ``size`` crop with torchvision's ``round((new - size) / 2)`` offset.
        """
        out_h, out_w = int(pre.size[0]), int(pre.size[1])
        if src_w < 1 or src_h < 1:
            raise ValueError(f"cannot plan a geometry for an empty {src_w}x{src_h} image")
        if pre.resize == "resize":
            return cls(src_w, src_h, (0.0, 0.0, float(src_w), float(src_h)), out_h, out_w, pre.interpolation)
        scale_h = math.floor(out_h / pre.crop_pct)
        scale_w = math.floor(out_w / pre.crop_pct)
        # Same operation order as torchvision's _compute_resized_output_size, so the ints agree.
        if scale_h / src_h >= scale_w / src_w:
            new_h, new_w = scale_h, max(scale_w, int(scale_h * src_w / src_h))
        else:
            new_h, new_w = max(scale_h, int(scale_w * src_h / src_w)), scale_w
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        sx, sy = src_w / new_w, src_h / new_h
        x1, y1 = min((left + out_w) * sx, float(src_w)), min((top + out_h) * sy, float(src_h))
        box = (left * sx, top * sy, x1, y1)
        return cls(src_w, src_h, box, out_h, out_w, pre.interpolation)

    def _scaled_box(self, size: tuple[int, int], scale: float) -> tuple[float, float, float, float]:
        w, h = size
        x0, y0, x1, y1 = (v * scale for v in self.box)
        # Float noise (or a draft image that is one pixel short) must not trip PIL's box check.
        return (min(x0, w), min(y0, h), min(x1, float(w)), min(y1, float(h)))

    def image(self, img: Image.Image, scale: float = 1.0) -> np.ndarray:
        """Resample an RGB image to ``(out_h, out_w, 3)`` uint8.

        ``scale`` maps source pixels to ``img`` pixels: ``1`` for a full decode, ``1 / s`` for a
        JPEG drafted by libjpeg at ``1 / s`` (whose pixel ``i`` covers source ``[s i, s (i + 1))``).
        """
        if img.mode != "RGB":
            raise ValueError(f"Geometry.image needs an RGB image, got mode {img.mode!r}")
        box = self._scaled_box(img.size, scale)
        out = img.resize((self.out_w, self.out_h), _FILTERS[self.interpolation], box=box)
        return np.asarray(out, dtype=np.uint8)

    def mask(self, m: np.ndarray) -> np.ndarray:
        """Resample a source mask ``(src_h, src_w)`` to a soft ``(out_h, out_w)`` float32 in [0, 1].

        Same filter and box as :meth:`image` (in PIL mode ``"F"``), so mask edges blur exactly as
        the image's edges do.
        """
        m = np.asarray(m)
        if m.shape != (self.src_h, self.src_w):
            raise ValueError(
                f"mask shape {m.shape} does not match the source size (h, w) = {(self.src_h, self.src_w)}"
            )
        src = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32))
        box = self._scaled_box(src.size, 1.0)
        out = src.resize((self.out_w, self.out_h), _FILTERS[self.interpolation], box=box)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` source ``(x, y)`` coordinates to output coordinates (continuous, float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape[-1:] != (2,):
            raise ValueError(f"points must have shape (..., 2), got {xy.shape}")
        x0, y0, x1, y1 = self.box
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - x0) * (self.out_w / (x1 - x0))
        out[..., 1] = (xy[..., 1] - y0) * (self.out_h / (y1 - y0))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "src_w": self.src_w,
            "src_h": self.src_h,
            "box": list(self.box),
            "out_h": self.out_h,
            "out_w": self.out_w,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        expected = {"src_w", "src_h", "box", "out_h", "out_w"}
        if not expected <= set(d) <= expected | {"interpolation"}:
            raise ValueError(f"geometry dict needs the keys {sorted(expected)} (and optionally interpolation), got {sorted(d)}")
        if len(d["box"]) != 4:
            raise ValueError(f"geometry box must have 4 numbers (x0, y0, x1, y1), got {d['box']!r}")
        x0, y0, x1, y1 = (float(v) for v in d["box"])
        return cls(int(d["src_w"]), int(d["src_h"]), (x0, y0, x1, y1), int(d["out_h"]), int(d["out_w"]),
                   str(d.get("interpolation", "bilinear")))
