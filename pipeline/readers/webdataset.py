"""WebDataset tar shards, local or on an object store.

A sample is the run of adjacent members sharing a key (the member name up to the first dot of its
base name, as in ``webdataset``'s ``base_plus_ext``): ``<key>.jpg`` (or ``png``, ``webp``, ...),
``<key>.json`` with ``label``, ``objects`` (as in a manifest) and ``attributes``, ``<key>.cls``
with a class index (into ``classes``) or name, and optionally ``<key>.mask.png``, the labelled
object's mask. The driver streams each shard once, reading only the small ``.json``/``.cls``
members; every image is then one ranged read of its shard by a Ray prepare task
(``tar://<member>?offset=..&size=..::<shard>``), nothing is extracted to disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from common import sources
from common.annotations import AnnotationError, ObjectAnn
from common.braces import expand_braces
from common.storage import AnyPath, is_uri
from pipeline.readers.base import ManifestRow, Reader, ReaderError, pick_label, register

_KEY = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")  # webdataset's base_plus_ext (dot-files skipped)
META = ("json", "cls")
MASK = "mask.png"


def split_key(name: str) -> tuple[str, str] | None:
    """``a/b/000012.seg.png`` -> (``a/b/000012``, ``seg.png``); None for names without an extension."""
    m = _KEY.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


@register
class WebDatasetReader(Reader):
    format = "webdataset"

    def shards(self) -> list[AnyPath]:
        pats = (self.cfg.shards,) if isinstance(self.cfg.shards, str) else self.cfg.shards
        out: list[AnyPath] = []
        for pat in pats:
            names = expand_braces(pat)
            if len(names) == 1 and self.path(names[0]).is_dir():
                found = sorted(p for p in self.path(names[0]).rglob("*.tar") if p.is_file())
                if not found:
                    raise ReaderError(f"WebDataset folder {str(self.path(names[0]))!r} has no .tar shards")
                out += found
            else:
                out += [self.path(n) for n in names]
        return out

    @property
    def root(self) -> AnyPath:
        parents = {str(s.parent) for s in self.shards()}
        common = _common_dir(sorted(parents))
        if common is None:
            raise ReaderError(f"{self.describe()}: shards {sorted(parents)} share no parent folder "
                              "(the dashboard serves images only below one)")
        return self.path(common)

    def describe(self) -> str:
        shown = self.cfg.shards if isinstance(self.cfg.shards, str) else ", ".join(self.cfg.shards)
        return f"WebDataset {shown!r}"

    def rows(self) -> Iterator[ManifestRow]:
        for shard in self.shards():
            if not shard.is_file():
                raise ReaderError(f"{self.describe()}: shard {str(shard)!r} does not exist")
            uri = str(shard)
            key, fields = None, {}
            try:
                for e in sources.scan_tar(uri, want=lambda n: (split_key(n) or ("", ""))[1] in META):
                    kx = split_key(e.name)
                    if kx is None:
                        continue
                    if kx[0] != key:
                        if key is not None:
                            yield self._sample(key, fields, uri)
                        key, fields = kx[0], {}
                    fields[kx[1]] = e
            except (OSError, ValueError) as e:
                raise ReaderError(f"{self.describe()}: shard {uri!r} cannot be read: {e}") from None
            if key is not None:
                yield self._sample(key, fields, uri)

    def _sample(self, key: str, fields: dict[str, sources.TarEntry], shard: str) -> ManifestRow:
        c = self.cfg
        where = f"{self.describe()} sample {key!r} of {shard!r}"
        ext = next((x for x in c.image_extensions if x in fields), None)
        if ext is None:
            return ManifestRow(image_id=key, path=sources.tar_uri(key, shard),
                               error=f"{where}: no image member (looked for {', '.join(c.image_extensions)}; "
                                     f"has {sorted(fields)})")
        img = fields[ext]
        path = sources.tar_uri(img.name, shard, img.offset, img.size)
        label = None
        objects: list[ObjectAnn] = []
        attrs: dict[str, str] = {}
        error = None
        try:
            meta = self._json(fields.get("json"))
            label = self._label(meta.get("label"), fields.get("cls"))
            for d in meta.get("objects") or []:
                o = ObjectAnn.from_dict(d)
                if o.mask_path and not is_uri(o.mask_path) and not o.mask_path.startswith("/"):
                    kx = split_key(o.mask_path)  # a member of this shard, by its name
                    member = fields.get(kx[1]) if kx and kx[0] == key else None
                    o = ObjectAnn(category=o.category, mask_path=self._member(member, o.mask_path, shard))
                objects.append(o)
            if MASK in fields:
                if label is None:
                    raise AnnotationError(f"a {MASK} needs a label (the mask is the labelled object)")
                objects.append(ObjectAnn(category=label, mask_path=self._member(fields[MASK], "", shard)))
            raw_attrs = meta.get("attributes") or {}
            if not isinstance(raw_attrs, dict):
                raise AnnotationError(f"attributes must be a JSON object, got {raw_attrs!r}")
            attrs = {str(k): str(v) for k, v in raw_attrs.items()}
        except (AnnotationError, TypeError, ValueError) as e:
            error = f"{where}: {e}"
        if label is None and objects and error is None:
            allowed = tuple(c.label_categories) if c.label_categories else None
            areas = [o.bbox[2] * o.bbox[3] if o.bbox else 0.0 for o in objects]
            label = pick_label(objects, areas, allowed, c.label_rule)
        return ManifestRow(image_id=key, path=path, label=label, objects=objects, attributes=attrs, error=error)

    @staticmethod
    def _member(entry: sources.TarEntry | None, name: str, shard: str) -> str:
        if entry is None:
            return sources.tar_uri(name, shard)  # not in this sample: read by name (missing -> mask_missing)
        return sources.tar_uri(entry.name, shard, entry.offset, entry.size)

    @staticmethod
    def _json(entry: sources.TarEntry | None) -> dict[str, Any]:
        if entry is None:
            return {}
        meta = json.loads((entry.data or b"").decode("utf-8"))
        if not isinstance(meta, dict):
            raise AnnotationError(f".json must hold a JSON object, got {type(meta).__name__}")
        return meta

    def _label(self, value: Any, cls: sources.TarEntry | None) -> str | None:
        if value is None and cls is not None:
            value = (cls.data or b"").decode("utf-8").strip() or None
            if value is not None and value.lstrip("-").isdigit():
                value = int(value)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and self.cfg.classes is not None:
            if not 0 <= value < len(self.cfg.classes):
                raise AnnotationError(f"class index {value} is out of range for classes {list(self.cfg.classes)}")
            return self.cfg.classes[value]
        return str(value)


def _common_dir(dirs: list[str]) -> str | None:
    """The deepest folder holding all ``dirs`` (paths or URIs), None when they share none."""
    if not dirs:
        return None
    parts = [d.rstrip("/").split("/") for d in dirs]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if is_uri(dirs[0]):  # ["s3:", "", "bucket", ...]: at least one bucket in common
        return "/".join(common) if len(common) >= 3 and common[2] else None
    return "/".join(common) or "/"
