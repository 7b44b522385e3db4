"""One cue family end to end with the cue *not annotated*: the watermark audit set written without
attributes (the only place the synth names the watermark), audited on Ray with embeddings, gated
through the CLI. The biased model's slice_gap must fail on slices made of the cue-conflicting images
(the synth's ``cue_aligned``, kept aside); the fair model's must flag nothing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.slices import unannotated_manifest
from cuebench.demo import CLASSES
from cuebench.synth import AUDIT_CORRELATION, SynthConfig, generate
from cuebench.train import train_cached
from pipeline.analysis.frame import load_frame
from pipeline.analysis.slices import discover, load_embeddings
from pipeline.cli import app
from pipeline.config import GatePolicy, parse_config
from pipeline.gate import slice_options, stat_options
from pipeline.run import ray_session, run_audit
from tests.conftest import CACHE

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def watermark(tmp_path_factory):
    data = generate(CACHE / "data" / "watermark-slices",
                    SynthConfig(cue="watermark", n=300, correlation=AUDIT_CORRELATION, seed=0, split="audit",
                                classes=CLASSES))
    work = tmp_path_factory.mktemp("slices")
    truth = unannotated_manifest(data, work / "manifest.csv")
    models = [{"spec": str(train_cached(CACHE / "models", "watermark", v, seed=0, classes=CLASSES) / "model.yaml"),
               "name": v, "layer": "layer3"} for v in ("biased", "fair")]
    raw = {"name": "slices-e2e", "output": str(work / "results"), "execution": {"batch_size": 64},
           "dataset": {"format": "manifest", "path": str(work / "manifest.csv")}, "models": models}
    with ray_session(None, None):
        run_audit(parse_config(raw, work / "audit.yaml"), progress=False)
    return work / "results", pd.DataFrame.from_dict(truth, orient="index").rename_axis("image_id").reset_index()


def test_nothing_names_the_cue(watermark):
    results, _ = watermark
    frame = load_frame(results)
    assert not any(frame.attributes.map(len)) and not any(frame.other_areas.map(len))


def test_biased_fails_slice_gap_on_the_cue_conflicting_images_and_fair_flags_nothing(watermark, tmp_path):
    results, truth = watermark
    out = CliRunner().invoke(app, ["gate", str(results), "--json", str(tmp_path / "v.json"),
                                   "--markdown", str(tmp_path / "gate.md"), "-q"])
    assert out.exit_code == 1, out.output  # the biased model fails
    doc = json.loads((tmp_path / "v.json").read_text())
    checks = {m["model"]: {c["check"]: c for c in m["checks"]} for m in doc["models"]}
    assert checks["biased"]["attribute_gap"]["status"] == "SKIP"  # no attribute to group by
    assert checks["biased"]["slice_gap"]["status"] == "FAIL"
    assert not [f for f in checks["fair"]["slice_gap"]["findings"] if f["status"] in ("WARN", "FAIL")]
    assert "FAIL slice `" in (tmp_path / "gate.md").read_text()

    policy = GatePolicy()
    frame = load_frame(results)
    flagged = {f["scope"] for f in checks["biased"]["slice_gap"]["findings"] if f["status"] == "FAIL"}
    _, members = discover(frame[frame.model == "biased"], load_embeddings(results, "biased"), stat_options(policy),
                          slice_options(policy))
    m = members.merge(truth, on=["image_id", "label"])
    inside = m.slice.isin(flagged)
    conflicting = m.cue_aligned == "no"
    # The flagged slices are the planted cue's images: most of their members conflict with the
    # watermark, and they hold most of the conflicting images (bench/slices.py measures both).
    assert (conflicting & inside).sum() / inside.sum() > 0.5
    assert (conflicting & inside).sum() / conflicting.sum() > 0.5
