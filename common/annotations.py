"""Object annotations as they travel from the readers to the workers.

One :class:`ObjectAnn` is one annotated object instance in *source pixel coordinates of the image
as displayed* (after EXIF orientation is applied). Its shape comes from exactly one of: a box, COCO
polygons, a COCO RLE, or a mask image file (non-zero = object). The image's target object is the
union of the instances whose ``category`` equals the image's label; every other category becomes a
co-occurrence channel (``other_shares``).

They cross the Ray object store as JSON strings (``dumps``/``loads``), one string per image, which
keeps the manifest a flat Arrow table whatever the mix of annotation kinds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class AnnotationError(ValueError):
    """An annotation that cannot be used (names the field and the problem)."""


@dataclass(frozen=True)
class ObjectAnn:
    """One object instance: a category and one shape.

    ``bbox`` is COCO's ``(x, y, w, h)``; ``polygons`` are COCO's flat ``[x1, y1, x2, y2, ...]``
    rings; ``rle`` is COCO's ``{"size": [h, w], "counts": ...}``; ``mask_path`` is an image file
    whose non-zero pixels are the object.
    """

    category: str
    bbox: tuple[float, float, float, float] | None = None
    polygons: tuple[tuple[float, ...], ...] | None = None
    rle: dict[str, Any] | None = None
    mask_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category:
            raise AnnotationError(f"annotation category must be a non-empty string, got {self.category!r}")
        kinds = [k for k in ("bbox", "polygons", "rle", "mask_path") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise AnnotationError(
                f"annotation of {self.category!r} needs exactly one of bbox, polygons, rle, mask_path; got {kinds or 'none'}"
            )
        if self.bbox is not None:
            if len(self.bbox) != 4 or not all(isinstance(v, int | float) for v in self.bbox):
                raise AnnotationError(f"bbox of {self.category!r} must be 4 numbers [x, y, w, h], got {self.bbox!r}")
            if self.bbox[2] < 0 or self.bbox[3] < 0:
                raise AnnotationError(f"bbox of {self.category!r} has a negative width or height: {self.bbox!r}")
        if self.polygons is not None:
            for ring in self.polygons:
                if len(ring) < 6 or len(ring) % 2:
                    raise AnnotationError(
                        f"polygon of {self.category!r} needs an even number (>= 6) of coordinates, got {len(ring)}"
                    )

    @property
    def kind(self) -> str:
        for k in ("bbox", "polygons", "rle", "mask_path"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("unreachable: validated in __post_init__")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"category": self.category}
        if self.bbox is not None:
            d["bbox"] = [float(v) for v in self.bbox]
        if self.polygons is not None:
            d["polygons"] = [[float(v) for v in ring] for ring in self.polygons]
        if self.rle is not None:
            d["rle"] = self.rle
        if self.mask_path is not None:
            d["mask_path"] = self.mask_path
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectAnn:
        unknown = set(d) - {"category", "bbox", "polygons", "rle", "mask_path"}
        if unknown:
            raise AnnotationError(f"unknown annotation keys {sorted(unknown)}; expected category + one of bbox, polygons, rle, mask_path")
        return cls(
            category=d.get("category"),  # type: ignore[arg-type]
            bbox=tuple(d["bbox"]) if d.get("bbox") is not None else None,  # type: ignore[arg-type]
            polygons=tuple(tuple(r) for r in d["polygons"]) if d.get("polygons") is not None else None,
            rle=d.get("rle"),
            mask_path=d.get("mask_path"),
        )


def dumps(objects: list[ObjectAnn] | tuple[ObjectAnn, ...]) -> str:
    """Serialise one image's annotations to a compact JSON string."""
    return json.dumps([o.to_dict() for o in objects], separators=(",", ":"))


def loads(text: str | None) -> list[ObjectAnn]:
    """Parse one image's annotations; ``None`` or ``""`` means no annotations."""
    if not text:
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"annotations are not valid JSON: {e}") from None
    if not isinstance(raw, list):
        raise AnnotationError(f"annotations must be a JSON list of objects, got {type(raw).__name__}")
    return [ObjectAnn.from_dict(d) for d in raw]
