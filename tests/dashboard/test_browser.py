"""The real thing: ``cueaudit dashboard`` served over HTTP, driven by headless Chromium (Playwright).

The failing model is found from the results' own verdict (``pipeline.gate.evaluate``), so the same
test runs over the fakes and over the synthetic demo's results. It filters, sorts, marks an image,
reloads and finds the mark, exports the selection as CSV and reads it back. Screenshots of every page
go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from dashboard import data
from dashboard.explore import Filters, model_view, select
from pipeline.gate import evaluate
from pipeline.triage import ReviewStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cueaudit() -> str:
    exe = Path(sys.executable).parent / "cueaudit"
    return str(exe) if exe.exists() else (shutil.which("cueaudit") or pytest.fail("no cueaudit executable"))


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cueaudit dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    pytest.fail(f"the dashboard did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _settle(page) -> None:
    """Wait until Streamlit has finished the rerun (its status widget disappears)."""
    page.wait_for_timeout(300)
    idle = "() => !document.querySelector('[data-testid=stStatusWidget]')"
    page.wait_for_function(idle, timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)


def _shot(page, path: Path) -> None:
    """Screenshot the whole page: Streamlit scrolls inside its main block, so grow the viewport to it."""
    page.evaluate("() => (document.querySelector('[data-testid=stMain]') || document.body).scrollTo(0, 0)")
    h = page.evaluate("() => (document.querySelector('[data-testid=stMain]') || document.body).scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(900, min(int(h) + 40, 8000))})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 900})


def _goto(page, name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click()
    _settle(page)


def _radio(page, label: str, option: str) -> None:
    page.get_by_test_id("stRadio").filter(has_text=label).get_by_text(option, exact=True).click()
    _settle(page)


def _choose(page, testid: str, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox / multiselect labelled ``label``."""
    page.get_by_test_id(testid).filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    _settle(page)


def _pages_label(page) -> str:
    return page.get_by_test_id("stNumberInput").filter(has_text="Page (of").inner_text()


def _captions(page) -> list[str]:
    """The gallery's captions in reading order (left to right, then down)."""
    page.get_by_test_id("stImage").filter(has_text=" · ").first.wait_for()
    boxes = page.get_by_test_id("stImage").evaluate_all(
        "els => els.map(e => [e.getBoundingClientRect().top, e.getBoundingClientRect().left, e.innerText])")
    return [t for _, _, t in sorted(boxes) if " · " in t]


def test_dashboard_in_a_browser(dashboard_results: Path, artifacts_dir: Path, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    verdict = evaluate(dashboard_results)
    failing = [m.model for m in verdict.models if m.status == "FAIL"]
    assert failing, "the results must hold a failing model for this test"
    model = failing[0]
    frame = data.load_frame(dashboard_results)
    view = model_view(frame, model)

    def ids(f: Filters) -> list[str]:
        return [str(x) for x in frame.image_id.to_numpy()[select(view, f)]]

    worst = ids(Filters())[0]
    wrong = ids(Filters(correct="wrong", sort="pred_score", descending=True))
    assert wrong, "the failing model must get some images wrong"
    out = artifacts_dir / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    db = tmp_path / "review.sqlite"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([_cueaudit(), "dashboard", str(dashboard_results), "--port", str(port),
                                 "--review-db", str(db)],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(proc, url, log)
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900}, accept_downloads=True)
            try:
                page = ctx.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url)
                # Overview: the failing model is called out as failing.
                page.get_by_text("Gate failed:").wait_for()
                _settle(page)
                gate = page.get_by_test_id("stAlert").filter(has_text="Gate failed:").inner_text()
                assert model in gate
                assert page.get_by_test_id("stMarkdown").filter(has_text=f"{model}: FAIL").count() >= 1
                flagged = page.get_by_test_id("stAlert").filter(has_text=f"{model} · ")
                assert any("FAIL" in flagged.nth(i).inner_text() for i in range(flagged.count()))
                _shot(page, out / "overview.png")

                _goto(page, "Model")
                page.get_by_text("Per class", exact=True).wait_for()
                assert page.get_by_test_id("stMarkdown").filter(has_text=f"{model}: FAIL").count() >= 1
                _shot(page, out / "model.png")

                _goto(page, "Image explorer")
                page.get_by_text("Open image", exact=True).wait_for()
                assert _captions(page)[0].startswith(worst), _captions(page)[0]
                page.get_by_test_id("stButton").filter(has_text="Open").first.click()
                _settle(page)
                page.get_by_text("Grad-CAM: ", exact=False).first.wait_for()
                assert page.get_by_test_id("stHeading").filter(has_text=worst).count() >= 1
                _choose(page, "stSelectbox", "Open image", "(none)")

                # filter (wrong predictions), sort (prediction score, descending)
                _radio(page, "Prediction", "wrong")
                assert "images, object share ascending" in _pages_label(page)
                assert f"; {len(wrong)} images" in _pages_label(page)
                _choose(page, "stSelectbox", "Sort by", "prediction score")
                page.get_by_text("Descending", exact=True).click()
                _settle(page)
                assert "prediction score descending" in _pages_label(page)
                shown = [c.split(" · ")[0] for c in _captions(page)]
                assert shown == wrong[:len(shown)], (shown, wrong[:12])

                # mark the most confidently wrong image, then reload and find the mark
                target = wrong[0]
                page.get_by_test_id("stButton").filter(has_text="Open").first.click()
                _settle(page)
                _radio(page, "Decision", "label error")
                page.get_by_test_id("stTextInput").filter(has_text="Note").locator("input").fill("checked in a browser")
                page.keyboard.press("Tab")
                _settle(page)
                page.get_by_test_id("stButton").filter(has_text="Save decision").click()
                _settle(page)
                page.get_by_text(f"{target} marked label error.").wait_for()
                _shot(page, out / "explorer.png")

                page.reload()
                page.get_by_text("Open image", exact=True).wait_for()
                _settle(page)
                _choose(page, "stMultiSelect", "Review", "label error")
                assert "; 1 images" in _pages_label(page)
                (card,) = _captions(page)
                assert card.startswith(target) and card.endswith("review: label error"), card

                # export the selection as CSV and read it back
                with page.expect_download() as dl:
                    page.get_by_test_id("stDownloadButton").filter(has_text="CSV").click()
                csv = tmp_path / "export.csv"
                dl.value.save_as(csv)
                table = pd.read_csv(csv)
                assert list(table.image_id) == [target] and table.review.tolist() == ["label_error"]
                want = frame[(frame.model == model) & (frame.image_id == target)].pred_score.iloc[0]
                assert table.pred_score.iloc[0] == pytest.approx(want, abs=1e-6)

                _goto(page, "Compare")
                page.get_by_text("Per class (Δ = B - A)").wait_for()
                _shot(page, out / "compare.png")

                _goto(page, "Review")
                page.get_by_text("Per model (current fingerprint)").wait_for()
                assert page.get_by_test_id("stDataFrame").count() >= 2
                _shot(page, out / "review.png")

                _goto(page, "Overview")  # the decision shows up in the overview
                page.get_by_test_id("stHeading").filter(has_text="Review").wait_for()
                assert page.get_by_test_id("stMarkdown").filter(has_text=f"{model}: images: 1 label error").count() == 1
            finally:
                ctx.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
    current = ReviewStore(db).current()
    assert list(zip(current.subject, current.decision, current.note, strict=True)) == [
        (target, "label_error", "checked in a browser")]
    for name in ("overview", "model", "explorer", "compare", "review"):
        assert (out / f"{name}.png").stat().st_size > 10_000
