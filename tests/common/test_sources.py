"""Byte sources: tar members, Parquet/Arrow rows and objects, read back byte for byte.

Archives and tables are written by independent writers (``tarfile``, ``webdataset.TarWriter``,
``datasets``) and the offsets/rows the readers derive are checked against them.
"""

from __future__ import annotations

import io
import tarfile
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import sources
from common.sources import SourceError, read_bytes, row_uri, tar_uri
from common.storage import Location

MEMBERS = {"a/000001.png": b"\x89PNG first", "a/000001.json": b'{"label": "disk"}',
           "b/" + "x" * 120 + ".png": b"long name", "b/empty.png": b""}


def _tar(path, members=MEMBERS, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_scan_tar_finds_every_member_where_it_lies(tmp_path, fmt):
    raw = _tar(tmp_path / "s.tar", fmt=fmt)
    entries = list(sources.scan_tar(str(tmp_path / "s.tar"), want=lambda n: n.endswith(".json")))
    assert [e.name for e in entries] == list(MEMBERS)
    for e in entries:
        assert raw[e.offset:e.offset + e.size] == MEMBERS[e.name]
        assert e.data == (MEMBERS[e.name] if e.name.endswith(".json") else None)


def test_tar_members_with_and_without_the_byte_range_hint(tmp_path):
    archive = str(tmp_path / "s.tar")
    _tar(tmp_path / "s.tar")
    for e in sources.scan_tar(archive):
        assert read_bytes(tar_uri(e.name, archive, e.offset, e.size)) == MEMBERS[e.name]
        assert read_bytes(tar_uri(e.name, archive)) == MEMBERS[e.name]
    # a stale hint (the shard was rewritten) is detected by the header check, never misread
    assert read_bytes(tar_uri("a/000001.json", archive, 512, 10)) == MEMBERS["a/000001.json"]
    with pytest.raises(SourceError, match="has no member 'nope.png'") as e:
        read_bytes(tar_uri("nope.png", archive))
    assert e.value.kind == "missing" and e.value.uri == tar_uri("nope.png", archive)
    with pytest.raises(SourceError, match="does not exist") as e:
        read_bytes(tar_uri("a.png", str(tmp_path / "none.tar")))
    assert e.value.kind == "missing"
    with pytest.raises(SourceError, match="bad byte-range hint") as e:
        read_bytes("tar://a.png?offset=x::" + archive)
    assert e.value.kind == "unreadable"


def test_a_webdataset_writer_shard_reads_back(tmp_path):
    wds = pytest.importorskip("webdataset")
    with wds.TarWriter(str(tmp_path / "w.tar")) as w:
        w.write({"__key__": "disk/000001", "png": b"png bytes", "cls": 2, "json": {"label": "disk"}})
    found = {e.name: e for e in sources.scan_tar(str(tmp_path / "w.tar"))}
    e = found["disk/000001.png"]
    assert read_bytes(tar_uri(e.name, str(tmp_path / "w.tar"), e.offset, e.size)) == b"png bytes"


def test_plain_files_directories_and_missing_files(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert read_bytes(str(tmp_path / "f.bin")) == b"abc" == read_bytes(f"file://{tmp_path}/f.bin")
    with pytest.raises(SourceError, match="is a directory") as e:
        read_bytes(str(tmp_path))
    assert e.value.kind == "unreadable"
    with pytest.raises(SourceError, match="does not exist") as e:
        read_bytes(str(tmp_path / "nope"))
    assert e.value.kind == "missing"


def _hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [{"bytes": f"image {i}".encode(), "path": f"{i}.png"} for i in range(250)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(250)]}, features=feats)
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "t.parquet"), batch_size=100)  # several row groups
    return next((tmp_path / "disk").glob("*.arrow")), tmp_path / "t.parquet"


def test_rows_of_datasets_written_arrow_streams_and_parquet(tmp_path):
    arrow, parquet = _hf(tmp_path)
    assert pq.ParquetFile(parquet).metadata.num_row_groups > 1
    spans = [s for s, _ in sources.iter_arrow(str(arrow))]
    assert sum(s.rows for s in spans) == 250 and len(spans) > 1  # datasets writes image batches of 100
    for row in (0, 99, 100, 249):
        assert read_bytes(row_uri("parquet", "image", row, str(parquet))) == f"image {row}".encode()
        assert read_bytes(row_uri("arrow", "image", row, str(arrow))) == f"image {row}".encode()
        s = next(s for s in spans if s.start <= row < s.start + s.rows)
        hinted = row_uri("arrow", "image", row, str(arrow), offset=s.offset, size=s.size, start=s.start)
        assert read_bytes(hinted) == f"image {row}".encode()
    wrong = row_uri("arrow", "image", 249, str(arrow), offset=spans[0].offset, size=spans[0].size, start=0)
    assert read_bytes(wrong) == b"image 249"  # a hint that does not cover the row falls back to the index
    with pytest.raises(SourceError, match="has 250 rows") as e:
        read_bytes(row_uri("parquet", "image", 250, str(parquet)))
    assert e.value.kind == "missing"
    with pytest.raises(SourceError, match="no column 'img'"):
        read_bytes(row_uri("arrow", "img", 0, str(arrow)))


def test_path_only_cells_are_followed_through_the_guard(tmp_path):
    (tmp_path / "pic.png").write_bytes(b"on disk")
    t = pa.table({"image": [{"bytes": None, "path": "pic.png"}, {"bytes": None, "path": None}]})
    pq.write_table(t, tmp_path / "t.parquet")
    uri = row_uri("parquet", "image", 0, str(tmp_path / "t.parquet"))
    assert read_bytes(uri) == b"on disk"
    seen = []
    assert read_bytes(uri, guard=seen.append) == b"on disk" and seen == [str(tmp_path / "pic.png")]

    def refuse(target: str) -> None:
        raise SourceError("unreadable", f"{target!r} refused", target)

    with pytest.raises(SourceError, match="refused"):
        read_bytes(uri, guard=refuse)
    with pytest.raises(SourceError, match="neither bytes nor a path"):
        read_bytes(row_uri("parquet", "image", 1, str(tmp_path / "t.parquet")))


def test_members_and_rows_on_the_object_store(s3, tmp_path):
    bucket = Location(s3.make_bucket(f"src-{uuid.uuid4().hex[:8]}"))
    raw = _tar(tmp_path / "s.tar")
    (bucket / "shards" / "s.tar").write_bytes(raw)
    archive = str(bucket / "shards" / "s.tar")
    for e in sources.scan_tar(archive):
        assert read_bytes(tar_uri(e.name, archive, e.offset, e.size)) == MEMBERS[e.name]
    assert read_bytes(tar_uri("a/000001.png", archive)) == MEMBERS["a/000001.png"]
    pq.write_table(pa.table({"image": [b"r0", b"r1"]}), tmp_path / "t.parquet")
    (bucket / "t.parquet").write_bytes((tmp_path / "t.parquet").read_bytes())
    assert read_bytes(row_uri("parquet", "image", 1, str(bucket / "t.parquet"))) == b"r1"
    with pytest.raises(SourceError, match="does not exist") as e:
        read_bytes(str(bucket / "nope.png"))
    assert e.value.kind == "missing"
    with pytest.raises(SourceError, match="does not exist") as e:
        read_bytes(tar_uri("x.png", str(bucket / "none.tar")))
    assert e.value.kind == "missing"
