"""The cueaudit dashboard: a Streamlit app over a results directory (``cueaudit dashboard RESULTS``).

It reads Parquet through :mod:`pipeline.schema` and judges through :mod:`pipeline.gate`; it imports
neither torch nor Ray. Importing this package imports nothing heavy (not even Streamlit).
"""

from __future__ import annotations

ENV_RESULTS = "CUEAUDIT_RESULTS"
"""Results directory when the app is not started by ``streamlit run app.py -- RESULTS`` (tests)."""
ENV_POLICY = "CUEAUDIT_POLICY"
"""Optional gate.yaml for the verdicts, as ``--policy`` does."""
