"""The dashboard runs in a slim image: it imports neither torch nor Ray."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

MODULES = ["dashboard", "dashboard.data", "dashboard.images", "dashboard.explore", "dashboard.export",
           "dashboard.views.common", "dashboard.views.overview", "dashboard.views.model",
           "dashboard.views.explorer", "dashboard.views.compare", "dashboard.views.review", "pipeline.triage"]


def test_dashboard_imports_neither_torch_nor_ray():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES)
            + "heavy = sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules)\n"
            + "assert not heavy, heavy\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_a_full_app_run_imports_neither_torch_nor_ray(fake_results):
    code = (
        "import sys\nfrom streamlit.testing.v1 import AppTest\n"
        "for page in ('Overview', 'Model', 'Image explorer', 'Compare', 'Review'):\n"
        "    at = AppTest.from_file('dashboard/app.py', default_timeout=60)\n"
        "    at.session_state['page'] = page\n"
        "    at.run()\n"
        "    assert not at.exception, [e.value for e in at.exception]\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\nprint('ok')"
    )
    env = {**os.environ, "CUEAUDIT_RESULTS": str(fake_results.root)}
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
