"""Every page rendered by Streamlit's AppTest over synthetic results: content, state, no exceptions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import ENV_RESULTS, data
from dashboard.explore import Filters, model_view, select
from pipeline.gate import evaluate
from pipeline.schema import ModelRun, RunRecord, new_run_id, write_run
from pipeline.triage import ENV_REVIEW_DB, ReviewStore
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


def _order(root, model: str, f: Filters | None = None) -> list[str]:
    f = f or Filters()
    frame = data.load_frame(root)
    return [str(x) for x in frame.image_id.to_numpy()[select(model_view(frame, model), f)]]


def test_explorer_gallery_is_worst_first_and_opens_an_image(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    assert at.selectbox(key="explorer_model").value == FAILING
    assert len(at.image) == 12  # one page
    order = _order(fake_results.root, FAILING)
    worst = order[0]
    assert at.image[0].captions[0].startswith(f"{worst} · ")
    assert f"Page (of 8; {len(order)} images, object share ascending)" in at.number_input(key="explorer_page").label
    at.button(key=f"open_{worst}").click().run()
    assert not at.exception
    assert at.selectbox(key="explorer_selected").value == worst
    assert worst in texts(at.subheader)
    panels = [c for im in at.image[:3] for c in im.captions]
    details = frame_with(at, "field").set_index("field")
    assert panels == ["original", "object outline", f"Grad-CAM: {details.loc['pred', 'value']} (prediction)"]
    assert details.loc["image_id", "value"] == worst
    assert details.loc["label", "value"] in ("disk", "square", "triangle")
    # the counterfactual it was scored on is rebuilt from the source image (the fakes record no donor id)
    cf = next(e for e in at.expander if e.label.startswith("Counterfactual images"))
    assert any("Mixed-Rand" in c.value and "not in these results" in c.value for c in cf.caption)


def test_explorer_filters(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    at.radio(key="explorer_correct").set_value("wrong").run()
    assert "18 images" in at.number_input(key="explorer_page").label
    assert all("✗" in im.captions[0] for im in at.image)
    at.multiselect(key="explorer_labels").set_value(["disk"]).run()
    assert "6 images" in at.number_input(key="explorer_page").label
    assert all(im.captions[0].startswith("disk/") for im in at.image)
    at.multiselect(key="explorer_preds").set_value(["square"]).run()  # disks on a square's background
    assert "6 images" in at.number_input(key="explorer_page").label
    at.multiselect(key="explorer_preds").set_value(["triangle"]).run()
    assert "No images of `biased` match these filters" in texts(at.info)
    at.multiselect(key="explorer_preds").set_value([]).run()
    at.radio(key="explorer_rows").set_value("errors").run()  # error rows are never "wrong"
    assert "No images of `biased` match" in texts(at.info)
    at.radio(key="explorer_correct").set_value("all").run()
    at.multiselect(key="explorer_labels").set_value([]).run()
    assert "2 images" in at.number_input(key="explorer_page").label
    assert not at.exception


def _shown(at: AppTest) -> list[str]:
    """The gallery's image ids in reading order (AppTest lists the 3 columns one after another)."""
    ids = [im.captions[0].split(" · ")[0] for im in at.image]
    per_col = [ids[sum(len(ids[i::3]) for i in range(c)):][:len(range(c, len(ids), 3))] for c in range(3)]
    return [per_col[i % 3][i // 3] for i in range(len(ids))]


def test_explorer_sorts_by_any_column(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    at.selectbox(key="explorer_sort").set_value("pred_score").run()
    at.toggle(key="explorer_desc").set_value(True).run()
    want = _order(fake_results.root, FAILING, Filters(sort="pred_score", descending=True))
    assert "prediction score descending" in at.number_input(key="explorer_page").label
    assert _shown(at) == want[:12]
    at.number_input(key="explorer_page").set_value(8).run()
    assert _shown(at) == want[84:]
    at.selectbox(key="explorer_sort").set_value("image_id").run()
    assert at.image[0].captions[0].startswith("triangle/triangle_029.png")  # descending still on


def test_explorer_range_sliders_flips_and_attributes(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_model=PASSING)
    at.multiselect(key="explorer_more").set_value(["object_share", "cf_rand_flip", "attr:source"]).run()
    assert not at.exception
    slider = at.slider(key="explorer_range_object_share")
    lo, hi = slider.value
    mid = round((lo + hi) / 2, 4)
    slider.set_range(lo, mid).run()
    lo2, hi2 = at.slider(key="explorer_range_object_share").value
    want = _order(fake_results.root, PASSING, Filters.make(ranges={"object_share": (lo2, hi2)}))
    assert 0 < len(want) < 92 and f"{len(want)} images" in at.number_input(key="explorer_page").label
    at.multiselect(key="explorer_cat_attr:source").set_value(["a"]).run()
    want = _order(fake_results.root, PASSING, Filters.make({"attr:source": ["a"]}, {"object_share": (lo2, hi2)}))
    assert f"{len(want)} images" in at.number_input(key="explorer_page").label
    at.multiselect(key="explorer_cat_cf_rand_flip").set_value(["flipped"]).run()  # the fair model does not flip
    assert "No images of `fair` match these filters" in texts(at.info)


def test_explorer_refuses_images_outside_the_dataset_root(monkeypatch, fake_results):
    for crafted in CRAFTED:
        at = run(monkeypatch, fake_results.root, "Image explorer", explorer_model=PASSING, explorer_selected=crafted)
        warn = texts(at.warning)
        assert "Image not shown" in warn and "outside the audited dataset roots" in warn, warn


def test_mask_files_beside_the_images_are_outlined(monkeypatch, fake_results):
    # disk_003's object is a mask file in masks/ beside the image root (fakes: i % 4 == 3)
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_selected="disk/disk_003.png")
    notes = texts(at.caption)
    assert "outline not drawn" not in notes and "disk/disk_003.png" in texts(at.subheader)


def test_overlay_colormap_and_opacity_are_sidebar_controls(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, "Image explorer")
    assert at.radio(key="overlay_cmap").value == "viridis" and at.slider(key="overlay_alpha").value == 0.5
    at.radio(key="overlay_cmap").set_value("turbo").run()
    at.slider(key="overlay_alpha").set_value(0.8).run()
    assert not at.exception and len(at.image) == 12


# ---------------------------------------------------------------------------------------------
# Review


@pytest.fixture
def review_db(monkeypatch, tmp_path):
    db = tmp_path / "review.sqlite"
    monkeypatch.setenv(ENV_REVIEW_DB, str(db))
    return db


def test_marking_an_image_persists_across_sessions(monkeypatch, fake_results, review_db):
    worst = _order(fake_results.root, FAILING)[0]
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_selected=worst)
    assert f"Review of `{worst}`: not reviewed" in texts(at.markdown)
    at.radio(key="review_decision").set_value("label_error")
    at.text_input(key="review_note").input("the disk is a square")
    at.button(key="review_save").click().run()
    assert not at.exception
    assert f"`{worst}` marked label error." in texts(at.success)
    (row,) = ReviewStore(review_db).current().itertuples()
    assert (row.model, row.subject, row.fingerprint, row.decision, row.note) == (
        FAILING, worst, "biased-v1", "label_error", "the disk is a square")
    again = run(monkeypatch, fake_results.root, "Image explorer", explorer_selected=worst)  # a reload
    assert f"Review of `{worst}`: **label error**" in texts(again.markdown)
    assert again.image[3].captions[0].endswith("review: label error")  # the gallery card, after the 3 panels
    again.multiselect(key="explorer_review").set_value(["label_error"]).run()
    assert "1 images" in again.number_input(key="explorer_page").label
    again.multiselect(key="explorer_review").set_value(["unreviewed"]).run()
    assert "89 images" in again.number_input(key="explorer_page").label


def test_a_note_needs_text_and_clear_withdraws(monkeypatch, fake_results, review_db):
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_selected="disk/disk_001.png")
    at.radio(key="review_decision").set_value("note").run()
    at.button(key="review_save").click().run()
    assert "Not saved: a 'note' decision needs the note's text" in texts(at.error)
    at.radio(key="review_decision").set_value("fine").run()
    at.button(key="review_save").click().run()
    at.radio(key="review_decision").set_value("clear").run()
    at.button(key="review_save").click().run()
    assert "`disk/disk_001.png` withdrawn." in texts(at.success)
    assert ReviewStore(review_db).current().empty and len(ReviewStore(review_db).history()) == 2


def test_decisions_under_an_older_fingerprint_are_shown_as_such(monkeypatch, fake_results, review_db):
    ReviewStore(review_db).mark("image", PASSING, "disk/disk_002.png", "fair-v1", "confirmed_cue", reviewer="ann")
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_model=PASSING,
             explorer_selected="disk/disk_002.png")
    assert "under an older one (`fair-v1`" in texts(at.markdown) and "**confirmed cue**" in texts(at.markdown)
    at.multiselect(key="explorer_review").set_value([data.OLDER]).run()
    assert "1 images" in at.number_input(key="explorer_page").label
    assert at.image[3].captions[0].endswith("review: confirmed cue (older fingerprint)")
    page = run(monkeypatch, fake_results.root, "Review")
    table = frame_with(page, "fingerprint_state")
    assert list(table.fingerprint_state) == ["older (fair-v1)"]
    assert "1 decision made under an older fingerprint" in frame_with(page, "summary").summary.str.cat()


def test_marking_a_finding_shows_in_the_model_page_overview_and_review(monkeypatch, fake_results, review_db):
    at = run(monkeypatch, fake_results.root, "Model")
    key = "finding_counterfactual_flip"
    subjects = at.selectbox(key=f"{key}_subject").options
    assert subjects[0] == "the whole check" and "finding class:disk" in subjects
    at.selectbox(key=f"{key}_subject").set_value("counterfactual_flip/class:disk").run()
    at.radio(key=f"{key}_decision").set_value("confirmed_cue").run()
    at.button(key=f"{key}_save").click().run()
    assert not at.exception
    assert "`counterfactual_flip/class:disk` marked confirmed cue." in texts(at.success)
    tables = [d.value for d in at.dataframe if "review" in d.value.columns]
    marked = pd.concat(tables)[lambda t: t.review != ""]
    assert list(marked.scope) == ["class:disk"] and list(marked.review) == ["confirmed cue"]  # that check's only
    over = run(monkeypatch, fake_results.root)
    assert f"**{FAILING}**: 1 finding confirmed by review." in texts(over.markdown)
    page = run(monkeypatch, fake_results.root, "Review")
    assert frame_with(page, "findings confirmed").set_index("model").loc[FAILING, "findings confirmed"] == 1


def test_review_page_opens_a_reviewed_image_in_the_explorer(monkeypatch, fake_results, review_db):
    ReviewStore(review_db).mark("image", FAILING, "square/square_004.png", "biased-v1", "fine")
    at = run(monkeypatch, fake_results.root, "Review")
    at.toggle(key="review_history").set_value(True).run()
    assert len(frame_with(at, "fingerprint_state")) == 1
    at.button(key="review_goto").click().run()
    assert at.session_state["page"] == "Image explorer"
    assert "square/square_004.png" in texts(at.subheader)


def test_a_store_that_cannot_be_written_is_named(monkeypatch, fake_results, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(ENV_REVIEW_DB, str(tmp_path / "file" / "review.sqlite"))
    at = run(monkeypatch, fake_results.root, "Image explorer", explorer_selected="disk/disk_001.png")
    at.button(key="review_save").click().run()
    assert "Not saved: review database" in texts(at.error) and "set CUEAUDIT_REVIEW_DB" in texts(at.error)
    page = run(monkeypatch, fake_results.root, "Review")
    assert "No decisions yet" in texts(page.info)


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
