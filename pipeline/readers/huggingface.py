"""Hugging Face ``datasets``: ``save_to_disk`` folders and Parquet/Arrow files in the Hub layout.

Read with pyarrow alone (the ``datasets`` package is not needed): the manifest gets one row per
dataset row whose ``path`` addresses the image cell (``parquet://image/<row>::<file>`` or
``arrow://image/<row>?offset=..::<file>``, see :mod:`common.sources`), so a Ray prepare task reads
that image's bytes from the file itself, and the driver reads only the label, object and id
columns (Parquet) or each Arrow record batch once (an Arrow stream cannot skip a column).

Class names come from the dataset's ``features`` (``ClassLabel`` names), found in
``dataset_info.json`` or in the files' ``huggingface`` schema metadata. Objects follow the COCO
conventions of Hub detection datasets: ``bbox`` as ``[x, y, w, h]`` (``bbox_format: xyxy`` for
``[x0, y0, x1, y1]``), ``category``, optional ``segmentation`` (polygons or RLE) and ``area``;
they may be stored as a sequence of dicts (a struct of lists) or a list of structs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common import sources
from common.annotations import AnnotationError, ObjectAnn
from common.storage import AnyPath, Location
from pipeline.readers.base import ManifestRow, Reader, ReaderError, pick_label, register
from pipeline.readers.coco import coco_area, coco_object

_WRAPPERS = ("Sequence", "List", "LargeList")


def class_names(features: dict[str, Any] | None, column: str, field: str | None = None) -> list[str] | None:
    """The ``ClassLabel`` names of a column (or of ``field`` inside a sequence of dicts), else None."""
    node: Any = (features or {}).get(column)
    for key in ([field] if field else []) + [None]:
        while isinstance(node, dict) and node.get("_type") in _WRAPPERS:
            node = node.get("feature")
        if key is not None:
            node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get("_type") == "ClassLabel":
        return list(node.get("names") or [])
    return None


def features_of(schema: pa.Schema) -> dict[str, Any] | None:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        return json.loads(meta).get("info", {}).get("features")
    except (json.JSONDecodeError, AttributeError):
        return None


def object_dicts(value: Any) -> list[dict[str, Any]]:
    """A row's objects as a list of dicts, from a struct of lists or a list of structs."""
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items() if isinstance(v, list)}
        n = {len(v) for v in lists.values()}
        if len(n) > 1:
            raise AnnotationError(f"objects fields have different lengths: { {k: len(v) for k, v in lists.items()} }")
        return [{k: v[i] for k, v in lists.items()} for i in range(n.pop() if n else 0)]
    raise AnnotationError(f"objects must be a sequence of dicts, got {type(value).__name__}")


@register
class HuggingFaceReader(Reader):
    format = "huggingface"

    @property
    def location(self) -> AnyPath:
        return self.path(self.cfg.path)

    @property
    def root(self) -> AnyPath:
        p = self.location
        return p if p.is_dir() else p.parent

    def describe(self) -> str:
        return f"Hugging Face dataset {str(self.location)!r}"

    def _files(self) -> tuple[list[AnyPath], dict[str, Any] | None]:
        """Data files in order, and the features when a ``dataset_info.json`` gives them."""
        p, split = self.location, self.cfg.split
        if p.is_file():
            return [p], None
        if not p.is_dir():
            raise ReaderError(f"{self.describe()} does not exist")
        if (p / "dataset_dict.json").is_file():  # a DatasetDict: one folder per split
            splits = self._json(p / "dataset_dict.json").get("splits", [])
            if split not in splits:
                raise ReaderError(f"{self.describe()} is a DatasetDict: set split to one of {splits}")
            p = p / split
        if (p / "state.json").is_file():  # one Dataset from save_to_disk
            state = self._json(p / "state.json")
            files = [p / f["filename"] for f in state.get("_data_files", [])]
            info = p / "dataset_info.json"
            feats = self._json(info).get("features") if info.is_file() else None
            return files, feats
        files = sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".arrow") and f.is_file())
        if split:
            files = [f for f in files if _in_split(f.relative_to(p).as_posix(), split)]
        if not files:
            which = f" of split {split!r}" if split else ""
            raise ReaderError(f"{self.describe()} has no .parquet or .arrow files{which} (nor a state.json)")
        return files, None

    def _json(self, p: AnyPath) -> dict[str, Any]:
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReaderError(f"{self.describe()}: {str(p)!r} cannot be read: {e}") from None

    def rows(self) -> Iterator[ManifestRow]:
        files, feats = self._files()
        n = 0
        for f in files:
            for row in self._file_rows(f, feats, n):
                n += 1
                yield row

    def _file_rows(self, file: AnyPath, feats: dict[str, Any] | None, first: int) -> Iterator[ManifestRow]:
        uri = str(file)
        try:
            if file.suffix == ".parquet":
                pf = pq.ParquetFile(file.open_input() if isinstance(file, Location) else str(file))
                schema = pf.schema_arrow
                cols = self._columns(schema, uri)
                batches = ((None, b) for b in pf.iter_batches(batch_size=1024, columns=cols))
            else:
                schema = sources.arrow_schema(uri)
                cols = self._columns(schema, uri)
                batches = sources.iter_arrow(uri)
            feats = feats or features_of(schema)
            row = 0
            for span, batch in batches:
                for r in batch.select(cols).to_pylist():
                    if span is not None:
                        hint = {"offset": span.offset, "size": span.size, "start": span.start}
                        path = sources.row_uri("arrow", self.cfg.image_column, row, uri, **hint)
                    else:
                        path = sources.row_uri(file.suffix.lstrip("."), self.cfg.image_column, row, uri)
                    made = self._row(r, path, first + row, feats)
                    row += 1
                    if made is not None:
                        yield made
        except (OSError, pa.ArrowException, ValueError) as e:
            if isinstance(e, ReaderError):
                raise
            raise ReaderError(f"{self.describe()}: {uri!r} cannot be read: {e}") from None

    def _columns(self, schema: pa.Schema, uri: str) -> list[str]:
        c = self.cfg
        if c.image_column not in schema.names:
            raise ReaderError(f"{self.describe()}: {uri!r} has no image column {c.image_column!r} "
                              f"(columns: {schema.names}); set image_column")
        for key in ("id_column",):
            if getattr(c, key) and getattr(c, key) not in schema.names:
                raise ReaderError(f"{self.describe()}: {key} {getattr(c, key)!r} is not a column of {uri!r}")
        missing = [a for a in c.attributes if a not in schema.names]
        if missing:
            raise ReaderError(f"{self.describe()}: attributes {missing} are not columns of {uri!r}")
        want = [c.label_column, c.objects_column, c.id_column, *c.attributes]
        return list(dict.fromkeys(w for w in want if w and w in schema.names))

    def _row(self, r: dict[str, Any], path: str, index: int, feats: dict[str, Any] | None) -> ManifestRow | None:
        c = self.cfg
        if c.id_column:
            image_id = str(r[c.id_column])
        else:
            image_id = f"{c.split}/{index}" if c.split else str(index)
        objects: list[ObjectAnn] = []
        areas: list[float] = []
        error = label = None
        try:
            label = self._label(r.get(c.label_column) if c.label_column else None, feats)
            if c.objects_column and r.get(c.objects_column) is not None:
                names = class_names(feats, c.objects_column, "category")
                for o in object_dicts(r[c.objects_column]):
                    obj, area = self._object(o, names)
                    objects.append(obj)
                    areas.append(area)
        except (AnnotationError, TypeError, ValueError, IndexError) as e:
            error = f"{self.describe()} row {index} ({image_id}): {e}"
        if label is None and objects and not (c.label_column and c.label_column in r):
            allowed = tuple(c.label_categories) if c.label_categories else None
            label = pick_label(objects, areas, allowed, c.label_rule)
        if label is None and c.skip_unlabelled and error is None:
            return None
        attrs: dict[str, str] = {}
        for a in c.attributes:
            v = r.get(a)
            if isinstance(v, dict):
                attrs.update({str(k): str(x) for k, x in v.items() if x is not None})
            elif v is not None:
                names = class_names(feats, a)
                attrs[a] = names[v] if names and isinstance(v, int) and 0 <= v < len(names) else str(v)
        return ManifestRow(image_id=image_id, path=path, label=label, objects=objects, attributes=attrs, error=error)

    def _label(self, v: Any, feats: dict[str, Any] | None) -> str | None:
        if v is None or v == -1:  # -1: ClassLabel's "no label"
            return None
        if isinstance(v, int):
            names = class_names(feats, self.cfg.label_column)
            if names is not None:
                if not 0 <= v < len(names):
                    raise AnnotationError(f"label {v} is out of range for ClassLabel names {names}")
                return names[v]
        return str(v)

    def _object(self, o: dict[str, Any], names: list[str] | None) -> tuple[ObjectAnn, float]:
        cat = o.get("category")
        if isinstance(cat, int) and names is not None:
            if not 0 <= cat < len(names):
                raise AnnotationError(f"category {cat} is out of range for ClassLabel names {names}")
            cat = names[cat]
        ann: dict[str, Any] = {"segmentation": o.get("segmentation"), "area": o.get("area")}
        box = o.get("bbox")
        if box is not None:
            box = [float(v) for v in box]
            if len(box) != 4:
                raise AnnotationError(f"bbox must have 4 numbers, got {box}")
            if self.cfg.bbox_format == "xyxy":
                box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            ann["bbox"] = box
        return coco_object(ann, str(cat)), coco_area(ann)


def _in_split(rel: str, split: str) -> bool:
    """Hub layouts: ``<split>-00000-of-00001.parquet``, ``data/<split>-*.parquet``, ``<split>/*.parquet``."""
    parts = rel.split("/")
    return split in parts[:-1] or parts[-1].startswith(f"{split}-") or parts[-1].startswith(f"{split}.")
