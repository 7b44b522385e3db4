"""Turning per-image Parquet facts into per-model and per-class evidence (no torch, no Ray)."""
