"""A CSV or Parquet manifest: ``image``, ``label`` and optional ``mask``, ``bbox``, ``objects``,
``attributes`` and ``image_id`` columns.

``mask`` is a mask image of the labelled object; ``bbox`` its box (JSON ``[x, y, w, h]`` or
``"x,y,w,h"``); ``objects`` a JSON list of ``{"category", "bbox"|"polygons"|"rle"|"mask_path"}``;
``attributes`` a JSON object of group attributes (``{"watermark": "yes"}``) used by worst-group
analysis.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.annotations import AnnotationError, ObjectAnn, loads
from common.storage import AnyPath, resolve
from pipeline.readers.base import ManifestRow, Reader, ReaderError, register

REQUIRED = ("image",)
KNOWN = ("image", "label", "mask", "bbox", "objects", "attributes", "image_id")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def parse_bbox(v: Any) -> tuple[float, float, float, float]:
    if isinstance(v, str):
        s = v.strip()
        vals = json.loads(s) if s.startswith("[") else [float(x) for x in s.split(",")]
    else:
        vals = list(v)
    if len(vals) != 4:
        raise AnnotationError(f"bbox must be [x, y, w, h], got {v!r}")
    return tuple(float(x) for x in vals)  # type: ignore[return-value]


@register
class ManifestReader(Reader):
    format = "manifest"

    @property
    def file(self) -> AnyPath:
        return self.path(self.cfg.path)

    @property
    def root(self) -> AnyPath:
        return self.path(self.cfg.root) if self.cfg.root else self.file.parent

    def describe(self) -> str:
        return f"manifest {str(self.file)!r}"

    def _load(self) -> pa.Table:
        p = self.file
        if not p.is_file():
            raise ReaderError(f"manifest {str(p)!r} does not exist")
        suffix = p.suffix.lower()
        if suffix not in (".parquet", ".csv", ".tsv"):
            raise ReaderError(f"manifest {str(p)!r}: expected a .csv, .tsv or .parquet file")
        try:
            data = io.BytesIO(p.read_bytes())
            if suffix == ".parquet":
                t = pq.read_table(data)
            else:
                opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
                conv = pacsv.ConvertOptions(column_types={k: pa.string() for k in KNOWN})
                t = pacsv.read_csv(data, parse_options=opts, convert_options=conv)
        except (pa.ArrowInvalid, OSError) as e:
            raise ReaderError(f"manifest {str(p)!r} cannot be read: {e}") from None
        missing = [c for c in REQUIRED if c not in t.column_names]
        if missing:
            raise ReaderError(f"manifest {str(p)!r} lacks required column(s) {missing}; has {t.column_names}")
        return t

    def rows(self) -> Iterator[ManifestRow]:
        t = self._load()
        root = self.root
        for i, r in enumerate(t.to_pylist()):
            image = r.get("image")
            where = f"manifest {str(self.file)!r} row {i + 2 if self.file.suffix != '.parquet' else i}"
            if _blank(image):
                yield ManifestRow(image_id=f"row-{i}", path="", error=f"{where}: empty image path")
                continue
            path = resolve(root, str(image))
            image_id = str(r["image_id"]) if not _blank(r.get("image_id")) else str(image)
            label = None if _blank(r.get("label")) else str(r["label"]).strip()
            objects: list[ObjectAnn] = []
            attrs: dict[str, str] = {}
            error = None
            try:
                if not _blank(r.get("objects")):
                    objs = r["objects"] if isinstance(r["objects"], str) else json.dumps(r["objects"])
                    for o in loads(objs):
                        if o.mask_path:
                            o = ObjectAnn(category=o.category, mask_path=str(resolve(root, o.mask_path)))
                        objects.append(o)
                if not _blank(r.get("mask")):
                    if label is None:
                        raise AnnotationError("a mask needs a label (the mask is the labelled object)")
                    objects.append(ObjectAnn(category=label, mask_path=str(resolve(root, str(r["mask"])))))
                if not _blank(r.get("bbox")):
                    if label is None:
                        raise AnnotationError("a bbox needs a label (the box is the labelled object)")
                    objects.append(ObjectAnn(category=label, bbox=parse_bbox(r["bbox"])))
                if not _blank(r.get("attributes")):
                    a = r["attributes"]
                    a = json.loads(a) if isinstance(a, str) else a
                    if not isinstance(a, dict):
                        raise AnnotationError(f"attributes must be a JSON object, got {a!r}")
                    attrs = {str(k): str(v) for k, v in a.items()}
            except (AnnotationError, json.JSONDecodeError, ValueError, TypeError) as e:
                error = f"{where} ({image}): {e}"
            yield ManifestRow(image_id=image_id, path=str(path), label=label, objects=objects, attributes=attrs, error=error)
