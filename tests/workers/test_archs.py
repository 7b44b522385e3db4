"""The benchmark architectures: shapes, CAM layers, and a planted-cue small ViT judged by the gate."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from workers.archs import ARCHS, tiny_vit
from workers.cam import GradCAM, candidate_layers


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_arch_builds_and_classifies(arch):
    torch.manual_seed(0)
    net = ARCHS.get(arch)(num_classes=4).eval()
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_tiny_vit_cam_is_on_the_patch_grid_at_the_last_attention_input():
    torch.manual_seed(0)
    net = tiny_vit(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cam = GradCAM(net)
    res = cam(x)
    info = cam.layer_for(x)
    assert (res.layer, info.layout, info.prefix, res.maps.shape) == ("blocks.1.norm1", "tokens", 1, (2, 8, 8))
    # A random net's map can be all negative for one class (ReLU'd to zero); the patch tokens get
    # gradient, so some class has a non-zero map.
    assert max(float(cam(x, targets=c).maps.amax()) for c in range(3)) > 0
    assert "patch_embed" in {c.module for c in candidate_layers(net, x)}  # the ResNet tokenizer's 8x8 map
    with pytest.raises(ValueError, match="img_size a multiple of 8"):
        tiny_vit(img_size=60)


@pytest.mark.slow
@pytest.mark.ray
def test_planted_cue_small_vit_biased_fails_the_gate_and_fair_passes(tmp_path):
    """The background-colour cue at 64 px, patch 8: a ViT trained where the background follows the
    label must fail the default gate with the check of that cue; one trained on decorrelated
    backgrounds must pass (seed 0; the thresholds were calibrated on other seeds)."""
    from cuebench.demo import EXPECTED_CHECK, synthetic_config
    from cuebench.synth import AUDIT_CORRELATION, SynthConfig, generate
    from cuebench.train import train_cached
    from pipeline.config import parse_config
    from pipeline.gate import evaluate
    from pipeline.run import run_audit
    from tests.conftest import CACHE

    cue = "background"
    models = {v: train_cached(CACHE / "models", cue, v, seed=0, arch="tiny_vit") for v in ("biased", "fair")}
    audit = generate(CACHE / "data" / "vit" / cue, SynthConfig(cue=cue, n=300, correlation=AUDIT_CORRELATION, seed=0,
                                                               split="audit"))
    raw = synthetic_config(cue, audit, models, tmp_path / "results", layer="auto")
    import ray

    # address="local": a fresh cluster even when another `ray start` cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    finally:
        ray.shutdown()
    verdict = evaluate(tmp_path / "results")
    status = {m.model: {r.check: r.status for r in m.checks} for m in verdict.models}
    assert status[f"{cue}-biased"][EXPECTED_CHECK[cue]] == "FAIL", status
    assert "FAIL" not in status[f"{cue}-fair"].values() and "ERROR" not in status[f"{cue}-fair"].values(), status
