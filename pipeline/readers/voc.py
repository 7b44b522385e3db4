"""Pascal VOC: one XML file per image with ``<object><name/><bndbox/></object>`` boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from common.annotations import ObjectAnn
from common.storage import AnyPath
from pipeline.readers.base import ManifestRow, Reader, ReaderError, pick_label, register


def parse_voc(path: AnyPath) -> tuple[str, list[ObjectAnn]]:
    """File name and boxes of one VOC XML. VOC corners are 1-based inclusive pixels; COCO boxes are
    0-based continuous, so ``x = xmin - 1`` and ``w = xmax - xmin + 1``."""
    root = ET.fromstring(path.read_bytes())
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise ValueError("no <filename>")
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError("an <object> lacks <name> or <bndbox>")
        x0, y0, x1, y1 = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        if not (x1 >= x0 and y1 >= y0):
            raise ValueError(f"object {name!r} has an invalid box ({x0}, {y0}, {x1}, {y1})")
        objects.append(ObjectAnn(category=name, bbox=(x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1)))
    return filename, objects


@register
class VocReader(Reader):
    format = "voc"

    @property
    def root(self) -> AnyPath:
        return self.path(self.cfg.images)

    def describe(self) -> str:
        return f"VOC dataset {str(self.path(self.cfg.annotations))!r}"

    def rows(self) -> Iterator[ManifestRow]:
        ann_dir = self.path(self.cfg.annotations)
        if not ann_dir.is_dir():
            raise ReaderError(f"VOC annotation directory {str(ann_dir)!r} does not exist")
        files = sorted(ann_dir.glob("*.xml"))
        if not files:
            raise ReaderError(f"VOC annotation directory {str(ann_dir)!r} has no .xml files")
        allowed = tuple(self.cfg.label_categories) if self.cfg.label_categories else None
        for xml in files:
            try:
                filename, objects = parse_voc(xml)
            except (ET.ParseError, ValueError, OSError) as e:
                # Without a parsable file name we still know the stem: report the image by it.
                yield ManifestRow(image_id=xml.stem, path=str(self.root / (xml.stem + ".jpg")),
                                  error=f"VOC annotation {str(xml)!r}: {e}")
                continue
            areas = [o.bbox[2] * o.bbox[3] for o in objects if o.bbox]
            label = pick_label(objects, areas, allowed, self.cfg.label_rule)
            if label is None and self.cfg.skip_unlabelled:
                continue
            yield ManifestRow(image_id=filename, path=str(self.root / filename), label=label, objects=objects)
