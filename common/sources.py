"""Byte sources: the bytes of an image, mask or annotation file wherever it lives, named by one string.

The manifest's ``path`` column (and an annotation's ``mask_path``) holds one of:

=====================================================  ==================================================
``/data/a.png``, ``file:///data/a.png``                a local file
``s3://bucket/a.png``, ``gs://bucket/a.png``, ...      an object (:mod:`common.storage`)
``tar://<member>::<archive>``                          a member of a tar archive (a WebDataset shard)
``tar://<member>?offset=<o>&size=<n>::<archive>``      the same with its byte range: one ranged read
``parquet://<column>/<row>::<file>``                   row ``<row>`` (0-based in the file) of a Parquet file
``arrow://<column>/<row>::<file>``                     the same in an Arrow IPC stream or file
                                                       (``datasets``' ``save_to_disk`` shards)
``arrow://<column>/<row>?offset=<o>&size=<n>&start=<r>::<file>``  ... with the byte range of the
                                                       record-batch message holding the row, whose
                                                       first row is ``<r>``
=====================================================  ==================================================

The ``inner::outer`` chaining follows fsspec's URL chaining (``tar://a.jpg::s3://b/x.tar`` opens
in fsspec too). The byte-range hints are what the readers write: with them a Ray prepare task
fetches exactly one image's bytes with one ranged GET; without them the archive or file is indexed
once per process (cached). A hint is checked before it is trusted (a tar header must sit right
before the range, with the member's size), so a rewritten shard is re-indexed, never misread.

A row's cell is the image: Hugging Face's ``Image`` struct ``{bytes, path}`` (``path`` is read when
``bytes`` is null, relative to the file's directory), a binary cell, or a string location.

Failures raise :class:`SourceError` with ``kind`` ``missing`` (no such file, member or row) or
``unreadable`` (permissions, network, a broken archive), and a message that starts with the quoted
URI (``'s3://b/a.png' does not exist``), so callers can prefix what it is (``image ...``).
"""

from __future__ import annotations

import functools
import io
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import AnyPath, Location, StorageError, as_path, resolve, scheme

MEMBER_SCHEMES = ("tar", "parquet", "arrow")
TAR_BLOCK = 512
_ROW = re.compile(r"^(?P<column>.+)/(?P<row>\d+)$")


class SourceError(Exception):
    """Bytes that cannot be had; ``kind`` is ``missing`` or ``unreadable`` (decode's error kinds)."""

    def __init__(self, kind: str, message: str, uri: str) -> None:
        super().__init__(kind, message, uri)
        self.kind, self.message, self.uri = kind, message, uri

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Ref:
    """A parsed member URI: ``scheme://inner?params::outer``."""

    scheme: str
    inner: str
    outer: str
    params: dict[str, int] = field(default_factory=dict, hash=False, compare=False)


def parse(uri: str) -> Ref | None:
    """The parts of a member URI (``tar://``, ``parquet://``, ``arrow://``); None for a plain location."""
    sch = scheme(uri)
    if sch not in MEMBER_SCHEMES or "::" not in uri:
        return None
    inner, outer = uri[len(sch) + 3:].split("::", 1)
    params: dict[str, int] = {}
    if "?" in inner:
        inner, query = inner.rsplit("?", 1)
        try:
            params = {k: int(v) for k, v in parse_qsl(query, strict_parsing=True)}
        except ValueError:
            raise SourceError("unreadable", f"{uri!r} cannot be read: bad byte-range hint {query!r} "
                              "(expected integers)", uri) from None
    if not inner or not outer:
        raise SourceError("unreadable", f"{uri!r} cannot be read: expected {sch}://<member>::<location>", uri)
    return Ref(sch, inner, outer, params)


def tar_uri(member: str, archive: str, offset: int | None = None, size: int | None = None) -> str:
    hint = f"?{urlencode({'offset': offset, 'size': size})}" if offset is not None and size is not None else ""
    return f"tar://{member}{hint}::{archive}"


def row_uri(fmt: str, column: str, row: int, file: str, **hint: int) -> str:
    q = f"?{urlencode(hint)}" if hint else ""
    return f"{fmt}://{column}/{row}{q}::{file}"


def container(uri: str) -> str:
    """The file that holds the bytes: the archive or table file of a member URI, else ``uri`` itself."""
    ref = parse(uri)
    return ref.outer if ref is not None else uri


Guard = Callable[[str], None]
"""Called with every location a row cell points to before it is read; raises to refuse it."""


def read_bytes(uri: str, guard: Guard | None = None) -> bytes:
    """All bytes of a location or member URI; raises :class:`SourceError`.

    ``guard`` vets the locations that Hugging Face ``{bytes: null, path}`` cells point to (the
    dashboard refuses those outside the audited roots); the URI itself is the caller's to vet.
    """
    ref = parse(uri)
    try:
        if ref is None:
            return _read_location(uri)
        if ref.scheme == "tar":
            return _read_tar_member(ref, uri)
        return _read_row(ref, uri, guard)
    except SourceError:
        raise
    except FileNotFoundError:
        why = f" (no archive or file {ref.outer!r})" if ref else ""
        raise SourceError("missing", f"{uri!r} does not exist{why}", uri) from None
    except (StorageError, OSError, pa.ArrowException, tarfile.TarError, ValueError) as e:
        raise SourceError("unreadable", f"{uri!r} cannot be read: {e}", uri) from None


def _read_location(uri: str) -> bytes:
    p = as_path(uri)
    if isinstance(p, Location):
        if p.is_dir():
            raise SourceError("unreadable", f"{uri!r} is a directory, not a file", uri)
        return p.read_bytes()
    if p.is_dir():
        raise SourceError("unreadable", f"{uri!r} is a directory, not a file", uri)
    return p.read_bytes()


def _open_input(loc: AnyPath):  # -> pa.NativeFile with read_at/seek
    if isinstance(loc, Location):
        return loc.open_input()
    return pa.memory_map(str(loc), "r")


def _open_stream(loc: AnyPath):
    if isinstance(loc, Location):
        return loc.fs.open_input_stream(loc.path)
    return pa.OSFile(str(loc), "r")


# ---------------------------------------------------------------------------------------------
# Tar members


@dataclass(frozen=True)
class TarEntry:
    """One regular member of a tar archive: where its data lie, and the data when asked for."""

    name: str
    offset: int
    size: int
    data: bytes | None = None


def scan_tar(archive: str, want: Callable[[str], bool] = lambda name: False) -> Iterator[TarEntry]:
    """Walk a tar archive once, front to back (one streaming read, also of an object), yielding its
    regular members with their data offsets; the data of members ``want`` selects are read too.
    Long names (GNU and PAX headers) are handled by :mod:`tarfile`; nothing is extracted."""
    loc = as_path(archive)
    with _open_stream(loc) as raw:
        stream = io.BufferedReader(_RawAdapter(raw), buffer_size=1 << 20)
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for ti in tf:
                if not ti.isreg():
                    continue
                data = None
                if want(ti.name):
                    f = tf.extractfile(ti)
                    data = f.read() if f is not None else b""
                yield TarEntry(ti.name, ti.offset_data, ti.size, data)


class _RawAdapter(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (for BufferedReader / tarfile)."""

    def __init__(self, f) -> None:
        self._f = f
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self._pos += n
        return n


@functools.lru_cache(maxsize=8)
def _tar_index(archive: str) -> dict[str, tuple[int, int]]:
    return {e.name: (e.offset, e.size) for e in scan_tar(archive)}


def _read_tar_member(ref: Ref, uri: str) -> bytes:
    loc = as_path(ref.outer)
    off, size = ref.params.get("offset"), ref.params.get("size")
    if off is not None and size is not None and off >= TAR_BLOCK:
        f = _open_input(loc)
        try:
            buf = f.read_at(size + TAR_BLOCK, off - TAR_BLOCK)
        finally:
            f.close()
        if _header_matches(buf[:TAR_BLOCK], ref.inner, size) and len(buf) == size + TAR_BLOCK:
            return bytes(buf[TAR_BLOCK:])
        _tar_index.cache_clear()  # the archive changed since the hint was written: index it afresh
    index = _tar_index(ref.outer)
    if ref.inner not in index:
        raise SourceError("missing", f"{uri!r} does not exist (the archive has no member {ref.inner!r})", uri)
    off, size = index[ref.inner]
    f = _open_input(loc)
    try:
        return bytes(f.read_at(size, off))
    finally:
        f.close()


def _header_matches(block: bytes, name: str, size: int) -> bool:
    try:
        ti = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    # A long name lives in a GNU/PAX header before this one; the ustar name field is then truncated.
    return ti.size == size and ti.isreg() and (ti.name == name or len(name.encode()) > 100)


# ---------------------------------------------------------------------------------------------
# Rows of Parquet / Arrow files


def _split_row(ref: Ref, uri: str) -> tuple[str, int]:
    m = _ROW.match(ref.inner)
    if not m:
        raise SourceError("unreadable", f"{uri!r} cannot be read: expected {ref.scheme}://<column>/<row>::<file>",
                          uri)
    return m.group("column"), int(m.group("row"))


def _read_row(ref: Ref, uri: str, guard: Guard | None) -> bytes:
    column, row = _split_row(ref, uri)
    if ref.scheme == "parquet":
        cell = _parquet_cell(ref.outer, column, row, uri)
    else:
        cell = _arrow_cell(ref, column, row, uri)
    return _cell_bytes(cell, ref.outer, uri, guard)


def _cell_bytes(cell: object, file: str, uri: str, guard: Guard | None) -> bytes:
    if isinstance(cell, dict):  # Hugging Face Image: {"bytes": ..., "path": ...}
        if cell.get("bytes") is not None:
            return bytes(cell["bytes"])
        cell = cell.get("path")
        if not cell:
            raise SourceError("missing", f"{uri!r} does not exist (the cell has neither bytes nor a path)", uri)
    if isinstance(cell, bytes | bytearray | memoryview):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        target = str(resolve(as_path(file).parent, cell))
        if guard is not None:
            guard(target)
        return read_bytes(target, guard)
    raise SourceError("missing", f"{uri!r} does not exist (the cell is empty)", uri)


@functools.lru_cache(maxsize=16)
def _parquet_meta(file: str) -> tuple[pq.ParquetFile, tuple[int, ...]]:
    pf = pq.ParquetFile(_open_input(as_path(file)))
    starts, n = [], 0
    for i in range(pf.metadata.num_row_groups):
        starts.append(n)
        n += pf.metadata.row_group(i).num_rows
    starts.append(n)
    return pf, tuple(starts)


@functools.lru_cache(maxsize=4)
def _parquet_group(file: str, group: int, column: str) -> pa.ChunkedArray:
    pf, _ = _parquet_meta(file)
    return pf.read_row_group(group, columns=[column]).column(0)


def _parquet_cell(file: str, column: str, row: int, uri: str) -> object:
    pf, starts = _parquet_meta(file)
    if column not in pf.schema_arrow.names:
        raise SourceError("missing", f"{uri!r} does not exist (the file has no column {column!r})", uri)
    if not 0 <= row < starts[-1]:
        raise SourceError("missing", f"{uri!r} does not exist (the file has {starts[-1]} rows)", uri)
    group = max(i for i in range(len(starts) - 1) if starts[i] <= row)
    return _parquet_group(file, group, column)[row - starts[group]].as_py()


@dataclass(frozen=True)
class BatchSpan:
    """Where one record batch of an Arrow IPC stream lies: its message's bytes and its rows."""

    offset: int
    size: int
    start: int
    rows: int


def iter_arrow(file: str) -> Iterator[tuple[BatchSpan | None, pa.RecordBatch]]:
    """Every record batch of an Arrow IPC stream or file, front to back, with the span of its
    message in a stream (None for the file format, whose footer indexes the batches)."""
    if is_arrow_file(file):
        reader = pa.ipc.open_file(_open_input(as_path(file)))
        for i in range(reader.num_record_batches):
            yield None, reader.get_batch(i)
        return
    with _open_stream(as_path(file)) as raw:
        f = pa.PythonFile(io.BufferedReader(_RawAdapter(raw), buffer_size=1 << 20), mode="r")
        reader = pa.ipc.MessageReader.open_stream(f)
        schema, start = None, 0
        while True:
            pos = f.tell()
            try:
                msg = reader.read_next_message()
            except StopIteration:
                break
            if msg.type == "schema":
                schema = pa.ipc.read_schema(msg)
            elif msg.type == "record batch":
                if schema is None:
                    raise ValueError(f"Arrow stream {file!r}: a record batch before the schema")
                batch = pa.ipc.read_record_batch(msg, schema)
                yield BatchSpan(pos, f.tell() - pos, start, batch.num_rows), batch
                start += batch.num_rows
            elif msg.type == "dictionary batch":
                raise ValueError(f"Arrow stream {file!r}: dictionary-encoded columns are not supported")
        if schema is None:
            raise ValueError(f"Arrow stream {file!r} has no schema message")


def arrow_schema(file: str) -> pa.Schema:
    """The schema of an Arrow IPC stream or file (reads only its start, or its footer)."""
    if is_arrow_file(file):
        return pa.ipc.open_file(_open_input(as_path(file))).schema
    return _arrow_schema(file)


def is_arrow_file(file: str) -> bool:
    """Arrow IPC *file* format (random access, ``ARROW1`` magic) rather than a stream."""
    f = _open_input(as_path(file))
    try:
        return bytes(f.read_at(6, 0)) == b"ARROW1"
    finally:
        f.close()


@functools.lru_cache(maxsize=16)
def _arrow_layout(file: str) -> tuple[BatchSpan, ...] | None:
    """Spans of a stream's batches; None for the random-access file format."""
    if is_arrow_file(file):
        return None
    return tuple(span for span, _ in iter_arrow(file) if span is not None)


@functools.lru_cache(maxsize=16)
def _arrow_schema(file: str) -> pa.Schema:
    with _open_stream(as_path(file)) as raw:
        f = pa.PythonFile(io.BufferedReader(_RawAdapter(raw), buffer_size=1 << 16), mode="r")
        return pa.ipc.read_schema(pa.ipc.read_message(f))


@functools.lru_cache(maxsize=4)
def _arrow_batch(file: str, offset: int, size: int) -> pa.RecordBatch:
    f = _open_input(as_path(file))
    try:
        buf = f.read_at(size, offset)
    finally:
        f.close()
    return pa.ipc.read_record_batch(pa.ipc.read_message(pa.BufferReader(buf)), _arrow_schema(file))


@functools.lru_cache(maxsize=4)
def _arrow_file_batch(file: str, i: int) -> pa.RecordBatch:
    return pa.ipc.open_file(_open_input(as_path(file))).get_batch(i)


def _arrow_cell(ref: Ref, column: str, row: int, uri: str) -> object:
    p = ref.params
    if {"offset", "size", "start"} <= p.keys():
        try:
            batch = _arrow_batch(ref.outer, p["offset"], p["size"])
            if 0 <= row - p["start"] < batch.num_rows:
                return _batch_cell(batch, column, row - p["start"], ref.outer, uri)
        except (pa.ArrowException, OSError):
            pass  # a stale hint: fall through to the index
        _arrow_layout.cache_clear()
    layout = _arrow_layout(ref.outer)
    if layout is None:
        reader = pa.ipc.open_file(_open_input(as_path(ref.outer)))
        start = 0
        for i in range(reader.num_record_batches):
            b = _arrow_file_batch(ref.outer, i)
            if row < start + b.num_rows:
                return _batch_cell(b, column, row - start, ref.outer, uri)
            start += b.num_rows
        raise SourceError("missing", f"{uri!r} does not exist (the file has {start} rows)", uri)
    spans = layout
    for s in spans:
        if s.start <= row < s.start + s.rows:
            return _batch_cell(_arrow_batch(ref.outer, s.offset, s.size), column, row - s.start, ref.outer, uri)
    total = spans[-1].start + spans[-1].rows if spans else 0
    raise SourceError("missing", f"{uri!r} does not exist (the file has {total} rows)", uri)


def _batch_cell(batch: pa.RecordBatch, column: str, i: int, file: str, uri: str) -> object:
    if column not in batch.schema.names:
        raise SourceError("missing", f"{uri!r} does not exist (the file has no column {column!r})", uri)
    return batch.column(column)[i].as_py()
