"""bench.slices: the unannotated manifest hides the cue, AP is the reference formula, and ``--into``
replaces its own section only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bench.slices import BEGIN, END, SAVED, TITLE, _average_precision, into, table, unannotated_manifest
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


def test_into_fills_the_readme_markers_with_the_table(tmp_path):
    rows = [{"cue": "watermark", "seed": 1, "model": "watermark-biased", "variant": "biased", "found": True,
             "p_at_10": 1.0, "recall": 0.9, "precision": 0.8, "flagged": 3, "slice_gap": "FAIL",
             "attribute_gap": "SKIP", "seconds": 0.2, "flagged_conflicting": 9, "conflicting": 10,
             "flagged_members": 11}]
    f = tmp_path / "README.md"
    f.write_text(f"a\n{BEGIN}\nold\n{END}\nb\n")
    into(f, "ignored", rows)
    assert f.read_text() == f"a\n{BEGIN}\n{table(rows)}{END}\nb\n"


def test_readme_shows_the_saved_measurement():
    root = Path(__file__).resolve().parents[2]
    saved = json.loads((root / SAVED).read_text())
    block = (root / "README.md").read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == table(saved["rows"]).strip(), (
        "run `python -m bench.slices --from-json docs/slices-benchmark.json --into README.md`")
