"""The result schema: atomic parts, latest-row reads, baselines, resume ids."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import schema as S


def _rows(run_id: str, model: str, fp: str, ids: list[str], share: float) -> pa.Table:
    n = len(ids)
    return S.conform({
        "run_id": [run_id] * n, "model": [model] * n, "model_fingerprint": [fp] * n, "image_id": ids,
        "object_share": [share] * n, "scored_at": pa.array([1_700_000_000_000 + i for i in range(n)]).cast(pa.timestamp("ms", tz="UTC")),
        "cam": [[0.5, 1.0]] * n, "other_shares": [[("keyboard", 0.25)]] * n,
    })


def test_conform_fills_nulls_and_rejects_unknown_columns():
    t = S.conform({"image_id": ["a"], "object_share": [0.5]})
    assert t.schema == S.RESULT_SCHEMA and t.column("error").null_count == 1
    with pytest.raises(ValueError, match=r"not in pipeline.schema: \['bogus'\]"):
        S.conform({"bogus": [1]})


def test_part_writer_is_atomic_and_cleans_temp_files(tmp_path):
    d = S.model_dir(tmp_path, "m")
    d.mkdir(parents=True)
    (d / ".part-old-000000.parquet.tmp").write_bytes(b"half a file")
    w = S.PartWriter(tmp_path, "m", "r1")
    assert not list(d.glob(".*.tmp"))
    p = w.write(_rows("r1", "m", "f", ["a", "b"], 0.5))
    assert p.name == "part-r1-000000.parquet" and w.rows == 2
    assert w.write(_rows("r1", "m", "f", [], 0.5)) is None
    t = S.read_results(tmp_path, columns=["image_id", "cam", "other_shares"])
    assert sorted(t.column("image_id").to_pylist()) == ["a", "b"]
    assert t.column("cam").to_pylist()[0] == [0.5, 1.0]
    assert S.map_to_dict(t.column("other_shares").to_pylist()[0]) == {"keyboard": 0.25}


def test_latest_row_wins_and_as_of_and_fingerprints(tmp_path):
    S.PartWriter(tmp_path, "m", "20260101T000000Z-aaaaaa").write(_rows("20260101T000000Z-aaaaaa", "m", "f1", ["a", "b"], 0.1))
    S.write_run(tmp_path, S.RunRecord(run_id="20260101T000000Z-aaaaaa", name="x", started_at="t",
                                      models={"m": S.ModelRun(fingerprint="f1")}))
    later = _rows("20260102T000000Z-bbbbbb", "m", "f1", ["b", "c"], 0.9)
    later = later.set_column(later.schema.get_field_index("scored_at"), "scored_at",
                             pa.array([1_800_000_000_000] * 2).cast(pa.timestamp("ms", tz="UTC")))
    S.PartWriter(tmp_path, "m", "20260102T000000Z-bbbbbb").write(later)
    S.write_run(tmp_path, S.RunRecord(run_id="20260102T000000Z-bbbbbb", name="x", started_at="t",
                                      models={"m": S.ModelRun(fingerprint="f1")}))
    now = {r["image_id"]: r["object_share"] for r in S.read_results(tmp_path, ["image_id", "object_share"]).to_pylist()}
    assert now == pytest.approx({"a": 0.1, "b": 0.9, "c": 0.9})  # b: the newer row wins, once
    then = S.read_results(tmp_path, ["image_id"], as_of="20260101T000000Z-aaaaaa").column("image_id").to_pylist()
    assert sorted(then) == ["a", "b"]
    # a new fingerprint makes the old rows stale for the current view, not for the baseline view
    S.PartWriter(tmp_path, "m", "20260103T000000Z-cccccc").write(_rows("20260103T000000Z-cccccc", "m", "f2", ["a"], 0.3))
    S.write_run(tmp_path, S.RunRecord(run_id="20260103T000000Z-cccccc", name="x", started_at="t",
                                      models={"m": S.ModelRun(fingerprint="f2")}))
    assert S.read_results(tmp_path, ["image_id"]).column("image_id").to_pylist() == ["a"]
    assert S.scored_ids(tmp_path, "m", "f1") == {"a", "b", "c"}
    assert S.scored_ids(tmp_path, "m", "f2") == {"a"}
    assert [r.run_id for r in S.read_runs(tmp_path)][0] == "20260101T000000Z-aaaaaa"


def test_missing_results_dir_is_a_clear_error(tmp_path):
    with pytest.raises(S.ResultsError, match="does not exist"):
        S.read_results(tmp_path / "nope")


def test_schema_markdown_lists_every_column():
    md = S.describe_markdown()
    assert all(f"`{c.name}`" in md for c in S.COLUMNS)
