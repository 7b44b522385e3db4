"""What the pages compute from a results directory (no Streamlit rendering)."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from dashboard import data
from pipeline.analysis.cues import StatOptions
from pipeline.gate import evaluate
from pipeline.schema import RunRecord, read_runs
from tests.dashboard.fakes import CRAFTED, FAILING, PASSING, write_results


@pytest.fixture(scope="module")
def frame(fake_results):
    return data.load_frame(fake_results.root)


@pytest.fixture(scope="module")
def verdict(fake_results, frame):
    return evaluate(fake_results.root, frame=frame)


def test_version_changes_when_a_part_appears(tmp_path):
    assert data.version(tmp_path / "missing") == "missing"
    f = write_results(tmp_path, runs=1, broken=False, crafted=False, n_per_class=3)
    before = data.version(f.root)
    time.sleep(0.01)
    write_results(tmp_path / "more", runs=1, broken=False, crafted=False, n_per_class=3)
    extra = next((tmp_path / "more" / "results" / f"model={PASSING}").glob("part-*.parquet"))
    os.replace(extra, f.root / f"model={PASSING}" / "part-zzz-000000.parquet")
    assert data.version(f.root) != before


def test_runs_table_marks_a_silent_running_run(tmp_path):
    f = write_results(tmp_path, runs=2, running=True, broken=False, crafted=False, n_per_class=3)
    runs = read_runs(f.root)
    assert data.run_state(f.root, runs[-1]) == "running"
    later = time.time() + 3 * 3600
    assert data.run_state(f.root, runs[-1], now=later).startswith("running? (nothing written for 3.0 h")
    t = data.runs_table(f.root, runs)
    assert list(t.run.unique()) == [runs[-1].run_id, runs[0].run_id]  # newest first
    assert set(t[t.run == runs[0].run_id].model) == {PASSING, FAILING}


def test_fetch_details_reads_only_the_asked_rows(fake_results, frame):
    g = frame[(frame.model == PASSING) & frame.scored].sort_values("object_share")
    keys = [data.row_key(r) for _, r in g.head(3).iterrows()]
    rows = data.fetch_details(fake_results.root, PASSING, keys)
    assert set(rows) == {k[0] for k in keys}
    for k in keys:
        r = rows[k[0]]
        assert (r["run_id"], r["model_fingerprint"]) == (k[1], k[2])  # the current fingerprint's row
        assert len(r["cam"]) == r["cam_h"] * r["cam_w"] == 16 and r["view_box"] == [8.0, 0.0, 40.0, 32.0]
    assert data.fetch_details(fake_results.root, PASSING, []) == {}
    where = data.locate(fake_results.root, PASSING)
    assert len(where.files) == 2 and len(where.hashes) == 2 * 92 + 3  # two runs' parts, every stored row
    assert data.fetch_details(fake_results.root, PASSING, keys, where) == rows  # the same rows, fewer files read
    assert len(where.files_for([k[0] for k in keys])) == 2  # both runs scored these images
    assert where.files_for(["not an image"]) == []


def test_class_table_is_coloured_by_the_class_findings(verdict):
    mv = next(m for m in verdict.models if m.model == FAILING)
    t = data.class_table(mv).set_index("class")
    assert list(t.index) == ["(all)", "disk", "square", "triangle"]
    # the model-level findings fail; class-level saliency and class-level BG-Gap only warn
    assert t.loc["(all)", "status"] == "FAIL" and (t.loc[["disk", "square", "triangle"], "status"] == "WARN").all()
    assert "background_reliance WARN" in t.loc["disk", "flags"]
    assert "counterfactual_flip WARN" in t.loc["disk", "flags"]
    assert t.loc["disk", "object share"] == pytest.approx(0.02, abs=0.01)
    ok = data.class_table(next(m for m in verdict.models if m.model == PASSING)).set_index("class")
    assert (ok.loc[["disk", "square", "triangle"], "status"] == "PASS").all()


def test_headlines_and_errors(verdict):
    h = data.headline_table(verdict).set_index("model")
    assert h.loc[FAILING, "verdict"] == "FAIL" and h.loc[PASSING, "verdict"] == "PASS"
    assert h.loc[FAILING, "object lift (chance-corrected)"].startswith("-0.2")
    e = data.errors_table(verdict)
    assert e[e.model == "broken"].rows.sum() == 6


def test_trend_has_one_point_per_finished_run_and_model(fake_results):
    t = data.trend(str(fake_results.root), read_runs(fake_results.root), StatOptions(n_boot=200))
    lift = t[t.metric == "object_lift"].pivot(index="run", columns="model", values="value")
    assert list(lift.index) == fake_results.runs
    assert lift[PASSING].iloc[1] > lift[PASSING].iloc[0] + 0.05  # the retrained model looks more at objects
    assert lift[FAILING].iloc[0] == pytest.approx(lift[FAILING].iloc[1])


def test_bg_points_project_colours_and_flag_conflicting(frame):
    b = data.bg_points(frame, FAILING)
    assert b is not None and len(b.points) == 90 and set(b.centroids.label) == {"disk", "square", "triangle"}
    assert (b.points.aligned == "conflicting").sum() == 18
    assert (b.points[b.points.aligned == "conflicting"].correct == "wrong").all()
    few = data.bg_points(frame, FAILING, max_points=10)
    assert len(few.points) == 10
    assert data.bg_points(frame, "broken") is None


def test_histogram_and_cooccurrence(frame, verdict):
    h = data.share_histogram(frame, FAILING)
    share = h[h.quantity.str.startswith("object share")]
    assert share.images.sum() == 90 and share.iloc[0].images == 90  # all in [0, 0.05)
    mv = next(m for m in verdict.models if m.model == FAILING)
    co = data.cooccurrence_table(mv.evidence)
    assert set(co.category) == {"keyboard"} and set(co["class"]) == {"disk", "square", "triangle"}
    assert co["CAM mass"].to_numpy() == pytest.approx(0.25)


def test_class_deltas_and_paired_images(frame, verdict):
    ea = next(m for m in verdict.models if m.model == FAILING).evidence
    eb = next(m for m in verdict.models if m.model == PASSING).evidence
    d = data.class_deltas(ea, eb).set_index("class")
    disk = d.loc["disk"]
    assert disk["Δ object share"] == pytest.approx(disk["object share B"] - disk["object share A"])
    assert (d["Δ object lift"] > 0.5).all()
    p, n = data.paired_images(frame[frame.model == FAILING], frame[frame.model == PASSING])
    assert len(p) == n == 90 and not set(CRAFTED) & set(p.image_id)  # only images both scored
    assert p.delta.abs().is_monotonic_decreasing
    top, n = data.paired_images(frame[frame.model == FAILING], frame[frame.model == PASSING], limit=3)
    assert list(top.image_id) == list(p.image_id[:3]) and n == 90


def test_model_rows_summarise_without_the_rows(frame):
    m = data.model_rows(frame, "broken", max_errors=4)
    assert (m.rows, m.scored, len(m.errors)) == (6, 0, 4) and m.labels == ["disk", "square", "triangle"]
    assert set(m.errors.error_kind) <= {"missing_file", "decode_error"}


def test_details_table_formats_a_row(frame):
    row = frame[frame.model == FAILING].iloc[0]
    t = data.details_table(row).set_index("field")
    assert t.loc["correct", "value"] in ("yes", "no")
    assert t.loc["other_shares", "value"] in ("-", "keyboard: 0.250")
    assert isinstance(t, pd.DataFrame) and not t.value.isna().any()


def test_run_roots_union():
    runs = [RunRecord("a", "x", "t", dataset_roots=["/d1"]),
            RunRecord("b", "x", "t", dataset_roots=["/d2", "/d1"])]
    assert data.run_roots(runs) == ["/d1", "/d2"]
    assert np.isnan(data._v(data.Estimate(float("nan"), 0, 0, 0)))
