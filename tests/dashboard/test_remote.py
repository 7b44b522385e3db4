"""The dashboard serves sources (objects, tar members, dataset rows) only from the audited roots."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.sources import row_uri, tar_uri
from dashboard.images import UnsafePathError, figure, guard_path

ROOTS = ["s3://bucket/data"]


@pytest.mark.parametrize("path", ["s3://bucket/data/a.png", "s3://bucket/data/sub/b.png",
                                  "tar://x.png::s3://bucket/data/shard.tar", "parquet://image/3::s3://bucket/data/t.parquet"])
def test_sources_below_an_object_store_root_are_served(path):
    assert guard_path(path, ROOTS) == path


@pytest.mark.parametrize("path, why", [
    ("s3://bucket/database/a.png", "outside"),  # a prefix of the root's name is not inside it
    ("s3://bucket/other/a.png", "outside"),
    ("s3://other/data/a.png", "outside"),
    ("s3://bucket/data/../secret.png", "'..' key segment"),
    ("s3://bucket/data//a.png", "empty"),
    ("tar://x.png::s3://bucket/elsewhere.tar", "outside"),
    ("tar://a::tar://b::s3://bucket/data/x.tar", "nests"),
])
def test_sources_outside_or_crafted_are_refused(path, why):
    with pytest.raises(UnsafePathError, match=why):
        guard_path(path, ROOTS)


def test_no_object_store_root_serves_no_object(tmp_path):
    with pytest.raises(UnsafePathError, match="no object-store dataset root"):
        guard_path("s3://bucket/data/a.png", [str(tmp_path), "s3://"])
    assert guard_path("a.png", ROOTS, base="s3://bucket/data") == "s3://bucket/data/a.png"


def _png(v: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_members_of_local_archives_are_judged_by_their_archive(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for where in (root / "s.tar", tmp_path / "outside.tar"):
        with tarfile.open(where, "w") as tf:
            ti = tarfile.TarInfo("a.png")
            ti.size = len(_png(7))
            tf.addfile(ti, io.BytesIO(_png(7)))
    row = {"image_w": 8, "image_h": 8, "cam": None, "annotations": None, "label": None}
    fig = figure({**row, "path": tar_uri("a.png", str(root / "s.tar"))}, [str(root)], 16)
    assert fig.refused is None and fig.original[0, 0].tolist() == [7, 7, 7]
    fig = figure({**row, "path": tar_uri("a.png", str(tmp_path / "outside.tar"))}, [str(root)], 16)
    assert "outside the audited dataset roots" in fig.refused


def test_a_dataset_row_pointing_to_a_file_outside_the_roots_is_not_followed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_png(200))
    (root / "inside.png").write_bytes(_png(50))
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "../secret.png"},
                                       {"bytes": None, "path": "inside.png"}]}), root / "t.parquet")
    row = {"image_w": 8, "image_h": 8, "cam": None, "annotations": None, "label": None}
    fig = figure({**row, "path": row_uri("parquet", "image", 0, str(root / "t.parquet"))}, [str(root)], 16)
    assert fig.refused is not None and "outside" in fig.refused
    fig = figure({**row, "path": row_uri("parquet", "image", 1, str(root / "t.parquet"))}, [str(root)], 16)
    assert fig.refused is None and fig.original[0, 0].tolist() == [50, 50, 50]
