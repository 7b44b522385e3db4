"""COCO instances JSON: polygons, RLE or boxes, several objects per image."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from common.annotations import AnnotationError, ObjectAnn
from common.storage import AnyPath
from pipeline.readers.base import ManifestRow, Reader, ReaderError, pick_label, register


def coco_object(ann: dict[str, Any], category: str) -> ObjectAnn:
    """One COCO annotation as an :class:`ObjectAnn`: its segmentation if present, else its box."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        return ObjectAnn(category=category, polygons=tuple(tuple(float(v) for v in ring) for ring in seg))
    if isinstance(seg, dict) and "counts" in seg:
        return ObjectAnn(category=category, rle=seg)
    if ann.get("bbox") is not None:
        return ObjectAnn(category=category, bbox=tuple(float(v) for v in ann["bbox"]))  # type: ignore[arg-type]
    raise AnnotationError(f"annotation {ann.get('id')!r} has neither a segmentation nor a bbox")


def coco_area(ann: dict[str, Any]) -> float:
    if ann.get("area") is not None:
        return float(ann["area"])
    b = ann.get("bbox") or (0, 0, 0, 0)
    return float(b[2]) * float(b[3])


@register
class CocoReader(Reader):
    """Images of a COCO file; the label is the largest (or most frequent) listed category present."""

    format = "coco"

    @property
    def root(self) -> AnyPath:
        return self.path(self.cfg.images)

    def describe(self) -> str:
        return f"COCO dataset {str(self.path(self.cfg.annotations))!r}"

    def _load(self) -> dict[str, Any]:
        p = self.path(self.cfg.annotations)
        if not p.is_file():
            raise ReaderError(f"COCO annotation file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReaderError(f"COCO annotation file {str(p)!r} is not valid JSON: {e}") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ReaderError(f"COCO annotation file {str(p)!r} has no {key!r} list")
        return data

    def rows(self) -> Iterator[ManifestRow]:
        data = self._load()
        cats = {c["id"]: c["name"] for c in data["categories"]}
        allowed = tuple(self.cfg.label_categories) if self.cfg.label_categories else None
        if allowed:
            missing = sorted(set(allowed) - set(cats.values()))
            if missing:
                raise ReaderError(f"{self.describe()}: label_categories {missing} are not categories of the file")
        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann.get("image_id")].append(ann)
        root = self.root
        for img in data["images"]:
            file_name = img.get("file_name")
            if not file_name:
                raise ReaderError(f"{self.describe()}: image {img.get('id')!r} has no file_name")
            objects: list[ObjectAnn] = []
            areas: list[float] = []
            error = None
            for ann in by_image.get(img.get("id"), []):
                try:
                    cat = cats[ann["category_id"]]
                    objects.append(coco_object(ann, cat))
                    areas.append(coco_area(ann))
                except KeyError:
                    error = f"{self.describe()}: annotation {ann.get('id')!r} has unknown category_id {ann.get('category_id')!r}"
                except (AnnotationError, TypeError, ValueError) as e:
                    error = f"{self.describe()}: annotation {ann.get('id')!r} of image {file_name!r}: {e}"
            label = pick_label(objects, areas, allowed, self.cfg.label_rule)
            if label is None and self.cfg.skip_unlabelled and error is None:
                continue
            attrs = img.get("attributes") if isinstance(img.get("attributes"), dict) else {}
            yield ManifestRow(
                image_id=str(file_name),
                path=str(root / file_name),
                label=label,
                objects=objects,
                attributes={str(k): str(v) for k, v in attrs.items()},
                error=error,
            )
