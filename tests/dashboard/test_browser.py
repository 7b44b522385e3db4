"""The real thing: ``cueaudit dashboard`` served over HTTP, driven by headless Chromium (Playwright).

The failing model is found from the results' own verdict (``pipeline.gate.evaluate``), so the same
test runs over the fakes and over the synthetic demo's results. Screenshots of every page go to
``test-artifacts/dashboard/``.
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

import pytest

from dashboard import data
from pipeline.gate import evaluate

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
    h = page.evaluate("() => (document.querySelector('[data-testid=stMain]') || document.body).scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(900, min(int(h) + 40, 8000))})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 900})


def _goto(page, name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click()
    _settle(page)


def test_dashboard_in_a_browser(dashboard_results: Path, artifacts_dir: Path, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    verdict = evaluate(dashboard_results)
    failing = [m.model for m in verdict.models if m.status == "FAIL"]
    assert failing, "the results must hold a failing model for this test"
    model = failing[0]
    g, _ = data.gallery(data.load_frame(dashboard_results), model)
    worst = str(g.image_id.iloc[0])
    out = artifacts_dir / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([_cueaudit(), "dashboard", str(dashboard_results), "--port", str(port)],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(proc, url, log)
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
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
                assert flagged.count() >= 1 and "FAIL" in flagged.first.inner_text()
                _shot(page, out / "overview.png")

                _goto(page, "Model")
                page.get_by_text("Per class", exact=True).wait_for()
                assert page.get_by_test_id("stMarkdown").filter(has_text=f"{model}: FAIL").count() >= 1
                _shot(page, out / "model.png")

                _goto(page, "Image explorer")
                page.get_by_text("Open image", exact=True).wait_for()
                first_caption = page.get_by_test_id("stImage").first.inner_text()
                assert first_caption.startswith(worst), first_caption
                page.get_by_test_id("stButton").filter(has_text="Open").first.click()
                _settle(page)
                page.get_by_text("Grad-CAM overlay", exact=True).wait_for()
                assert page.get_by_test_id("stHeading").filter(has_text=worst).count() >= 1
                _shot(page, out / "explorer.png")

                _goto(page, "Compare")
                page.get_by_text("Per class (Δ = B - A)").wait_for()
                _shot(page, out / "compare.png")
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
    for name in ("overview", "model", "explorer", "compare"):
        assert (out / f"{name}.png").stat().st_size > 10_000
