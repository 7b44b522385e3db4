"""Decoding from byte sources keeps every behaviour of decoding files: the broken-inputs folder read
from an S3 bucket and from a tar shard gives the same pixels, masks and error kinds as from disk."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from common.annotations import ObjectAnn, dumps
from common.decode import ImageError, load_for_model, probe_jpeg
from common.preprocess import Preprocess
from common.sources import tar_uri
from tests.brokenfiles import EXPECTED, write_broken_folder
from workers.prepare import PrepareOptions, prepare_one

OPTS = PrepareOptions(Preprocess(size=(32, 32), resize="resize", crop_pct=1.0), max_pixels=4_000_000)


def _outcome(path: str, label: str, mask: str) -> tuple[str | None, object, object]:
    try:
        p = prepare_one(path, label, dumps([ObjectAnn(category=label, mask_path=mask)]), OPTS)
    except ImageError as e:
        return e.kind, str(e), None
    return None, p.pixels, p.masks


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    write_broken_folder(root)
    return root


def _shard(root: Path, out: Path) -> str:
    with tarfile.open(out, "w") as tf:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            tf.add(f, arcname=f.relative_to(root).as_posix())
    return str(out)


def test_s3_objects_and_tar_members_decode_exactly_like_files(broken, s3, tmp_path):
    bucket = s3.make_bucket(f"broken-{uuid.uuid4().hex[:8]}")
    s3.upload(broken, f"{bucket}/data")
    shard = _shard(broken, tmp_path / "broken.tar")
    members = {}
    with tarfile.open(shard) as tf:
        members = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
    for name, expected in EXPECTED.items():
        label = name.split("/")[0]
        mask = "masks/" + str(Path(name).with_suffix(".png"))
        img = f"images/{name}"
        local = _outcome(str(broken / img), label, str(broken / mask))
        remote = _outcome(f"{bucket}/data/{img}", label, f"{bucket}/data/{mask}")
        member = _outcome(tar_uri(img, shard, *members[img]), label,
                          tar_uri(mask, shard, *members[mask]) if mask in members else tar_uri(mask, shard))
        kind = None if expected == "unknown_label" else expected  # the label is judged by the scorer
        assert local[0] == remote[0] == member[0] == kind, (name, local[1], remote[1], member[1])
        if kind is None:
            np.testing.assert_array_equal(local[1], remote[1])
            np.testing.assert_array_equal(local[1], member[1])
            np.testing.assert_array_equal(local[2], remote[2])
            np.testing.assert_array_equal(local[2], member[2])
        else:  # the message names where the bytes came from
            assert f"{bucket}/data/" in remote[1] and "tar://" in member[1], (remote[1], member[1])


def test_missing_sources_name_the_uri(s3, tmp_path):
    bucket = s3.make_bucket(f"miss-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ImageError, match=f"image '{bucket}/nope.png' does not exist") as e:
        load_for_model(f"{bucket}/nope.png", OPTS.preprocess)
    assert e.value.kind == "missing" and e.value.path == f"{bucket}/nope.png"
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        ti = tarfile.TarInfo("a.png")
        tf.addfile(ti, io.BytesIO(b""))
    with pytest.raises(ImageError, match="empty") as e:
        load_for_model(tar_uri("a.png", str(shard)), OPTS.preprocess)
    assert e.value.kind == "empty_file"
    with pytest.raises(ImageError, match="has no member 'b.png'") as e:
        load_for_model(tar_uri("b.png", str(shard)), OPTS.preprocess)
    assert e.value.kind == "missing"


def test_device_decode_probe_returns_the_source_bytes(broken, s3):
    bucket = s3.make_bucket(f"probe-{uuid.uuid4().hex[:8]}")
    s3.upload(broken / "images" / "disk" / "exif_rotated.jpg", f"{bucket}/r.jpg")
    local = probe_jpeg(str(broken / "images" / "disk" / "exif_rotated.jpg"), OPTS.preprocess)
    remote = probe_jpeg(f"{bucket}/r.jpg", OPTS.preprocess)
    assert local is not None and remote is not None
    assert local[0] == remote[0] and local[1] == remote[1]
