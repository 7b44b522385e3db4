"""Locations: local paths and object-store URIs behind one path type, against a real S3 server."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path, PurePosixPath

import pytest

from common.storage import (
    Location,
    StorageError,
    StorageOptions,
    as_path,
    configure,
    is_uri,
    local_path,
    resolve,
    write_atomic,
)


def test_uris_and_local_paths_are_told_apart():
    assert is_uri("s3://b/k") and is_uri("gs://b/k") and is_uri("tar://a.png::s3://b/x.tar")
    assert not is_uri("/data/a.png") and not is_uri("data/a.png") and not is_uri("file:///data/a.png")
    assert not is_uri("C:/data/a.png")  # a drive letter is not a scheme
    assert local_path("file:///data/a%20b.png") == "/data/a b.png"
    assert as_path("file:///data/x") == Path("/data/x") and isinstance(as_path("s3://b/x"), Location)
    with pytest.raises(StorageError, match="file:// URIs must name a local path"):
        local_path("file://host/data")


def test_resolve_keeps_uris_and_joins_relative_paths_below_any_base(tmp_path):
    assert resolve(tmp_path, "s3://b/k.png") == Location("s3://b/k.png")
    assert resolve(tmp_path, "img/a.png") == tmp_path / "img" / "a.png"
    assert resolve(tmp_path, "/abs/a.png") == Path("/abs/a.png")
    assert resolve(Location("s3://b/data"), "img/a.png") == Location("s3://b/data/img/a.png")
    assert resolve(tmp_path, "~/x") == Path(os.path.expanduser("~/x"))


def test_location_is_a_small_pure_path():
    loc = Location("s3://bucket/data/images/cat/0001.tar.gz/")
    assert str(loc) == "s3://bucket/data/images/cat/0001.tar.gz"
    assert (loc.name, loc.stem, loc.suffix) == ("0001.tar.gz", "0001.tar", ".gz")
    assert loc.parent == Location("s3://bucket/data/images/cat")
    assert Location("s3://bucket").parent == Location("s3://bucket")
    assert loc.relative_to(Location("s3://bucket/data")) == PurePosixPath("images/cat/0001.tar.gz")
    assert Location("s3://b/x") / PurePosixPath("y/z") / "." == Location("s3://b/x/y/z")
    assert pickle.loads(pickle.dumps(loc)) == loc and len({loc, Location(str(loc))}) == 1
    with pytest.raises(ValueError, match="not below"):
        loc.relative_to("s3://bucket/other")
    with pytest.raises(StorageError, match="absolute"):
        _ = Location("s3://b/x") / "/etc"


def test_write_atomic_leaves_no_temp_file_on_disk(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two", fsync=True)
    assert target.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


@pytest.fixture
def bucket(s3) -> Location:
    return Location(s3.make_bucket(f"t-{uuid.uuid4().hex[:10]}"))


def test_object_store_round_trip_listing_and_missing(bucket):
    root = bucket / "res"
    assert not root.exists() and not root.is_dir() and list(root.glob("*")) == []
    (root / "model=a" / "part-1.parquet").write_bytes(b"p1")
    (root / "model=b" / "part-2.parquet").write_bytes(b"p2")
    (root / "_runs" / "r1.json").write_text('{"a": 1}')
    assert root.is_dir() and (root / "_runs" / "r1.json").is_file()
    assert [p.name for p in root.iterdir()] == ["_runs", "model=a", "model=b"]
    assert [str(p.relative_to(root)) for p in root.glob("model=*/part-*.parquet")] == [
        "model=a/part-1.parquet", "model=b/part-2.parquet"]
    assert [p.name for p in root.rglob("*.json")] == ["r1.json"]
    listed = next(iter(root.glob("_runs/*.json")))
    assert listed.stat().st_size == 8 and listed.stat().st_mtime_ns > 0
    assert (root / "_runs" / "r1.json").read_text() == '{"a": 1}'
    with pytest.raises(FileNotFoundError):
        (root / "nope").read_bytes()
    with pytest.raises(FileNotFoundError):
        (root / "nope").stat()
    (root / "model=a" / "part-1.parquet").unlink()
    (root / "model=a" / "part-1.parquet").unlink(missing_ok=True)
    assert not (root / "model=a" / "part-1.parquet").exists()
    (root / "new" / "deep").mkdir(parents=True, exist_ok=True)  # no directories on an object store: no-op


def test_endpoint_comes_from_the_config_when_the_environment_has_none(s3, bucket, monkeypatch):
    (bucket / "x.txt").write_bytes(b"hi")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    try:
        configure(StorageOptions(endpoint_url=s3.endpoint, region="us-east-1"))
        assert (bucket / "x.txt").read_bytes() == b"hi"
        configure(StorageOptions(endpoint_url="ftp://nope"))
        with pytest.raises(StorageError, match="must look like http"):
            (bucket / "x.txt").read_bytes()
    finally:
        configure(None)


def test_other_protocols_go_through_fsspec():
    pytest.importorskip("fsspec")
    loc = Location(f"memory://cueaudit-{uuid.uuid4().hex[:8]}/dir/a.txt")
    loc.parent.mkdir(parents=True, exist_ok=True)
    loc.write_bytes(b"in memory")
    assert loc.read_bytes() == b"in memory" and loc.is_file() and [p.name for p in loc.parent.iterdir()] == ["a.txt"]
    with pytest.raises(StorageError, match="no filesystem for 'nosuchproto://'"):
        Location("nosuchproto://x/y").read_bytes()
