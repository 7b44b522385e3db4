"""The gate on the synthetic benchmark's ground truth, its exit codes and its report files.

Models trained where a cue follows the label must fail the default policy, naming the check of
their cue; models trained on decorrelated data, and the real pretrained efficientnet-lite0 on real
photos, must pass. The thresholds were calibrated on seeds 101-103 (CALIBRATION.md); these
models use seed 0.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cuebench.demo import CUES, EXPECTED_CHECK
from pipeline.cli import app
from pipeline.gate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.ray]
runner = CliRunner()


@pytest.fixture(scope="module")
def verdict(demo_results):
    return evaluate(demo_results)


def _model(verdict, name):
    (m,) = [m for m in verdict.models if m.model == name]
    return m


@pytest.mark.parametrize("cue", CUES)
def test_biased_model_fails_with_the_check_of_its_cue(verdict, cue):
    m = _model(verdict, f"{cue}-biased")
    status = {r.check: r.status for r in m.checks}
    assert m.status == "FAIL"
    assert status[EXPECTED_CHECK[cue]] == "FAIL", status
    assert status["counterfactual_flip"] == "FAIL", status  # the control-corrected swap sees every cue
    failing = next(r for r in m.checks if r.check == EXPECTED_CHECK[cue])
    assert failing.examples, "a flag carries example image ids"


@pytest.mark.parametrize("cue", CUES)
def test_fair_model_passes(verdict, cue):
    m = _model(verdict, f"{cue}-fair")
    # WARN passes the gate: class-level saliency may warn (a class recognised by what it lacks)
    assert m.status in ("PASS", "WARN"), {r.check: (r.status, r.message) for r in m.checks}
    assert not [r for r in m.checks if r.status in ("FAIL", "ERROR")]
    model_level = [f for r in m.checks for f in r.findings if f.scope == "model" and f.judged]
    assert all(f.status in ("PASS", "SKIP") for f in model_level), [(f.statistic, f.estimate) for f in model_level]


def test_biased_models_put_clearly_less_mass_on_objects(verdict):
    for cue in CUES:
        b = _model(verdict, f"{cue}-biased").evidence.overall.object_lift
        f = _model(verdict, f"{cue}-fair").evidence.overall.object_lift
        assert b.hi < f.lo, (cue, b, f)


def test_cooccurrence_saliency_is_judged(verdict):
    """CAM mass on the signalling object beyond its area: the biased model's is clearly above the fail
    threshold, the fair model's below zero (saliency thresholds set on seed 101, checked here)."""
    for variant, want in (("biased", "FAIL"), ("fair", "PASS")):
        r = next(r for r in _model(verdict, f"cooccur-{variant}").checks if r.check == "cooccurrence_cue")
        (sal,) = [f for f in r.findings if f.statistic == "cue_object_lift"]
        assert sal.judged and sal.status == want, (variant, sal.estimate)


def test_real_pretrained_model_on_real_photos_passes(verdict):
    m = _model(verdict, "efficientnet-lite0")
    status = {r.check: (r.status, r.message) for r in m.checks}
    assert m.status in ("PASS", "WARN") and not [r for r in m.checks if r.failed], status
    # Its one missile photo, in six views, loses the label on other classes' backgrounds: a class-level
    # BG-Gap, which only warns. Nothing else may warn.
    warned = [(r.check, f.scope) for r in m.checks for f in r.findings if f.status == "WARN"]
    assert set(warned) <= {("counterfactual_flip", "class:missile")}, warned
    assert m.evidence.overall.object_lift.lo > 0.2  # it looks at the annotated objects
    assert m.evidence.feature_layer == "_swish@1"


def test_gate_exit_codes_and_report_files(demo_results, tmp_path):
    j, x, md = tmp_path / "v.json", tmp_path / "v.xml", tmp_path / "v.md"
    r = runner.invoke(app, ["gate", str(demo_results), "--json", str(j), "--junit", str(x), "--markdown", str(md)])
    assert r.exit_code == 1, r.output
    assert "gate failed" in r.output
    doc = json.loads(j.read_text())
    assert doc["passed"] is False and {m["model"] for m in doc["models"]} >= {"background-biased", "background-fair"}
    suites = ET.parse(x).getroot()
    assert int(suites.get("failures")) >= 6
    biased = next(s for s in suites if s.get("name") == "cueaudit.background-biased")
    assert any(tc.find("failure") is not None and tc.get("name") == "background_colour_cue" for tc in biased)
    text = md.read_text()
    assert "❌ **cueaudit gate failed**" in text and "`background-biased`" in text
    ok = runner.invoke(app, ["gate", str(demo_results), "--model", "background-fair", "--model", "efficientnet-lite0", "-q"])
    assert ok.exit_code == 0, ok.output


def test_usage_and_data_errors_exit_2(demo_results, tmp_path):
    r = runner.invoke(app, ["gate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a cueaudit results directory" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"checks": {"background_reliance": {"fail": "high"}}}))
    r = runner.invoke(app, ["gate", str(demo_results), "--policy", str(bad)])
    assert r.exit_code == 2 and "checks.background_reliance.fail" in r.output
    r = runner.invoke(app, ["gate", str(demo_results), "--model", "nosuchmodel"])
    assert r.exit_code == 2 and "nosuchmodel" in r.output
    r = runner.invoke(app, ["gate", str(demo_results), "--baseline", "nosuchrun"])
    assert r.exit_code == 2 and "nosuchrun" in r.output


def test_policy_severity_turns_failures_into_warnings(demo_results, tmp_path):
    checks = ("background_reliance", "background_colour_cue", "cooccurrence_cue", "counterfactual_flip", "attribute_gap",
              "slice_gap")
    pol = tmp_path / "warn.yaml"
    pol.write_text(yaml.safe_dump({"checks": {c: {"severity": "warn"} for c in checks}}))
    r = runner.invoke(app, ["gate", str(demo_results), "--policy", str(pol), "-q"])
    assert r.exit_code == 0, r.output
    assert "WARN" in r.output


def test_report_prints_the_evidence(demo_results):
    r = runner.invoke(app, ["report", str(demo_results), "--model", "cooccur-biased"])
    assert r.exit_code == 0
    assert "cooccurrence_cue" in r.output and "object lift" in r.output and "FAIL" in r.output


def test_dataset_report_sees_the_planted_cues(demo_results, tmp_path):
    cfg = Path(demo_results).parents[0]
    configs = sorted((Path(__file__).resolve().parents[2] / ".cueaudit" / "test-cache" / "configs").glob("*.yaml"))
    assert configs, cfg
    by = {p.stem: p for p in configs}
    out = tmp_path / "ds.json"
    r = runner.invoke(app, ["dataset-report", str(by["background"]), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "colour shortcut is available" in r.output
    r = runner.invoke(app, ["dataset-report", str(by["cooccur"])])
    assert "co-occurrence shortcut is available" in r.output and "colour shortcut" not in r.output


def test_demo_command_exits_with_the_gates_code(demo_results, tmp_path):
    from tests.conftest import CACHE

    out = tmp_path / "results"
    shutil.copytree(demo_results, out)  # resumed: nothing left to score, the gate judges the same results
    r = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--work", str(CACHE)])
    expected = 0 if evaluate(out).passed else 1
    assert expected == 1  # the biased models fail on purpose
    assert r.exit_code == expected, r.output


def test_saliency_is_judged_at_the_finer_layer_when_the_automatic_one_is_coarse(demo_results, tmp_path):
    """The automatic layer of the synthetic models (layer4, 4x4) gives the objects ~2.6 cells: the audit
    adds layer3 (8x8) and background_reliance judges there, so the watermark-reading model fails on
    saliency instead of only warning, and the fair one passes instead of warning."""
    from cuebench.demo import CLASSES
    from cuebench.train import train_cached
    from pipeline.config import parse_config
    from pipeline.run import ray_session, run_audit
    from tests.conftest import CACHE

    audit = CACHE / "data" / "watermark" / "audit" / "manifest.csv"
    models = [{"spec": str(train_cached(CACHE / "models", "watermark", v, seed=0, classes=CLASSES) / "model.yaml"),
               "name": f"watermark-{v}"} for v in ("biased", "fair")]  # the demo's models (cached)
    raw = {"name": "fine", "output": str(tmp_path / "results"), "dataset": {"format": "manifest", "path": str(audit)},
           "models": models, "execution": {"batch_size": 64}}
    with ray_session(None, None):
        s = run_audit(parse_config(raw, tmp_path / "fine.yaml"), progress=False)
    assert {m.fine_layer for m in s.models.values()} == {"layer3"}, s.models
    v = evaluate(tmp_path / "results")
    for variant, want in (("biased", "FAIL"), ("fair", "PASS")):
        m = _model(v, f"watermark-{variant}")
        assert m.evidence.feature_layer == "layer4" and m.evidence.fine.layer == "layer3"
        assert m.evidence.median_object_cells < 4 <= m.evidence.fine.median_object_cells
        br = next(r for r in m.checks if r.check == "background_reliance")
        assert br.status == want, (variant, br.message)
        judged = [f for f in br.findings if f.scope == "model" and f.judged]
        assert judged and "finer layer layer3" in judged[0].note

