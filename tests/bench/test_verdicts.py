"""The gate's own accuracy benchmark: its rules, its documents, and the quick grid against the targets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import calibration_doc as doc_mod
from bench.verdicts import (
    CALIBRATION_SEEDS,
    FAMILIES,
    FULL,
    QUICK,
    REPORT_SEEDS,
    STRENGTHS,
    Built,
    Scenario,
    audit_config,
    truth,
)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cueaudit" / "test-cache" / "verdicts"


def _row(truth_: str, status: str, checks: dict[str, str], cue_checks: tuple[str, ...] = ("counterfactual_flip",),
         family: str = "texture", strength: str = "weak") -> dict:
    return {"model": f"m{len(checks)}{status}", "family": family, "strength": strength, "truth": truth_,
            "status": status, "cue_checks": list(cue_checks), "drop": 0.0, "acc_aligned": 1.0, "acc_reversed": 1.0,
            "checks": {k: {"status": v, "message": "", "direction": "above", "warn": 0.1, "fail": 0.2, "findings": []}
                       for k, v in checks.items()}}


def test_wilson_interval_matches_the_closed_forms() -> None:
    z2 = 1.959964**2
    assert doc_mod.wilson(0, 6) == pytest.approx((0.0, z2 / (6 + z2)))  # k = 0: upper bound z^2 / (n + z^2)
    assert doc_mod.wilson(6, 6) == pytest.approx((6 / (6 + z2), 1.0))
    lo, hi = doc_mod.wilson(18, 36)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(0.3106, abs=2e-4)
    assert all(math.isnan(x) for x in doc_mod.wilson(0, 0))


def test_truth_rule_boundaries() -> None:
    assert truth(1.0, 0.70) == "biased" and truth(1.0, 0.71) == "ambiguous"
    assert truth(0.97, 0.92) == "fair" and truth(0.97, 0.91) == "ambiguous"
    assert truth(0.79, 0.79) == "ambiguous"  # no cue effect, but too inaccurate to call fair
    assert truth(0.90, 0.95) == "fair"  # better on reversed cues: noise, not bias


def test_rates_count_only_the_checks_that_name_the_cue() -> None:
    rows = [
        _row("biased", "FAIL", {"counterfactual_flip": "FAIL"}),
        _row("biased", "FAIL", {"counterfactual_flip": "PASS", "background_reliance": "FAIL"}),  # fails, wrong check
        _row("biased", "FAIL", {"counterfactual_flip": "ERROR"}),  # an ERROR fails the gate too
        _row("fair", "WARN", {"counterfactual_flip": "WARN"}),
        _row("fair", "FAIL", {"attribute_gap": "FAIL"}),
        _row("fair", "PASS", {"counterfactual_flip": "PASS"}),
        _row("ambiguous", "FAIL", {"counterfactual_flip": "FAIL"}),
    ]
    s = doc_mod.summarise(rows)
    assert (s["tpr"].k, s["tpr"].n) == (2, 3)
    assert (s["biased_any_fail"].k, s["fpr"].k, s["fpr"].n, s["fair_warn"].k, s["ambiguous"]) == (3, 1, 3, 1, 1)
    assert not doc_mod.meets_targets(s)
    assert doc_mod.summary_json(rows)["tpr"]["value"] == pytest.approx(2 / 3)


def test_the_grid_is_the_one_promised() -> None:
    from cuebench.synth import CUES
    from pipeline.analysis.checks import CHECKS

    assert len(FULL.families) >= 4 and FULL.strengths == STRENGTHS and len(FULL.seeds) == 3
    assert {"background", "texture", "cooccur", "watermark"} <= set(FAMILIES)
    for f in FAMILIES.values():
        assert f.cue in CUES and set(f.checks) <= set(CHECKS.names()) and set(f.salience) == set(STRENGTHS)
        assert all(0 < v <= 1 for v in f.salience.values())
        assert f.salience["weak"] < f.salience["medium"] < f.salience["strong"]
    # Judge the judge on data it was not tuned on: report, calibration, tests (0-2) and the old calibration
    # (101-103) use disjoint seeds.
    assert not set(REPORT_SEEDS) & set(CALIBRATION_SEEDS)
    assert not (set(REPORT_SEEDS) | set(CALIBRATION_SEEDS)) & ({0, 1, 2} | {101, 102, 103})
    assert len(QUICK.scenarios()) == len(QUICK.families) == 4 and set(QUICK.seeds) <= set(REPORT_SEEDS)
    assert FULL.backdrop == "mixed" and FULL.edge_blur > 0


def test_audits_see_only_the_public_manifest(tmp_path: Path) -> None:
    from cuebench.synth import PUBLIC_MANIFEST, SynthConfig, generate

    audit = generate(tmp_path / "audit", SynthConfig(cue="watermark", n=6, correlation=0.8, salience=0.9))
    b = Built(Scenario("watermark", "weak", 301), {"biased": tmp_path / "b", "fair": tmp_path / "f"}, {}, audit, {})
    raw = audit_config(b, tmp_path / "results")
    assert raw["dataset"] == {"format": "manifest", "path": str(audit / PUBLIC_MANIFEST)}
    assert [m["name"] for m in raw["models"]] == ["watermark-weak-s301-biased", "watermark-weak-s301-fair"]
    assert raw["counterfactual"] == {"enabled": True} and "layer" not in raw  # the defaults a new user gets
    text = (audit / PUBLIC_MANIFEST).read_text()
    assert "watermark" in text and "cue_aligned" not in text and "cue_class" not in text


def test_documents_are_generated_from_the_committed_results() -> None:
    doc = doc_mod.load(ROOT / doc_mod.JSON_NAME)
    assert "verdicts" in doc and "calibration" in doc, "run python -m bench.verdicts and bench.calibrate"
    readme = (ROOT / "README.md").read_text()
    assert doc_mod.readme_block(readme) == doc_mod.readme_table(doc), "run `python -m bench.verdicts --render`"
    assert (ROOT / "CALIBRATION.md").read_text() == doc_mod.render_markdown(doc), "run `python -m bench.verdicts --render`"
    for key in ("verdicts", "calibration"):
        c = doc[key]
        assert c["summary"] == json.loads(json.dumps(doc_mod.summary_json(c["models"]))), key
    assert set(doc["verdicts"]["seeds"]) == set(REPORT_SEEDS) and set(doc["calibration"]["seeds"]) == set(CALIBRATION_SEEDS)


# ---------------------------------------------------------------------------------------------
# The quick grid, end to end


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python -m bench.verdicts --quick`` through its real entry point; datasets and models are cached
    under .cueaudit/test-cache/verdicts, so only the first run trains."""
    out = tmp_path_factory.mktemp("verdicts") / "quick.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench.verdicts", "--quick", "--json", str(out), "--work", str(CACHE)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())["verdicts"]


@pytest.mark.slow
@pytest.mark.ray
def test_quick_grid_builds_audits_and_verifies_every_model(quick: dict) -> None:
    rows = quick["models"]
    assert {r["family"] for r in rows} == set(QUICK.families) and len(rows) == 2 * len(QUICK.families)
    assert all(r["checks"] and r["status"] in ("PASS", "WARN", "FAIL", "ERROR") for r in rows)
    # Ground truth is measured: trained-biased models collapse on reversed cues, trained-fair ones do not.
    assert sum(r["truth"] == r["variant"] for r in rows) >= len(rows) - 1, [(r["model"], r["drop"]) for r in rows]
    sizes = [n for a in quick["audits"].values() for n in a["conflicting_per_class"].values()]
    assert min(sizes) >= 3 and max(sizes) <= 20, sizes  # small minority groups, as in real audit sets


@pytest.mark.slow
@pytest.mark.ray
def test_quick_grid_meets_the_targets(quick: dict) -> None:
    s = doc_mod.summarise(quick["models"])
    assert s["biased"] >= 3 and s["fair"] >= 3, s
    assert s["tpr"].value >= doc_mod.TPR_TARGET, s["tpr"].fmt()
    assert s["fpr"].value <= doc_mod.FPR_TARGET, s["fpr"].fmt()
