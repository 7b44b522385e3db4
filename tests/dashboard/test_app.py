"""Every page rendered by Streamlit's AppTest over synthetic results: content, state, no exceptions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import ENV_RESULTS, data
from pipeline.gate import evaluate
from pipeline.schema import ModelRun, RunRecord, new_run_id, write_run
from tests.dashboard.fakes import (
    BROKEN,
    CRAFTED,
    FAILING,
    PASSING,
    write_errors_only,
    write_results,
    write_started,
)

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def run(monkeypatch: pytest.MonkeyPatch, root: Path | str | None, page: str = "Overview", **state) -> AppTest:
    if root is None:
        monkeypatch.delenv(ENV_RESULTS, raising=False)
    else:
        monkeypatch.setenv(ENV_RESULTS, str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["page"] = page
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


# ---------------------------------------------------------------------------------------------
# Overview


def test_overview_shows_runs_verdicts_headlines_errors_and_trend(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root)
    errors = texts(at.error)
    assert f"Gate failed: {FAILING} failed." in errors
    assert f"{FAILING} · Counterfactual background swap" in errors and "counterfactual_flip) FAIL" in errors
    verdicts = frame_with(at, "background_reliance").set_index("model")
    assert verdicts.loc[FAILING, "verdict"] == "FAIL" and verdicts.loc[PASSING, "verdict"] == "PASS"
    assert verdicts.loc[FAILING, "background_reliance"] == "WARN"  # coarse 4x4 map: capped
    assert verdicts.loc[FAILING, "counterfactual_flip"] == "FAIL"
    runs = frame_with(at, "fingerprint")
    assert set(runs.run) == set(fake_results.runs) and set(runs.status) == {"finished"}
    assert runs[(runs.run == fake_results.runs[1]) & (runs.model == FAILING)].skipped.iloc[0] == 90
    heads = frame_with(at, "object lift (chance-corrected)").set_index("model")
    assert heads.loc[FAILING, "object share"].startswith("0.0") and "[" in heads.loc[FAILING, "object share"]
    kinds = frame_with(at, "decode_error").set_index("model")
    assert kinds.loc[BROKEN, "decode_error"] + kinds.loc[BROKEN, "missing_file"] == 6
    assert f"`{BROKEN}` has no scored images" in texts(at.warning)
    assert at.selectbox(key="trend_metric").value == "object_lift"
    assert at.get("vega_lite_chart"), "the trend chart is drawn"
    assert "the trend needs two or more" not in texts(at.info)


def test_overview_with_one_run_says_the_trend_needs_more(monkeypatch, tmp_path):
    f = write_results(tmp_path, runs=1, broken=False, crafted=False, n_per_class=8)
    at = run(monkeypatch, f.root)
    assert "1 finished run: the trend needs two or more" in texts(at.info)


def test_a_running_run_is_shown_as_running(monkeypatch, tmp_path):
    f = write_results(tmp_path, runs=2, running=True, broken=False, crafted=False, n_per_class=8)
    at = run(monkeypatch, f.root)
    runs = frame_with(at, "fingerprint")
    assert runs[runs.run == f.runs[1]].status.iloc[0].startswith("running")
    assert f"Run `{f.runs[1]}` is running" in texts(at.warning)


def test_a_run_that_has_written_nothing_yet(monkeypatch, tmp_path):
    root = write_started(tmp_path)
    at = run(monkeypatch, root)
    assert "Nothing to judge yet: no result files yet" in texts(at.info)
    assert frame_with(at, "fingerprint").status.iloc[0] == "running"
    for page in ("Model", "Image explorer", "Compare"):
        at = run(monkeypatch, root, page)
        assert "Nothing to judge yet" in texts(at.info)


def test_a_changed_model_without_rows_yet(monkeypatch, tmp_path):
    f = write_results(tmp_path, runs=1, broken=False, crafted=False, n_per_class=8)
    when = datetime.now(UTC)
    write_run(f.root, RunRecord(run_id=new_run_id(when), name="fake audit", started_at=when.isoformat(),
                                models={PASSING: ModelRun("fair-v9")}))
    at = run(monkeypatch, f.root)
    assert f"`{PASSING}` has no result rows with its current fingerprint yet" in texts(at.info)
    assert FAILING in texts(at.error)
    write_run(f.root, RunRecord(run_id=new_run_id(when), name="fake audit", started_at=when.isoformat(),
                                models={PASSING: ModelRun("fair-v9"), FAILING: ModelRun("biased-v9")}))
    for page in ("Overview", "Model", "Image explorer", "Compare"):
        at = run(monkeypatch, f.root, page)
        assert "no result rows with the models' current fingerprints yet" in texts(at.info)


def test_missing_or_wrong_results_directories(monkeypatch, tmp_path):
    at = run(monkeypatch, None)
    assert "No results directory given" in texts(at.error)
    at = run(monkeypatch, tmp_path)
    assert "is not a cueaudit results directory" in texts(at.error)
    at = run(monkeypatch, tmp_path / "nope")
    assert "is not a cueaudit results directory" in texts(at.error)


def test_results_of_only_error_rows(monkeypatch, tmp_path):
    root = write_errors_only(tmp_path)
    at = run(monkeypatch, root)
    assert f"`{BROKEN}` has no scored images (4 error rows)" in texts(at.warning)
    at = run(monkeypatch, root, "Model")
    assert "has no scored images: all 4 rows are errors" in texts(at.warning)
    at = run(monkeypatch, root, "Image explorer")
    assert f"`{BROKEN}` has no scored images yet (4 error rows)" in texts(at.info)
    at = run(monkeypatch, root, "Compare")
    assert "comparing needs two" in texts(at.info)


# ---------------------------------------------------------------------------------------------
# Model page


def test_model_page_opens_on_the_failing_model(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Model")
    assert at.selectbox(key="model_page_model").value == FAILING
    assert f"### {FAILING}: :red[**FAIL**]" in texts(at.markdown)
    classes = frame_with(at, "object lift CI").set_index("class")
    assert list(classes.index) == ["(all)", "disk", "square", "triangle"]
    assert classes.loc["(all)", "status"] == "FAIL" and (classes["object share"] < 0.05).all()
    # class-level saliency and class-level BG-Gap only warn; the model-level findings fail
    assert (classes.loc[["disk", "square", "triangle"], "status"] == "WARN").all()
    assert "background_reliance WARN" in classes.loc["square", "flags"]
    assert "counterfactual_flip WARN" in classes.loc["square", "flags"]
    expanders = [e.label for e in at.expander]
    assert "WARN · Background reliance (CAM mass off the object)" in expanders
    md = texts(at.markdown)
    assert "Example images: `" in md
    assert len(at.get("vega_lite_chart")) == 3  # distribution, co-occurrence, background colour
    assert "accuracy, colour conflicting" in [m.label for m in at.metric]


def test_model_page_for_the_passing_and_the_broken_model(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Model")
    at.selectbox(key="model_page_model").set_value(PASSING).run()
    assert not at.exception
    classes = frame_with(at, "object lift CI").set_index("class")
    assert (classes.loc[["disk", "square", "triangle"], "status"] == "PASS").all()
    at.selectbox(key="model_page_model").set_value(BROKEN).run()
    assert not at.exception
    assert "has no scored images: all 6 rows are errors" in texts(at.warning)


def test_a_checks_images_open_in_the_explorer(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Model")
    at.button(key="goto_background_reliance").click().run()
    assert not at.exception
    assert at.session_state["page"] == "Image explorer"
    assert at.selectbox(key="explorer_check").value == "background_reliance"
    verdict = evaluate(fake_results.root)
    failing = next(m for m in verdict.models if m.model == FAILING)
    named = data.check_images(failing.checks)["background_reliance"]
    assert f"; {len(named)} images" in at.number_input(key="explorer_page").label
    assert {im.captions[0].split(" · ")[0] for im in at.image} <= set(named)


# ---------------------------------------------------------------------------------------------
# Image explorer


def test_explorer_gallery_is_worst_first_and_opens_an_image(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    assert at.selectbox(key="explorer_model").value == FAILING
    assert len(at.image) == 12  # one page
    g, total = data.gallery(data.load_frame(fake_results.root), FAILING)
    worst = str(g.image_id.iloc[0])
    assert at.image[0].captions[0].startswith(f"{worst} · ")
    assert f"Page (of 8; {total} images" in at.number_input(key="explorer_page").label
    at.button(key=f"open_{worst}").click().run()
    assert not at.exception
    assert at.selectbox(key="explorer_selected").value == worst
    assert worst in texts(at.subheader)
    panels = [c for im in at.image[:3] for c in im.captions]
    assert panels == ["original", "object outline", "Grad-CAM overlay"]
    details = frame_with(at, "field").set_index("field")
    assert details.loc["image_id", "value"] == worst
    assert details.loc["label", "value"] in ("disk", "square", "triangle")


def test_explorer_filters(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    at.radio(key="explorer_correct").set_value("wrong").run()
    assert "18 images" in at.number_input(key="explorer_page").label
    assert all("✗" in im.captions[0] for im in at.image)
    at.multiselect(key="explorer_labels").set_value(["disk"]).run()
    assert "6 images" in at.number_input(key="explorer_page").label
    assert all(im.captions[0].startswith("disk/") for im in at.image)
    at.number_input(key="explorer_page").set_value(1).run()
    assert not at.exception


def test_explorer_refuses_images_outside_the_dataset_root(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_model=PASSING)
    for crafted in CRAFTED:
        at.selectbox(key="explorer_selected").set_value(crafted).run()
        assert not at.exception
        warn = texts(at.warning)
        assert "Image not shown" in warn and "outside the audited dataset roots" in warn, warn


# ---------------------------------------------------------------------------------------------
# Compare


def test_compare_two_models_side_by_side(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Compare")
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == (FAILING, PASSING)
    d = frame_with(at, "Δ object share").set_index("class")
    assert (d["Δ object lift"] > 0.5).all() and d.loc["disk", "n A"] == 30
    assert len(at.image) == 8  # 4 images x 2 models
    first_a, first_b = at.image[0].captions[0], at.image[1].captions[0]
    assert first_a.split(" · ")[0] == first_b.split(" · ")[0]  # the same image on both sides
    at.selectbox(key="compare_image").set_value("disk/disk_000.png").run()
    assert len(at.image) == 2 and not at.exception


def test_compare_one_model_at_two_runs(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Compare", compare_mode="one model at two runs",
             compare_run_model=PASSING)
    assert (at.selectbox(key="compare_run_a").value, at.selectbox(key="compare_run_b").value) == tuple(
        fake_results.runs)
    d = frame_with(at, "Δ object share").set_index("class")
    assert d.loc["(all)", "Δ object share"] == pytest.approx(0.08, abs=0.01)  # the retrained model
    assert len(at.image) == 8
    at.selectbox(key="compare_run_model").set_value(FAILING).run()
    assert not at.exception
    assert "the same stored row on both sides" in texts(at.caption)
