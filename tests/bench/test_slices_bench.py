"""bench.slices: the unannotated manifest hides the cue, AP is the reference formula, and ``--into``
replaces its own section only."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bench.slices import TITLE, _average_precision, into, unannotated_manifest
from cuebench.synth import SynthConfig, generate


def test_unannotated_manifest_drops_attributes_and_context_objects(tmp_path):
    data = generate(tmp_path / "d", SynthConfig(cue="cooccur", n=6, correlation=0.5, size=32))
    truth = unannotated_manifest(data, tmp_path / "m.csv")
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert set(rows[0]) == {"image_id", "image", "label", "objects"}
    assert all([o["category"] for o in json.loads(r["objects"])] == [r["label"]] for r in rows)
    assert {v["cue_aligned"] for v in truth.values()} <= {"yes", "no"} and len(truth) == 6


def test_average_precision_matches_the_formula():
    # ranks 1..4 hold relevant, not, relevant, not: AP = (1/1 + 2/3) / 2
    assert _average_precision(np.array([True, False, True, False]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(5 / 6)


def test_into_replaces_only_its_section(tmp_path):
    f = tmp_path / "CALIBRATION.md"
    f.write_text("# Calibration\n\n## Other\n\nkeep\n")
    into(f, f"{TITLE}\n\nfirst\n")
    into(f, f"{TITLE}\n\nsecond\n")
    text = f.read_text()
    assert text.count(TITLE) == 1 and "second" in text and "first" not in text and "keep" in text
    f.write_text(f"# C\n\n{TITLE}\n\nold\n\n## After\n\nstays\n")
    into(f, f"{TITLE}\n\nnew\n")
    assert f.read_text() == f"# C\n\n{TITLE}\n\nnew\n\n## After\n\nstays\n"
