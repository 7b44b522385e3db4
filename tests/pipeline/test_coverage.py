"""Coverage: what a run saw, what the results hold of it, and the gate refusing a partial state."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline import schema as S
from pipeline.cli import app
from pipeline.coverage import (
    COMPLETE,
    PARTIAL,
    UNVERIFIED,
    coverage_of,
    dataset_fingerprint,
    judge_coverage,
    read_dataset,
    write_dataset,
)
from pipeline.gate import evaluate, markdown

runner = CliRunner()
IDS = [f"img{i:02d}" for i in range(12)]


def _ids(ids):
    return pa.array(sorted(ids), pa.string())


def test_the_dataset_fingerprint_is_the_set_of_ids(tmp_path):
    fp = dataset_fingerprint(_ids(IDS))
    assert fp == dataset_fingerprint(_ids(reversed(IDS)))
    assert fp != dataset_fingerprint(_ids(IDS[:-1]))
    assert write_dataset(tmp_path, _ids(IDS)) == fp
    assert read_dataset(tmp_path, fp).to_pylist() == sorted(IDS)
    assert read_dataset(tmp_path, "0" * 16) is None


def test_coverage_counts_ok_errors_and_missing():
    rows = pa.table({"model": ["m", "m", "m", "m", "n"], "image_id": ["a", "b", "c", "zzz", "a"],
                     "error_kind": [None, "truncated", "truncated", None, "internal"]})
    cov = coverage_of(rows, _ids(["a", "b", "c", "d"]), ["m", "n"])
    assert (cov["m"].ok, cov["m"].errors, cov["m"].missing, cov["m"].covered) == (1, {"truncated": 2}, 1, 3)
    assert (cov["n"].ok, cov["n"].errors, cov["n"].missing) == (0, {"internal": 1}, 3)


def _rows(run_id: str, model: str, ids: list[str], right: bool = True, errors: dict[str, str] | None = None):
    n = len(ids)
    errors = errors or {}
    return S.conform({
        "run_id": [run_id] * n, "model": [model] * n, "model_fingerprint": ["fp"] * n, "image_id": ids,
        "label": ["a" if i % 2 else "b" for i in range(n)],
        "pred": [None if x in errors else ("a" if i % 2 else "b") if right else "a" for i, x in enumerate(ids)],
        "correct": [None if x in errors else right or i % 2 == 1 for i, x in enumerate(ids)],
        "object_share": [None if x in errors else 0.6 for x in ids],
        "object_area": [None if x in errors else 0.2 for x in ids],
        "error": [f"{x}: {errors[x]}" if x in errors else None for x in ids],
        "error_kind": [errors.get(x) for x in ids],
        "scored_at": pa.array([1_700_000_000_000] * n).cast(pa.timestamp("ms", tz="UTC")),
    })


def _results(root, *, status: str = "finished", scored: list[str] = IDS, dataset: list[str] = IDS,
             errors: dict[str, str] | None = None, fingerprint: bool = True) -> str:
    run_id = "20260101T000000Z-aaaaaa"
    S.PartWriter(root, "m", run_id).write(_rows(run_id, "m", scored, errors=errors))
    fp = write_dataset(root, _ids(dataset)) if fingerprint else None
    S.write_run(root, S.RunRecord(run_id=run_id, name="t", started_at="2026-01-01T00:00:00+00:00", status=status,
                                  updated_at="2026-01-01T00:05:00+00:00", images=len(dataset),
                                  dataset_fingerprint=fp, error="boom" if status == "failed" else None,
                                  models={"m": S.ModelRun(fingerprint="fp")}))
    return run_id


def test_judged_states(tmp_path):
    rows = pa.table({"model": ["m"] * 12, "image_id": IDS, "error_kind": [None] * 12})
    _results(tmp_path / "done")
    (c,) = judge_coverage(tmp_path / "done", rows, ["m"], S.read_runs(tmp_path / "done")).values()
    assert (c.state, c.images, c.ok, c.missing, c.outside) == (COMPLETE, 12, 12, 0, 0)
    _results(tmp_path / "killed", status="running")
    (c,) = judge_coverage(tmp_path / "killed", rows, ["m"], S.read_runs(tmp_path / "killed")).values()
    assert c.state == PARTIAL and "did not finish" in c.reason and "2026-01-01T00:05:00" in c.reason
    _results(tmp_path / "failed", status="failed")
    (c,) = judge_coverage(tmp_path / "failed", rows, ["m"], S.read_runs(tmp_path / "failed")).values()
    assert c.state == PARTIAL and "failed: boom" in c.reason
    _results(tmp_path / "grown", dataset=[*IDS, "new1", "new2"])  # the dataset has images the results lack
    (c,) = judge_coverage(tmp_path / "grown", rows, ["m"], S.read_runs(tmp_path / "grown")).values()
    assert c.state == PARTIAL and (c.images, c.missing) == (14, 2) and "2 of the 14 images" in c.reason
    _results(tmp_path / "old", fingerprint=False)
    (c,) = judge_coverage(tmp_path / "old", rows, ["m"], S.read_runs(tmp_path / "old")).values()
    assert c.state == UNVERIFIED and "older cueaudit" in c.reason
    (c,) = judge_coverage(tmp_path / "none", rows, ["m"], []).values()
    assert c.state == UNVERIFIED and "no run record" in c.reason


def test_gate_exits_2_on_a_killed_run_unless_allowed(tmp_path):
    root = tmp_path / "r"
    _results(root, status="running", scored=IDS[:8])
    j, x, md = tmp_path / "v.json", tmp_path / "v.xml", tmp_path / "v.md"
    r = runner.invoke(app, ["gate", str(root), "-q", "--json", str(j), "--junit", str(x), "--markdown", str(md)])
    assert r.exit_code == 2, r.output
    assert "not a finished run covering its dataset" in r.output and "did not finish" in r.output
    assert "--allow-partial" in r.output
    doc = json.loads(j.read_text())  # the reports are written all the same, saying why
    assert doc["complete"] is False and doc["coverage"]["m"]["state"] == PARTIAL
    assert (doc["coverage"]["m"]["images"], doc["coverage"]["m"]["missing"]) == (12, 4)
    case = next(tc for tc in ET.parse(x).getroot().iter("testcase") if tc.get("name") == "coverage")
    assert case.find("failure").get("type") == "PARTIAL"
    assert "results incomplete" in md.read_text() and "⛔ partial" in md.read_text()
    ok = runner.invoke(app, ["gate", str(root), "-q", "--allow-partial", "--junit", str(x)])
    assert ok.exit_code in (0, 1) and "on partial results" in ok.output, ok.output
    case = next(tc for tc in ET.parse(x).getroot().iter("testcase") if tc.get("name") == "coverage")
    assert case.find("skipped") is not None and case.find("failure") is None


def test_gate_judges_a_finished_covering_run_and_counts_its_errors(tmp_path):
    root = tmp_path / "r"
    _results(root, errors={"img03": "truncated"})
    v = evaluate(root)
    c = v.coverage["m"]
    assert v.complete and (c.state, c.ok, c.errors, c.missing) == (COMPLETE, 11, {"truncated": 1}, 0)
    assert "11 scored, 1 errors" in markdown(v)
    r = runner.invoke(app, ["gate", str(root)])
    assert r.exit_code in (0, 1) and "Coverage" in r.output, r.output
    assert v.exit_code == (0 if v.passed else 1)


def test_a_model_of_the_latest_run_without_rows_is_partial(tmp_path):
    root = tmp_path / "r"
    _results(root)
    run = S.read_runs(root)[0]
    S.write_run(root, S.RunRecord(**{**run.__dict__, "run_id": "20260102T000000Z-bbbbbb", "status": "running",
                                     "models": {"new": S.ModelRun(fingerprint="f2")}}))
    v = evaluate(root)
    assert [m.model for m in v.models] == ["m"] and v.coverage["m"].state == COMPLETE
    assert v.coverage["new"].state == PARTIAL and not v.complete and v.exit_code == 2


@pytest.mark.parametrize("kinds", [["truncated"], []])
def test_retry_picks_the_latest_error_rows_of_the_given_kinds(tmp_path, kinds):
    root = tmp_path / "r"
    _results(root, errors={"img03": "truncated", "img04": "corrupt"})
    done, again = S.scored_and_retry(root, "m", "fp", kinds)
    assert sorted(again.to_pylist()) == (["img03"] if kinds else [])
    assert len(done) + len(again) == 12
