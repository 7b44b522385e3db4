"""The reader base class and registry."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from common.annotations import ObjectAnn, dumps
from common.registry import Registry
from common.storage import AnyPath, resolve
from pipeline.schema import MANIFEST_SCHEMA

log = logging.getLogger(__name__)

MASK_ROOTS_KEY = b"cueaudit_mask_roots"
MAX_MASK_ROOTS = 64


class ReaderError(ValueError):
    """The dataset cannot be read at all (names the file and the problem)."""


@dataclass
class ManifestRow:
    """One image to audit, with its annotations in source pixel coordinates."""

    image_id: str
    path: str
    label: str | None = None
    objects: list[ObjectAnn] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None


class Reader:
    """Base of all readers: subclasses set ``format`` and implement :meth:`rows`."""

    format: ClassVar[str]

    def __init__(self, cfg: Any, base: Path) -> None:
        self.cfg = cfg
        self.base = base

    def path(self, p: str) -> AnyPath:
        """A configured location: a URI as given (``s3://...``), a local path against the config's folder."""
        return resolve(self.base, p)

    @property
    def root(self) -> AnyPath:
        """Directory that holds the images (the dashboard serves files only below it)."""
        raise NotImplementedError

    def rows(self) -> Iterator[ManifestRow]:
        raise NotImplementedError

    def table(self) -> pa.Table:
        limit = getattr(self.cfg, "limit", None)
        cols: dict[str, list[Any]] = {f.name: [] for f in MANIFEST_SCHEMA}
        seen: set[str] = set()
        mask_dirs: set[str] = set()
        root = str(self.root)
        for row in self.rows():
            if row.image_id in seen:
                raise ReaderError(f"{self.describe()}: image id {row.image_id!r} appears twice")
            seen.add(row.image_id)
            cols["image_id"].append(row.image_id)
            cols["path"].append(row.path)
            cols["label"].append(row.label)
            cols["objects"].append(dumps(row.objects) if row.objects else None)
            mask_dirs.update(os.path.dirname(os.path.abspath(o.mask_path)) for o in row.objects if o.mask_path)
            cols["attributes"].append(json.dumps(row.attributes, sort_keys=True) if row.attributes else None)
            cols["dataset_root"].append(root)
            cols["error"].append(row.error)
            if limit is not None and len(seen) >= limit:
                break
        table = pa.table(cols, schema=MANIFEST_SCHEMA)
        return table.replace_schema_metadata({MASK_ROOTS_KEY: json.dumps(minimal_roots(mask_dirs))})

    def describe(self) -> str:
        return f"{self.format} dataset"


READERS: Registry[type[Reader]] = Registry("dataset format")


def register(cls: type[Reader]) -> type[Reader]:
    READERS.add(cls.format, cls)
    return cls


def read_manifest(cfg: Any, base: Path | str) -> pa.Table:
    """Read any configured dataset into the manifest table."""
    reader = READERS.get(cfg.format)(cfg, Path(base))
    table = reader.table()
    if table.num_rows == 0:
        raise ReaderError(f"{reader.describe()}: no images found")
    n_err = sum(1 for e in table.column("error").to_pylist() if e)
    if n_err:
        log.warning("%s: %d of %d images have annotation problems; they become error rows", reader.describe(), n_err, table.num_rows)
    return table


def minimal_roots(dirs: Iterable[str], limit: int = MAX_MASK_ROOTS) -> list[str]:
    """The directories holding the mask files a manifest names, without those nested in another.

    More than ``limit`` (masks spread over many folders) are merged into their parents, deepest
    first, so the run record stays small; never up to a filesystem root.
    """
    out = _outermost(dirs)
    while len(out) > limit:
        depth = max(d.rstrip(os.sep).count(os.sep) for d in out)
        up = {os.path.dirname(d) if d.rstrip(os.sep).count(os.sep) == depth and not _is_fs_root(os.path.dirname(d))
              else d for d in out}
        if up == set(out):
            break
        out = _outermost(up)
    return out


def _is_fs_root(d: str) -> bool:
    return os.path.dirname(d) == d


def _outermost(dirs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in sorted(set(dirs)):
        if not out or not (d == out[-1] or d.startswith(out[-1].rstrip(os.sep) + os.sep)):
            out.append(d)
    return out


def mask_roots(manifest: pa.Table) -> list[str]:
    """The mask directories :meth:`Reader.table` recorded (empty for a table from elsewhere)."""
    raw = (manifest.schema.metadata or {}).get(MASK_ROOTS_KEY)
    return list(json.loads(raw)) if raw else []


def pick_label(objects: list[ObjectAnn], areas: list[float], allowed: tuple[str, ...] | None, rule: str) -> str | None:
    """The image's label among annotated categories: the largest instance's, or the most frequent one's."""
    cands = [(o.category, a) for o, a in zip(objects, areas, strict=True) if allowed is None or o.category in allowed]
    if not cands:
        return None
    if rule == "most":
        counts: dict[str, float] = {}
        for c, a in cands:
            counts[c] = counts.get(c, 0) + 1 + a * 1e-12  # ties go to the larger total area
        return max(counts, key=counts.__getitem__)
    return max(cands, key=lambda ca: ca[1])[0]
