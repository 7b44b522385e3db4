"""Synthetic image datasets with a planted spurious cue and exact object annotations.

Every image shows one target object (its class: ``disk``, ``square``, ``triangle``, ...) in a
random colour, position, scale and slight rotation, plus one *cue* that agrees with the label with
probability ``correlation`` and otherwise points to another class chosen uniformly. A model
trained at high correlation is the ground-truth biased case (its accuracy collapses on the
``cue_reversed`` split, correlation 0); one trained at ``1 / num_classes`` (cue independent of the
label) is the fair case. Cues live in :data:`CUES`, one short class each:

- ``background``: the background hue follows the class (textured, never flat, so a neutral fill
  is out of distribution as it is for photos).
- ``texture``: a per-class stripe *orientation* modulates the background; every class draws its
  hue from the same distribution and stripes average out, so colour statistics cannot see it.
- ``cooccur``: a co-occurring distractor object anywhere in the image, one distractor category per
  class, annotated as its own category.
- ``keyboard``: the same, but the distractor sits right beside the target ("the keyboard next to
  the mouse"), where a coarse saliency map cannot separate the two.
- ``watermark``: a small badge with a per-class glyph in the bottom-right corner, recorded in the
  image attributes but not annotated (like a real watermark).

``salience`` (0, 1] scales how visible the cue is (each cue's :attr:`Cue.salience_note` says how:
hue separation, stripe contrast, distractor size, mark size and contrast); 1 is the original
rendering. ``backdrop`` picks procedural textures, crops of real photos (scikit-image's bundled
samples, tinted with the background colour: :func:`photo_background`) or a mix; ``edge_blur``
softens object edges with a Gaussian of that many pixels.

Objects are drawn 8x supersampled: the image gets the anti-aliased (optionally blurred) coverage
and the mask is the pixels the object covers at least half, so the mask PNG, the COCO polygons
(the exact geometry; a 32-gon for disks) and the pixels agree. Each image's ``attributes`` hold
oracle facts (``cue_class``, ``cue_aligned``, ...); ``manifest-public.csv`` keeps only what a real
dataset could record (:attr:`Cue.observable`), for audits that must not see the answer.
Numpy + Pillow only (scikit-image for photo backdrops, imported when used): slim tools import it.

>>> out = generate("data/bg", SynthConfig(cue="background", n=300, correlation=0.6))  # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw

from common.annotations import ObjectAnn, dumps
from common.registry import Registry

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
"""Bump when the drawing changes: images of the same config and index would differ."""

DEFAULT_CLASSES = ("disk", "square", "triangle")
BIASED_CORRELATION = 0.99
"""Training splits of the ground-truth biased models: high enough that all three cues win over shape
(accuracy on ``cue_reversed`` < 0.2 with the default training), with 1% cue-conflicting images left."""
AUDIT_CORRELATION = 0.6
"""Audit splits keep the cue informative yet, with 3 classes, 40% of images are cue-conflicting (the minority groups)."""

PUBLIC_MANIFEST = "manifest-public.csv"

AREA_RANGE = (0.08, 0.25)  # target object area / image area
MAX_TILT_DEG = 15.0  # rotation of the polygonal targets
SUPERSAMPLE = 8  # drawing resolution factor; masks agree with COCO polygons to IoU ~0.99 at 8x

Backdrop = Literal["texture", "photo", "mixed"]
BACKDROPS: tuple[str, ...] = ("texture", "photo", "mixed")  # mixed: each image picks one of the two at random

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel coordinates (pixel (x, y) covers [x, x+1))


class SynthError(ValueError):
    """A synthetic dataset that cannot be generated (names the argument or file and the problem)."""


# --------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Shape:
    """One drawable object in continuous pixel coordinates.

    ``rings`` are the polygons (COCO's convention: pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``).
    When ``circles`` (``(cx, cy, r)``) are given they are drawn as exact ellipses and ``rings`` hold
    their polygon approximations.
    """

    rings: tuple[tuple[tuple[float, float], ...], ...]
    circles: tuple[tuple[float, float, float], ...] = ()

    def shifted(self, dx: float, dy: float) -> Shape:
        return Shape(
            rings=tuple(tuple((x + dx, y + dy) for x, y in ring) for ring in self.rings),
            circles=tuple((x + dx, y + dy, r) for x, y, r in self.circles),
        )

    def bounds(self) -> Box:
        xs = [x for ring in self.rings for x, _ in ring] + [c[0] + s * c[2] for c in self.circles for s in (-1, 1)]
        ys = [y for ring in self.rings for _, y in ring] + [c[1] + s * c[2] for c in self.circles for s in (-1, 1)]
        return min(xs), min(ys), max(xs), max(ys)

    def coverage(self, size: int) -> np.ndarray:
        """Fraction of each pixel the shape covers, ``(size, size)`` float32 in [0, 1]."""
        f = SUPERSAMPLE
        hi = Image.new("L", (size * f, size * f), 0)
        draw = ImageDraw.Draw(hi)
        if self.circles:
            for cx, cy, r in self.circles:
                draw.ellipse([(cx - r) * f - 0.5, (cy - r) * f - 0.5, (cx + r) * f - 0.5, (cy + r) * f - 0.5], fill=255)
        else:
            for ring in self.rings:
                draw.polygon([(x * f - 0.5, y * f - 0.5) for x, y in ring], fill=255)
        return np.asarray(hi.reduce(f), dtype=np.float32) / 255.0  # box average of the f x f sub-pixels

    def coco_polygons(self) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(round(v, 2) for xy in ring for v in xy) for ring in self.rings)


def _ngon(n: int, radius: float, angle: float = 0.0, cx: float = 0.0, cy: float = 0.0) -> tuple[tuple[float, float], ...]:
    return tuple((cx + radius * math.cos(angle + 2 * math.pi * i / n), cy + radius * math.sin(angle + 2 * math.pi * i / n)) for i in range(n))


def _circle(cx: float, cy: float, r: float) -> Shape:
    return Shape(rings=(_ngon(32, r, 0.0, cx, cy),), circles=((cx, cy, r),))


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


TargetShape = Callable[[float, float], Shape]
"""``(area_px, tilt_radians) -> Shape`` centred on the origin."""

TARGETS: Registry[TargetShape] = Registry("synthetic object shape")


@TARGETS.register("disk")
def _disk(area: float, tilt: float) -> Shape:
    return _circle(0.0, 0.0, math.sqrt(area / math.pi))


@TARGETS.register("square")
def _square(area: float, tilt: float) -> Shape:
    return Shape(rings=(_ngon(4, math.sqrt(area / 2), math.pi / 4 + tilt),))


@TARGETS.register("triangle")
def _triangle(area: float, tilt: float) -> Shape:
    radius = math.sqrt(area * 4 / (3 * math.sqrt(3)))
    return Shape(rings=(_ngon(3, radius, -math.pi / 2 + tilt),))


@TARGETS.register("star")
def _star(area: float, tilt: float) -> Shape:
    outer = math.sqrt(area / (5 * 0.5 * math.sin(math.pi / 5)))
    pts = [
        ((outer if i % 2 == 0 else outer / 2) * math.cos(-math.pi / 2 + tilt + math.pi * i / 5),
         (outer if i % 2 == 0 else outer / 2) * math.sin(-math.pi / 2 + tilt + math.pi * i / 5))
        for i in range(10)
    ]
    return Shape(rings=(tuple(pts),))


Pattern = Callable[[float], Shape]
"""``side -> Shape`` inside the box ``[0, side]^2``."""

DISTRACTORS: Registry[Pattern] = Registry("synthetic distractor")


@DISTRACTORS.register("cross")
def _cross(d: float) -> Shape:
    a, b = d / 3, 2 * d / 3
    return Shape(rings=(((a, 0), (b, 0), (b, a), (d, a), (d, b), (b, b), (b, d), (a, d), (a, b), (0, b), (0, a), (a, a)),))


@DISTRACTORS.register("stripes")
def _stripes(d: float) -> Shape:
    h = d / 5
    return Shape(rings=tuple(_rect(0, y, d, y + h) for y in (0.0, 2 * h, 4 * h)))


@DISTRACTORS.register("dots")
def _dots(d: float) -> Shape:
    r = 0.2 * d
    dots = [_circle(cx * d, cy * d, r) for cy in (0.25, 0.75) for cx in (0.25, 0.75)]
    return Shape(rings=tuple(s.rings[0] for s in dots), circles=tuple(s.circles[0] for s in dots))


@DISTRACTORS.register("chevron")
def _chevron(d: float) -> Shape:
    return Shape(rings=(((0, 0), (d / 2, 0.55 * d), (d, 0), (d, 0.45 * d), (d / 2, d), (0, 0.45 * d)),))


Glyph = Callable[[ImageDraw.ImageDraw, float], None]
"""Draws a watermark glyph in white into a ``side x side`` patch."""

GLYPHS: Registry[Glyph] = Registry("watermark glyph")


@GLYPHS.register("plus")
def _plus(draw: ImageDraw.ImageDraw, s: float) -> None:
    draw.rectangle([0.12 * s, 0.38 * s, 0.88 * s, 0.62 * s], fill=255)
    draw.rectangle([0.38 * s, 0.12 * s, 0.62 * s, 0.88 * s], fill=255)


@GLYPHS.register("x")
def _x(draw: ImageDraw.ImageDraw, s: float) -> None:
    w = round(0.24 * s)
    draw.line([0.15 * s, 0.15 * s, 0.85 * s, 0.85 * s], fill=255, width=w)
    draw.line([0.15 * s, 0.85 * s, 0.85 * s, 0.15 * s], fill=255, width=w)


@GLYPHS.register("ring")
def _ring(draw: ImageDraw.ImageDraw, s: float) -> None:
    draw.ellipse([0.12 * s, 0.12 * s, 0.88 * s, 0.88 * s], outline=255, width=round(0.22 * s))


@GLYPHS.register("bars")
def _bars(draw: ImageDraw.ImageDraw, s: float) -> None:
    draw.rectangle([0.12 * s, 0.15 * s, 0.88 * s, 0.38 * s], fill=255)
    draw.rectangle([0.12 * s, 0.62 * s, 0.88 * s, 0.85 * s], fill=255)


# --------------------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Instance:
    """One drawn object: its category, exact geometry and the pixels it covers at least half."""

    category: str
    shape: Shape
    mask: np.ndarray = field(repr=False, compare=False)  # (size, size) bool

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def to_ann(self) -> ObjectAnn:
        return ObjectAnn(category=self.category, polygons=self.shape.coco_polygons())


@functools.lru_cache(maxsize=8)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` Gaussian convolution matrix, kernel radius ``ceil(3 sigma)``, zero padding."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    idx = np.arange(n)
    d = idx[None, :] - idx[:, None]
    return np.where(np.abs(d) <= r, k[np.clip(d + r, 0, 2 * r)], 0.0).astype(np.float32)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a ``(h, w)`` map with zero padding (kernel radius ``ceil(3 sigma)``)."""
    return _blur_matrix(a.shape[0], sigma) @ a @ _blur_matrix(a.shape[1], sigma).T


class Canvas:
    """An RGB float image being drawn on, with the union of everything placed so far.

    ``edge_blur`` > 0 softens every object's coverage with a Gaussian of that sigma (px); its mask
    stays the pixels covered at least half.
    """

    def __init__(self, background: np.ndarray, edge_blur: float = 0.0) -> None:
        self.pixels = background.astype(np.float32)  # (size, size, 3) in [0, 1]
        self.size = background.shape[0]
        self.occupied = np.zeros((self.size, self.size), dtype=bool)
        self.edge_blur = edge_blur

    def add(self, category: str, shape: Shape, rgb: Sequence[float]) -> Instance:
        cover = shape.coverage(self.size)
        if self.edge_blur > 0:
            cover = gaussian_blur(cover, self.edge_blur)
        alpha = cover[..., None]
        self.pixels = self.pixels * (1 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha
        mask = alpha[..., 0] >= 0.5
        self.occupied |= alpha[..., 0] > (0.02 if self.edge_blur > 0 else 0)  # a blur's far tail is not "drawn"
        return Instance(category=category, shape=shape, mask=mask)

    def paint(self, alpha: np.ndarray, rgb: Sequence[float]) -> None:
        """Composite a colour through a coverage map ``(size, size)`` (for marks that are not objects)."""
        a = alpha[..., None]
        self.pixels = self.pixels * (1 - a) + np.asarray(rgb, dtype=np.float32) * a
        self.occupied |= alpha > 0

    def free_spot(self, rng: np.random.Generator, side: int, margin: int,
                  near: tuple[float, float] | None = None) -> tuple[int, int] | None:
        """The top-left corner of a ``side`` square that keeps ``margin`` px from everything drawn:
        uniformly chosen, or with ``near`` (x, y) one of those whose centre is closest to that point."""
        win = side + 2 * margin
        if win > self.size:
            return None
        ii = np.pad(self.occupied.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        sums = ii[win:, win:] - ii[:-win, win:] - ii[win:, :-win] + ii[:-win, :-win]
        ys, xs = np.nonzero(sums == 0)
        if len(xs) == 0:
            return None
        if near is not None:
            d = np.hypot(xs + win / 2 - near[0], ys + win / 2 - near[1])
            close = d <= d.min() + 1.5
            xs, ys = xs[close], ys[close]
        k = int(rng.integers(len(xs)))
        return int(xs[k]) + margin, int(ys[k]) + margin

    def to_image(self) -> Image.Image:
        return Image.fromarray(np.clip(np.round(self.pixels * 255), 0, 255).astype(np.uint8), "RGB")


def textured_background(rng: np.random.Generator, size: int, rgb: Sequence[float]) -> np.ndarray:
    """Smooth low-frequency shading, a random gradient and fine grain around ``rgb``: ``(size, size, 3)``.

    Never flat, so that replacing a region by its mean colour (a counterfactual) is as out of
    distribution here as it is for photographs.
    """
    coarse = rng.normal(0.0, 1.0, (4, 4)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)) - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(theta) * xx + math.sin(theta) * yy) * rng.uniform(0.2, 0.4)
    shade = 1.0 + 0.1 * smooth + ramp
    grain = rng.normal(0.0, 0.02, (size, size, 3)).astype(np.float32)
    return np.clip(np.asarray(rgb, dtype=np.float32) * shade[..., None] + grain, 0.0, 1.0)


PHOTO_CROP = (0.3, 0.7)  # crop side / the photo's short side
PHOTO_CONTRAST = 0.25  # std of the relative shading a photo crop gives the background colour


@functools.lru_cache(maxsize=1)
def _photo_luminances() -> tuple[np.ndarray, ...]:
    from cuebench.realphotos import load_photo, photo_specs

    return tuple(np.asarray(Image.fromarray(load_photo(s["loader"])).convert("L"), dtype=np.float32) / 255.0
                 for s in photo_specs())


def photo_background(rng: np.random.Generator, size: int, rgb: Sequence[float]) -> np.ndarray:
    """A random crop of one of scikit-image's bundled photos (:mod:`cuebench.realphotos`), its
    luminance used as shading of ``rgb`` plus fine grain: ``(size, size, 3)``.

    Real structure (fur, edges, text, sky) with the colour statistics still set by ``rgb``, so a
    colour cue stays a colour cue and a cue-free background's colour stays uninformative.
    """
    photos = _photo_luminances()
    lum = photos[int(rng.integers(len(photos)))]
    h, w = lum.shape
    side = int(rng.uniform(*PHOTO_CROP) * min(h, w))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(lum[y0 : y0 + side, x0 : x0 + side], "F").resize((size, size), Image.Resampling.BILINEAR)
    crop_a = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        crop_a = crop_a[:, ::-1]
    shade = np.clip(1.0 + PHOTO_CONTRAST * (crop_a - crop_a.mean()) / (crop_a.std() + 1e-6), 0.3, 1.7)
    grain = rng.normal(0.0, 0.02, (size, size, 3)).astype(np.float32)
    return np.clip(np.asarray(rgb, dtype=np.float32) * shade[..., None] + grain, 0.0, 1.0)


def _object_colour(rng: np.random.Generator, background: Sequence[float]) -> tuple[float, float, float]:
    bg = np.asarray(background)
    for _ in range(100):
        rgb = rng.random(3)
        if np.linalg.norm(rgb - bg) >= 0.5:  # keep the object visible; its colour is otherwise free
            return tuple(float(v) for v in rgb)  # type: ignore[return-value]
    return tuple(float(v) for v in 1.0 - bg)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- cues


class Cue:
    """A planted spurious cue; a new one is a short subclass registered in :data:`CUES`.

    The renderer picks ``cue_k``, the class the cue points to (the label with probability
    ``correlation``, else another class uniformly), draws the background with :meth:`hue`, lets
    :meth:`backdrop` change it, places the target object outside :meth:`keep_free` and then calls
    :meth:`draw`, which adds the cue and returns the annotated extra objects and the cue's
    attributes (or ``None`` when it found no room, to have the target placed again). ``salience``
    in (0, 1] scales how visible the cue is (1: the original rendering), as :attr:`salience_note` says.
    """

    name: ClassVar[str] = ""
    note: ClassVar[str] = ""
    salience_note: ClassVar[str] = ""
    choices: ClassVar[tuple[str, ...]] = ()  # per-class cue variants (distractor/glyph names), in class order
    observable: ClassVar[tuple[str, ...]] = ()  # attribute keys a real dataset could record (manifest-public.csv)

    def __init__(self, salience: float = 1.0) -> None:
        self.salience = salience

    def categories(self, classes: Sequence[str]) -> tuple[str, ...]:
        """Extra annotated categories this cue draws."""
        return ()

    def hue(self, rng: np.random.Generator, cue_k: int, n_classes: int) -> float:
        return float(rng.random())

    def backdrop(self, background: np.ndarray, rng: np.random.Generator, cue_k: int, n_classes: int) -> np.ndarray:
        """The background ``(size, size, 3)`` before any object is drawn; a cue may change it."""
        return background

    def keep_free(self, size: int) -> tuple[Box, ...]:
        return ()

    def draw(self, canvas: Canvas, rng: np.random.Generator, cue_k: int) -> tuple[list[Instance], dict[str, str]] | None:
        return [], {}

    def check(self, classes: Sequence[str]) -> None:
        if self.choices and len(classes) > len(self.choices):
            raise SynthError(
                f"cue {self.name!r} has {len(self.choices)} variants ({', '.join(self.choices)}) but {len(classes)} classes were asked for"
            )


CUES: Registry[type[Cue]] = Registry("synthetic cue")


def _cue(name: str) -> Callable[[type[Cue]], type[Cue]]:
    def add(cls: type[Cue]) -> type[Cue]:
        cls.name = name
        CUES.add(name, cls)
        return cls

    return add


@_cue("background")
class BackgroundCue(Cue):
    note = "background hue: class k -> hue k / num_classes (textured), else another class's hue"
    salience_note = "hue separation between classes: class k's hue is salience * k / num_classes (+-0.03)"

    def hue(self, rng: np.random.Generator, cue_k: int, n_classes: int) -> float:
        return (self.salience * cue_k / n_classes + rng.uniform(-0.03, 0.03)) % 1.0


@_cue("texture")
class TextureCue(Cue):
    note = ("background stripes at a per-class orientation (class k: k * 180 / num_classes degrees); every "
            "class's hue is drawn uniformly and the stripes average out, so colour statistics cannot see it")
    salience_note = "stripe contrast: the background is shaded by 1 + 0.3 * salience * sin(stripe phase)"
    AMPLITUDE = 0.3
    PERIOD = (5.0, 8.0)  # px at 64 px, scaled with the image

    def backdrop(self, background: np.ndarray, rng: np.random.Generator, cue_k: int, n_classes: int) -> np.ndarray:
        size = background.shape[0]
        theta = math.pi * cue_k / n_classes
        period = rng.uniform(*self.PERIOD) * size / 64
        phase = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
        shade = 1.0 + self.AMPLITUDE * self.salience * wave
        return np.clip(background * shade[..., None], 0.0, 1.0)

    def draw(self, canvas: Canvas, rng: np.random.Generator, cue_k: int) -> tuple[list[Instance], dict[str, str]] | None:
        return [], {}


@_cue("cooccur")
class CooccurCue(Cue):
    note = "a co-occurring distractor object, one category per class, annotated as its own category"
    salience_note = "distractor size: its side is (0.5 + 0.5 * salience) x the full-salience side"
    choices = ("cross", "stripes", "dots", "chevron")
    SIDE = (0.2, 0.28)  # distractor side / image side at salience 1
    MIN_SIDE = 0.16
    BESIDE = False  # True: placed as close to the target as there is room (the keyboard beside the mouse)

    def categories(self, classes: Sequence[str]) -> tuple[str, ...]:
        return self.choices[: len(classes)]

    def draw(self, canvas: Canvas, rng: np.random.Generator, cue_k: int) -> tuple[list[Instance], dict[str, str]] | None:
        size, name = canvas.size, self.choices[cue_k]
        scale = 0.5 + 0.5 * self.salience
        side = round(rng.uniform(*self.SIDE) * scale * size)
        margin = max(1, round(size / 32))
        near = None
        if self.BESIDE:
            ys, xs = np.nonzero(canvas.occupied)
            near = (float(xs.mean()), float(ys.mean())) if len(xs) else None
        while side >= round(self.MIN_SIDE * scale * size):
            spot = canvas.free_spot(rng, side, margin, near=near)
            if spot is not None:
                grey = float(rng.uniform(0.9, 1.0))
                inst = canvas.add(name, DISTRACTORS.get(name)(side).shifted(*spot), (grey, grey, grey))
                return [inst], {"distractor": name}
            side -= 1
        return None


@_cue("keyboard")
class KeyboardCue(CooccurCue):
    note = ("a large co-occurring object right beside the target (the keyboard next to the mouse), one "
            "category per class, annotated as its own category")
    SIDE = (0.26, 0.32)
    MIN_SIDE = 0.2
    BESIDE = True


@_cue("watermark")
class WatermarkCue(Cue):
    note = "a dark badge with a per-class white glyph in the bottom-right corner; not an annotated object"
    salience_note = ("mark size and contrast: the badge side is (0.5 + 0.5 * salience) x 1/8 of the image (>= 6 px) "
                     "and the glyph's grey goes from the badge's (0.06) to white with salience")
    choices = ("plus", "x", "ring", "bars")
    observable = ("watermark",)  # which mark an image carries, as a stock-photo dataset records it
    SIDE = 0.125  # badge side / image side at salience 1
    BADGE = 0.06

    def _box(self, size: int) -> tuple[int, int, int]:
        side = max(6, round(self.SIDE * (0.5 + 0.5 * self.salience) * size))
        inset = max(1, round(size / 32))
        return size - inset - side, size - inset - side, side

    def keep_free(self, size: int) -> tuple[Box, ...]:
        x, y, side = self._box(size)
        m = max(1, round(size / 32))
        return ((x - m, y - m, x + side + m, y + side + m),)

    def draw(self, canvas: Canvas, rng: np.random.Generator, cue_k: int) -> tuple[list[Instance], dict[str, str]] | None:
        x, y, side = self._box(canvas.size)
        name = self.choices[cue_k]
        badge = np.zeros((canvas.size, canvas.size), dtype=np.float32)
        badge[y : y + side, x : x + side] = 1.0
        canvas.paint(badge, (self.BADGE,) * 3)
        f = SUPERSAMPLE
        hi = Image.new("L", (side * f, side * f), 0)
        GLYPHS.get(name)(ImageDraw.Draw(hi), side * f)
        glyph = np.zeros_like(badge)
        glyph[y : y + side, x : x + side] = np.asarray(hi.reduce(f), dtype=np.float32) / 255
        canvas.paint(glyph, (self.BADGE + (1.0 - self.BADGE) * self.salience,) * 3)
        return [], {"watermark": name, "watermark_box": f"{x},{y},{side},{side}"}


# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """One synthetic split: images ``start .. start + n - 1`` of the stream ``(cue, seed, split, ...)``.

    ``correlation`` is P(cue agrees with the label); ``1 / len(classes)`` makes the cue independent
    of the label, ``0`` always shows another class's cue (the reversed split). Image ``i`` depends
    only on ``(seed, split, i)`` and the other fields, so a dataset grows by raising ``n`` (or by a
    later ``start``) without touching the images already written. ``salience``, ``backdrop`` and
    ``edge_blur`` (see the module docstring) were added later: at their defaults they leave the
    rendering, :meth:`key` and :meth:`stream` exactly what they were, so older folders and cached
    models stay valid.
    """

    cue: str
    n: int
    correlation: float
    size: int = 64
    seed: int = 0
    classes: tuple[str, ...] = DEFAULT_CLASSES
    split: str = "audit"
    image_format: Literal["png", "jpg"] = "png"
    start: int = 0
    salience: float = 1.0
    backdrop: Backdrop = "texture"
    edge_blur: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        cue = CUES.get(self.cue)()  # raises, listing the valid cues
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise SynthError(f"n must be an int >= 0, got {self.n!r}")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise SynthError(f"start must be an int >= 0, got {self.start!r}")
        if not 0.0 <= float(self.correlation) <= 1.0:
            raise SynthError(f"correlation must be in [0, 1], got {self.correlation!r}")
        if not isinstance(self.size, int) or self.size < 32:
            raise SynthError(f"size must be an int >= 32 (objects, distractors and watermarks must fit), got {self.size!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise SynthError(f"classes must be >= 2 distinct names, got {self.classes!r}")
        cue.check(self.classes)
        for c in self.classes:
            TARGETS.get(c)  # raises, listing the drawable shapes
        if self.image_format not in ("png", "jpg"):
            raise SynthError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.split):
            raise SynthError(f"split must be a file-name-safe word ([A-Za-z0-9_-]), got {self.split!r}")
        if isinstance(self.salience, bool) or not 0.0 < float(self.salience) <= 1.0:
            raise SynthError(f"salience must be in (0, 1], got {self.salience!r}")
        if self.backdrop not in BACKDROPS:
            raise SynthError(f"backdrop must be one of {', '.join(BACKDROPS)}, got {self.backdrop!r}")
        if isinstance(self.edge_blur, bool) or not 0.0 <= float(self.edge_blur) <= self.size / 16:
            raise SynthError(f"edge_blur must be a sigma in px in [0, size / 16], got {self.edge_blur!r}")

    def image_id(self, index: int) -> str:
        return f"{self.split}_{index:06d}"

    def key(self) -> dict[str, object]:
        """Every field, minus the later ones left at their defaults (so old keys and hashes still match)."""
        d = asdict(self)
        for name, default in _LATER_DEFAULTS.items():
            if d[name] == default:
                d.pop(name)
        return d

    def stream(self) -> dict[str, object]:
        """The fields that decide image ``i`` (everything but ``n`` and ``start``)."""
        d = self.key()
        d.pop("n")
        d.pop("start")
        d["classes"] = list(self.classes)
        return d


_LATER_DEFAULTS: dict[str, object] = {"salience": 1.0, "backdrop": "texture", "edge_blur": 0.0}


# --------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Scene:
    """One rendered image with its target mask, annotated instances (target first) and attributes."""

    index: int
    image_id: str
    label: str
    image: Image.Image = field(repr=False)
    mask: Image.Image = field(repr=False)  # "L", 255 = target object
    instances: tuple[Instance, ...]
    attributes: dict[str, str]


def _rngs(cfg: SynthConfig, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Object, cue and backdrop streams; the third one is only drawn from for photo backdrops."""
    split_key = int.from_bytes(hashlib.sha256(cfg.split.encode()).digest()[:4], "little")
    base = [cfg.seed, split_key, index]
    return tuple(np.random.default_rng(base + [s]) for s in range(3))  # type: ignore[return-value]


def _place_target(rng: np.random.Generator, kind: str, size: int, keep_free: tuple[Box, ...]) -> Shape:
    area = rng.uniform(*AREA_RANGE) * size * size
    tilt = 0.0 if kind == "disk" else math.radians(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    margin = max(1, size / 64)
    for _ in range(8):  # a big object may not fit beside a reserved corner: shrink it a little and retry
        shape = TARGETS.get(kind)(area, tilt)
        x0, y0, x1, y1 = shape.bounds()
        for _ in range(50):
            dx = rng.uniform(margin - x0, size - margin - x1)
            dy = rng.uniform(margin - y0, size - margin - y1)
            if not any(dx + x0 < b[2] and b[0] < dx + x1 and dy + y0 < b[3] and b[1] < dy + y1 for b in keep_free):
                return shape.shifted(dx, dy)
        area *= 0.9
    raise SynthError(f"cannot place a {kind!r} in a {size}px image clear of {keep_free}")


def render(cfg: SynthConfig, index: int) -> Scene:
    """Draw image ``index`` of ``cfg``'s stream (deterministic in ``(cfg.seed, cfg.split, index)``)."""
    cue = CUES.get(cfg.cue)(cfg.salience)
    k = len(cfg.classes)
    obj_rng, cue_rng, backdrop_rng = _rngs(cfg, index)
    label_k = index % k
    aligned = bool(cue_rng.random() < cfg.correlation)
    cue_k = label_k if aligned else (label_k + 1 + int(cue_rng.integers(k - 1))) % k
    hue = cue.hue(cue_rng, cue_k, k)
    bg_rgb = colorsys.hsv_to_rgb(hue, cue_rng.uniform(0.45, 0.75), cue_rng.uniform(0.4, 0.7))
    background = textured_background(cue_rng, cfg.size, bg_rgb)
    backdrop = cfg.backdrop if cfg.backdrop != "mixed" else ("photo" if backdrop_rng.random() < 0.5 else "texture")
    if backdrop == "photo":
        background = photo_background(backdrop_rng, cfg.size, bg_rgb)
    background = cue.backdrop(background, cue_rng, cue_k, k)
    label = cfg.classes[label_k]
    for _ in range(50):
        canvas = Canvas(background, cfg.edge_blur)
        target = canvas.add(label, _place_target(obj_rng, label, cfg.size, cue.keep_free(cfg.size)), _object_colour(obj_rng, bg_rgb))
        drawn = cue.draw(canvas, cue_rng, cue_k)
        if drawn is not None:
            break
    else:
        raise SynthError(f"cue {cfg.cue!r} found no room next to the target in image {index} ({cfg.size}px)")
    extras, cue_attrs = drawn
    attributes = {
        "cue": cfg.cue,
        "cue_class": cfg.classes[cue_k],
        "cue_aligned": "yes" if aligned else "no",
        "background_hue": f"{hue:.3f}",
        **({"backdrop": backdrop} if cfg.backdrop != "texture" else {}),
        **cue_attrs,
    }
    mask = Image.fromarray(target.mask.astype(np.uint8) * 255, "L")
    return Scene(index, cfg.image_id(index), label, canvas.to_image(), mask, (target, *extras), attributes)


# --------------------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _previous_ranges(out: Path, cfg: SynthConfig) -> list[list[int]]:
    meta = out / "synth.json"
    if not meta.is_file():
        images = out / "images"
        if images.is_dir() and any(images.iterdir()):
            raise SynthError(f"{images} already holds images but {meta} is missing; generate into an empty folder")
        return []
    try:
        old = json.loads(meta.read_text())
        old_stream, ranges = old["stream"], old["ranges"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SynthError(f"{meta} is not a synth.json written by cueaudit ({e}); generate into an empty folder") from None
    if old.get("version") != SYNTH_VERSION or old_stream != cfg.stream():
        new_stream = cfg.stream()
        diff = {k: (old_stream.get(k), new_stream.get(k)) for k in sorted(set(old_stream) | set(new_stream))
                if old_stream.get(k) != new_stream.get(k)}
        raise SynthError(
            f"{out} holds another synthetic dataset (version {old.get('version')} vs {SYNTH_VERSION}; differs in {diff}); "
            "grow it only with the same cue/correlation/size/seed/classes/split/image_format/salience/backdrop/edge_blur, "
            "or use another folder"
        )
    return [list(r) for r in ranges]


def generate(out_dir: str | os.PathLike[str], cfg: SynthConfig) -> Path:
    """Write images ``cfg.start .. cfg.start + cfg.n - 1`` into ``out_dir`` and (re)write its indexes.

    Layout: ``images/<class>/<id>.<fmt>`` (ImageFolder), ``masks/<class>/<id>.png`` (target object,
    255 = object), ``coco.json`` (every instance incl. distractors, polygon segmentation),
    ``manifest.csv`` (image, label, objects, attributes incl. the oracle ones),
    ``manifest-public.csv`` (the same without the oracle attributes: what a real dataset could hold),
    ``synth.json`` (config, counts, cue note).
    Images already present are left byte-identical; the indexes list every image of the folder.
    """
    out = Path(out_dir)
    ranges = _merge(_previous_ranges(out, cfg) + [[cfg.start, cfg.start + cfg.n]])
    cue = CUES.get(cfg.cue)(cfg.salience)
    categories = list(cfg.classes) + list(cue.categories(cfg.classes))
    cat_ids = {c: i + 1 for i, c in enumerate(categories)}
    coco_images: list[dict[str, object]] = []
    coco_anns: list[dict[str, object]] = []
    rows: list[tuple[str, str, str, str]] = []
    public: list[tuple[str, str, str, str]] = []
    counts: Counter[tuple[str, str]] = Counter()
    written = 0
    for a, b in ranges:
        for index in range(a, b):
            scene = render(cfg, index)
            rel_image = f"images/{scene.label}/{scene.image_id}.{cfg.image_format}"
            rel_mask = f"masks/{scene.label}/{scene.image_id}.png"
            if not (out / rel_image).is_file():
                _atomic_write(out / rel_image, _encode(scene.image, cfg.image_format))
                written += 1
            if not (out / rel_mask).is_file():
                _atomic_write(out / rel_mask, _encode(scene.mask, "png"))
            coco_images.append({"id": index + 1, "file_name": rel_image, "width": cfg.size, "height": cfg.size})
            for inst in scene.instances:
                x0, y0, x1, y1 = inst.shape.bounds()
                coco_anns.append({
                    "id": len(coco_anns) + 1,
                    "image_id": index + 1,
                    "category_id": cat_ids[inst.category],
                    "segmentation": [list(r) for r in inst.shape.coco_polygons()],
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": float(inst.area),
                    "iscrowd": 0,
                })
            objects = dumps([i.to_ann() for i in scene.instances])
            rows.append((rel_image, scene.label, objects, json.dumps(scene.attributes, separators=(",", ":"))))
            seen = {k: v for k, v in scene.attributes.items() if k in cue.observable}
            public.append((rel_image, scene.label, objects, json.dumps(seen, separators=(",", ":"))))
            counts[(scene.label, scene.attributes["cue_aligned"])] += 1
    coco = {
        "info": {"description": f"cueaudit synthetic '{cfg.cue}' cue, split {cfg.split}", "version": str(SYNTH_VERSION)},
        "licenses": [],
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [
            {"id": cat_ids[c], "name": c, "supercategory": "object" if c in cfg.classes else "distractor"} for c in categories
        ],
    }
    _atomic_write(out / "coco.json", json.dumps(coco, separators=(",", ":")).encode())
    for name, table in (("manifest.csv", rows), (PUBLIC_MANIFEST, public)):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("image", "label", "objects", "attributes"))
        writer.writerows(table)
        _atomic_write(out / name, buf.getvalue().encode())
    meta = {
        "version": SYNTH_VERSION,
        # The whole folder, not this call: ``ranges`` lists the image indices it holds.
        "config": {**cfg.stream(), "n": len(rows), "start": ranges[0][0] if ranges else 0},
        "stream": cfg.stream(),
        "ranges": ranges,
        "n_images": len(rows),
        "counts": {c: {"images": counts[(c, "yes")] + counts[(c, "no")], "cue_aligned": counts[(c, "yes")]} for c in cfg.classes},
        "cue": {"name": cfg.cue, "note": cue.note, "salience": cfg.salience, "salience_note": cue.salience_note,
                "observable_attributes": list(cue.observable), "annotated_categories": list(cue.categories(cfg.classes)),
                "per_class": dict(zip(cfg.classes, cue.choices, strict=False)) if cue.choices else None},
    }
    _atomic_write(out / "synth.json", json.dumps(meta, indent=2).encode())
    log.info("synth %s/%s: wrote %d new of %d images into %s", cfg.cue, cfg.split, written, len(rows), out)
    return out


def synth_suite(
    root: str | os.PathLike[str],
    cue: str,
    train_n: int = 2000,
    audit_n: int = 600,
    train_correlation: float = BIASED_CORRELATION,
    audit_correlation: float = AUDIT_CORRELATION,
    seed: int = 0,
    size: int = 64,
    reversed_n: int | None = None,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
) -> dict[str, Path]:
    """Write ``root/train``, ``root/audit`` and ``root/cue_reversed`` (correlation 0, ``reversed_n`` defaults to ``audit_n``)."""
    root = Path(root)
    base = SynthConfig(cue=cue, n=train_n, correlation=train_correlation, size=size, seed=seed, classes=classes, split="train")
    splits = {
        "train": base,
        "audit": replace(base, n=audit_n, correlation=audit_correlation, split="audit"),
        "cue_reversed": replace(base, n=audit_n if reversed_n is None else reversed_n, correlation=0.0, split="cue_reversed"),
    }
    return {name: generate(root / name, cfg) for name, cfg in splits.items()}
