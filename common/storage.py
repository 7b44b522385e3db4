"""Where files live: local paths and object-store URIs behind one small path type.

A *location* is a plain local path (``/data/x.png``, ``data/x.png``), a ``file://`` URI, or an
object-store URI: ``s3://bucket/key`` and ``gs://bucket/key`` through pyarrow's own filesystems,
any other ``protocol://`` through fsspec when an implementation for it is installed. Local paths
stay :class:`pathlib.Path`; everything else is a :class:`Location`, which implements the part of
``Path`` that cueaudit uses (``/``, ``name``, ``exists``, ``iterdir``, ``glob``, ``read_bytes``,
``stat``, ...), so readers and the results store work on either without branching.

Credentials never come from cueaudit's config (it is copied into every run record): they come from
the standard environment of each SDK (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``/``AWS_PROFILE`` and the rest of the AWS chain; ``GOOGLE_APPLICATION_CREDENTIALS``
for GCS). The non-secret connection settings (:class:`StorageOptions`: an S3-compatible endpoint,
a region, anonymous access) come from the config's ``storage:`` section, else from
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and ``AWS_REGION``/``AWS_DEFAULT_REGION``.

Writes (:func:`write_atomic`) are atomic on both kinds: a local file is written to a hidden temp
name and renamed; an object is one PUT of bytes fully serialised beforehand, which object stores
make visible whole or not at all (there is no rename on an object store, so nothing is renamed).

>>> loc = as_path("s3://bucket/audits/results")        # doctest: +SKIP
>>> [p.name for p in loc.glob("model=*")]              # doctest: +SKIP
['model=lite0']
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat as stat_mod
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
OBJECT_STORES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2"})
"""Schemes whose "directories" are key prefixes: nothing to create, and no rename."""


class StorageError(OSError):
    """A location that cannot be used (a bad URI, a filesystem that is not available)."""


@dataclass(frozen=True)
class StorageOptions:
    """Non-secret connection settings for object stores (the config's ``storage:`` section).

    ``endpoint_url``: an S3-compatible server (MinIO, Ceph, R2, moto), ``http(s)://host[:port]``;
    ``region``: the S3 region (default: the environment's, else the bucket's own);
    ``anonymous``: read public buckets without credentials.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False


_options = StorageOptions()
_lock = threading.Lock()


def configure(options: StorageOptions | None) -> None:
    """Set this process's storage options (the driver from the config; workers from the options they
    are handed, since a Ray worker on another node does not share the driver's process)."""
    global _options
    _options = options or StorageOptions()


def current_options() -> StorageOptions:
    return _options


class _S3Settings(NamedTuple):
    endpoint: str | None
    scheme: str
    region: str | None
    anonymous: bool


def _s3_settings(opts: StorageOptions) -> _S3Settings:
    endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    scheme = "https"
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"S3 endpoint {endpoint!r} must look like http(s)://host[:port]")
        scheme, endpoint = parts.scheme, parts.netloc
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _S3Settings(endpoint, scheme, region, opts.anonymous)


@functools.lru_cache(maxsize=32)
def _s3(bucket: str, s: _S3Settings) -> pafs.FileSystem:
    region = s.region
    if region is None and s.endpoint is None:
        try:  # AWS answers with the bucket's region; a wrong one would be a redirect error later
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None
    kwargs: dict[str, Any] = {"scheme": s.scheme, "anonymous": s.anonymous}
    if s.endpoint:
        kwargs["endpoint_override"] = s.endpoint
    kwargs["region"] = region or "us-east-1"
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _gcs(anonymous: bool) -> pafs.FileSystem:
    return pafs.GcsFileSystem(anonymous=anonymous)


@functools.lru_cache(maxsize=8)
def _fsspec(protocol: str) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"'{protocol}://' locations need fsspec (pip install fsspec and its "
                           f"'{protocol}' implementation)") from None
    try:
        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise StorageError(f"no filesystem for '{protocol}://' locations: {e}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def scheme(s: str) -> str | None:
    """``s3`` for ``s3://b/k``; None for a plain path (a Windows drive ``C:`` is not a scheme)."""
    m = _SCHEME.match(s)
    return m.group(1).lower() if m else None


def is_uri(s: str | os.PathLike[str] | Location) -> bool:
    """A location with a scheme other than ``file://`` (an object store or another filesystem)."""
    if isinstance(s, Location):
        return True
    if isinstance(s, os.PathLike):
        return False
    sch = scheme(s)
    return sch is not None and sch != "file"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a URI and the path within it (``s3://b/k`` -> (S3, ``b/k``))."""
    sch = scheme(uri)
    if sch is None or sch == "file":
        return pafs.LocalFileSystem(), local_path(uri)
    rest = uri[len(sch) + 3:]
    if sch == "s3":
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket (expected s3://bucket/key)")
        with _lock:
            return _s3(bucket, _s3_settings(_options)), rest
    if sch in ("gs", "gcs"):
        with _lock:
            return _gcs(_options.anonymous), rest
    with _lock:
        fs = _fsspec(sch)
    return fs, rest


def local_path(s: str) -> str:
    """``file:///a/b%20c`` -> ``/a/b c``; a plain path is returned as given."""
    if scheme(s) == "file":
        parts = urlsplit(s)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{s!r}: file:// URIs must name a local path (file:///abs/path)")
        return unquote(parts.path)
    return s


class _Stat(NamedTuple):
    st_size: int
    st_mtime: float
    st_mtime_ns: int
    st_mode: int


class Location:
    """A file or directory on a non-local filesystem, addressed by its URI (``s3://bucket/key``).

    Immutable and picklable (only the URI travels; the filesystem is re-created from the process's
    :class:`StorageOptions`). Methods mirror :class:`pathlib.Path`; ``FileNotFoundError`` and
    friends are raised where ``Path`` would raise them. A ``Location`` from a listing remembers the
    type and size the listing returned (one request lists a prefix, not one per entry).
    """

    __slots__ = ("_info", "uri")

    def __init__(self, uri: str, info: pafs.FileInfo | None = None) -> None:
        sch = scheme(uri)
        if sch is None:
            raise StorageError(f"{uri!r} is not a URI (expected scheme://...)")
        tail = uri[len(sch) + 3:]
        tail = tail.rstrip("/") if tail.strip("/") else tail.strip("/")
        self.uri = f"{sch}://{tail}"
        self._info = info

    # -- pure path operations ---------------------------------------------------------------
    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __lt__(self, other: Location) -> bool:
        return self.uri < other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Location, (self.uri,))

    def __truediv__(self, other: str | os.PathLike[str]) -> Location:
        rel = PurePosixPath(os.fspath(other)).as_posix()
        if rel.startswith("/") or scheme(rel):
            raise StorageError(f"cannot join the absolute {rel!r} below {self.uri!r}")
        return Location(f"{self.uri}/{rel}" if rel not in ("", ".") else self.uri)

    @property
    def _key(self) -> str:
        return self.uri.split("://", 1)[1]

    @property
    def name(self) -> str:
        return self._key.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> Location:
        key = self._key
        if "/" not in key:
            return self
        return Location(self.uri[: len(self.uri) - len(key)] + key.rsplit("/", 1)[0])

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.uri[: len(self.uri) - len(self._key)], *self._key.split("/"))

    def relative_to(self, other: Location | str) -> PurePosixPath:
        base = str(other).rstrip("/")
        if not self.uri.startswith(base + "/"):
            raise ValueError(f"{self.uri!r} is not below {base!r}")
        return PurePosixPath(self.uri[len(base) + 1:])

    def as_posix(self) -> str:
        return self.uri

    def expanduser(self) -> Location:
        return self

    def resolve(self) -> Location:
        return self

    def is_absolute(self) -> bool:
        return True

    def with_suffix(self, suffix: str) -> Location:
        return self.parent / (self.stem + suffix)

    # -- filesystem operations --------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem(self.uri)[0]

    @property
    def path(self) -> str:
        """The path within :attr:`fs` (``bucket/key`` for S3)."""
        return filesystem(self.uri)[1]

    def info(self) -> pafs.FileInfo:
        fs, path = filesystem(self.uri)
        return fs.get_file_info(path)

    def _type(self) -> pafs.FileType:
        return (self._info or self.info()).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def stat(self) -> _Stat:
        """Size and mtime; a Location from a listing answers from the listing (no request per file)."""
        info = self._info or self.info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such file or directory", self.uri)
        mt = info.mtime_ns or 0
        mode = stat_mod.S_IFDIR if info.type == pafs.FileType.Directory else stat_mod.S_IFREG
        return _Stat(info.size or 0, mt / 1e9, mt, mode)

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        fs, path = filesystem(self.uri)
        try:
            return fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
        except FileNotFoundError:
            raise FileNotFoundError(2, "No such directory", self.uri) from None

    def _child(self, info: pafs.FileInfo, base_path: str) -> Location:
        rel = info.path[len(base_path):].lstrip("/")
        return Location(f"{self.uri}/{rel}", info)

    def iterdir(self) -> Iterator[Location]:
        base = self.path
        for info in sorted(self._list(False), key=lambda i: i.path):
            yield self._child(info, base)

    def rglob(self, pattern: str) -> Iterator[Location]:
        """Everything below (files and directories) whose name matches ``pattern``."""
        base = self.path
        for info in sorted(self._list(True), key=lambda i: i.path):
            if fnmatch.fnmatchcase(info.base_name, pattern):
                yield self._child(info, base)

    def glob(self, pattern: str) -> Iterator[Location]:
        """Entries matching a relative pattern; each ``/``-separated part matches one level."""
        pats = [p for p in pattern.split("/") if p]
        if not pats:
            return
        base = self.path
        try:
            infos = self._list(len(pats) > 1)
        except FileNotFoundError:
            return
        for info in sorted(infos, key=lambda i: i.path):
            rel = info.path[len(base):].strip("/").split("/")
            if len(rel) == len(pats) and all(fnmatch.fnmatchcase(r, p) for r, p in zip(rel, pats, strict=True)):
                yield self._child(info, base)

    def open_input(self) -> Any:
        """A random-access pyarrow file (``read_at``, ``seek``, ``size``)."""
        fs, path = filesystem(self.uri)
        return fs.open_input_file(path)

    def read_bytes(self) -> bytes:
        fs, path = filesystem(self.uri)
        with fs.open_input_stream(path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT of the whole object: visible complete or not at all (see :func:`write_atomic`)."""
        fs, path = filesystem(self.uri)
        out = fs.open_output_stream(path)
        out.write(data)
        out.close()
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories (a prefix exists once an object is under it): no-op there."""
        if scheme(self.uri) in OBJECT_STORES:
            return
        fs, path = filesystem(self.uri)
        fs.create_dir(path, recursive=parents)

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = filesystem(self.uri)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise


AnyPath = Path | Location


def as_path(p: str | os.PathLike[str] | Location) -> AnyPath:
    """A :class:`Location` for a URI, else a :class:`~pathlib.Path` (``file://`` becomes a Path)."""
    if isinstance(p, Location | Path):
        return p
    s = os.fspath(p)
    if is_uri(s):
        return Location(s)
    return Path(local_path(s))


def resolve(base: AnyPath, p: str | os.PathLike[str]) -> AnyPath:
    """``p`` as a location: URIs as given, ``~`` expanded, relative paths below ``base``."""
    s = os.fspath(p)
    if is_uri(s):
        return Location(s)
    q = Path(os.path.expanduser(local_path(s)))
    if q.is_absolute():
        return q
    if isinstance(base, Location):
        return base / q.as_posix()
    return (Path(base) / q).resolve()


def write_atomic(p: AnyPath, data: bytes, *, fsync: bool = False) -> None:
    """Write a whole file so that a reader sees the old content, the new one, or nothing.

    Local: a hidden temp file in the same directory (``.<name>.tmp``, optionally fsync'ed) renamed
    over the target. Object store: a single PUT of the complete bytes (no temp object: there is no
    rename, and a PUT - multipart or not - only becomes visible when it completes).
    """
    if isinstance(p, Location):
        p.write_bytes(data)
        return
    tmp = p.parent / f".{p.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, p)
