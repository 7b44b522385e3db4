"""The dashboard's rules for images that are not plain local files: objects (``s3://...``), members
of tar shards and rows of Parquet/Arrow files (:mod:`common.sources`).

The rule is the one for local files: only what lies inside an audited dataset root is served. For a
member URI it is the container (the shard, the Parquet file) that must lie inside a root; a local
container is judged by :func:`dashboard.images.guard_path`'s realpath rule, a remote one by key
prefix at ``/`` boundaries, with ``.``/``..``/empty key segments refused outright (object keys are
literal strings, so a crafted ``a/../b`` would otherwise slip past a prefix test). A Hugging Face
cell that points to a file by path is followed only to a file inside a root.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from common.sources import SourceError, container, parse, read_bytes
from common.storage import as_path, is_uri, resolve


class UnsafeSourceError(ValueError):
    """A source the dashboard refuses to read (the message says why)."""


def _key_ok(uri: str) -> bool:
    """``scheme://bucket/k/e/y`` with a bucket and no empty, ``.`` or ``..`` segment."""
    segments = uri.split("://", 1)[-1].split("/") if "://" in uri else [""]
    return bool(segments[0]) and all(s not in ("", ".", "..") for s in segments[1:])


def _under(uri: str, roots: Sequence[str]) -> bool:
    return any(uri == r or uri.startswith(r.rstrip("/") + "/") for r in roots)


def guard_source(path: str, roots: Sequence[str], base: str | None,
                 local_guard: Callable[[str, Sequence[str]], Path]) -> str:
    """``path`` (a URI, or relative to a URI ``base``) if it may be served, else raise UnsafeSourceError."""
    uri = path if is_uri(path) or not base else str(resolve(as_path(base), path))
    try:
        outer = container(uri)
    except SourceError as e:
        raise UnsafeSourceError(str(e)) from None
    if parse(outer) is not None:
        raise UnsafeSourceError(f"image source {path!r} nests one archive in another; not served")
    if not is_uri(outer):
        local_guard(outer, roots)  # raises for a container outside the local roots
        return uri
    remote = [r.rstrip("/") for r in roots if r and is_uri(r) and _key_ok(r.rstrip("/"))]
    if not remote:
        raise UnsafeSourceError("no object-store dataset root is recorded for these results, so no object is served")
    if not _key_ok(outer):
        raise UnsafeSourceError(f"image source {path!r} has an empty, '.' or '..' key segment; not served")
    if not _under(outer, remote):
        shown = ", ".join(remote)
        raise UnsafeSourceError(f"image source {path!r} is outside the audited dataset roots ({shown})")
    return uri


def open_source(spec: Path | str, roots: Sequence[str],
                local_guard: Callable[[str, Sequence[str]], Path]) -> Path | io.BytesIO:
    """A guarded local Path as is; a guarded source URI as its bytes (followed cell paths are guarded too)."""
    if isinstance(spec, Path):
        return spec

    def guard(target: str) -> None:
        if is_uri(target):
            guard_source(target, roots, None, local_guard)
        else:
            local_guard(os.fspath(target), roots)

    return io.BytesIO(read_bytes(spec, guard=guard))
