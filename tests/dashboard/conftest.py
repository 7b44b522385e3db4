"""Results directories for the dashboard tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard.fakes import FakeResults, write_results


@pytest.fixture(scope="session")
def fake_results(tmp_path_factory: pytest.TempPathFactory) -> FakeResults:
    """Two finished runs, a failing, a passing and an all-errors model (see tests/dashboard/fakes.py)."""
    return write_results(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="session")
def dashboard_results(demo_results: Path) -> Path:
    """The browser test drives the synthetic demo's results; it finds the failing model from the
    results' own verdict."""
    return demo_results
