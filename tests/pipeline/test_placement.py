"""The fingerprint holds what changes the numbers: the actors' device, resolved precision and decoder."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ExecutionConfig, parse_config
from pipeline.run import Placement, placed, placement, plan_models, static_placement
from workers.score import resolve_autocast

MODEL = {"name": "tiny", "source": "python:tests.factories:tiny_cnn", "num_classes": 3, "classes": ["a", "b", "c"],
         "preprocess": {"size": 32, "resize": "resize"}, "fine_layer": "none"}


@pytest.mark.parametrize(("exe", "gpus", "want"), [
    ({}, 1.0, Placement("cuda", "bf16", "device")),
    ({}, 0.0, Placement("cpu", "none", "cpu")),
    ({}, 0.5, Placement("cuda", "bf16", "device")),
    ({"autocast": "none"}, 1.0, Placement("cuda", "none", "device")),
    ({"autocast": "fp16", "decode": "cpu"}, 1.0, Placement("cuda", "fp16", "cpu")),
    ({"decode": "device"}, 0.0, Placement("cpu", "none", "device")),
])
def test_placement_resolves_auto_from_the_actors_gpus(exe, gpus, want):
    got = placement(ExecutionConfig(**exe), gpus)
    assert got == want
    # the same rule the worker applies when it resolves `auto` itself
    assert resolve_autocast(ExecutionConfig(**exe).autocast, torch.device(got.device)) == \
        {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[got.autocast]
    assert got.precision == {"none": "fp32"}.get(got.autocast, got.autocast)


def test_static_placement_only_when_the_config_forces_cpu_actors():
    assert static_placement(ExecutionConfig(device="cpu")) == Placement("cpu", "none", "cpu")
    assert static_placement(ExecutionConfig(gpus_per_worker=0)) == Placement("cpu", "none", "cpu")
    assert static_placement(ExecutionConfig()) is None  # the cluster's GPUs decide


def test_fingerprints_differ_for_precision_device_and_decoder(tmp_path):
    raw = {"name": "t", "output": str(tmp_path / "out"), "dataset": {"format": "folder", "root": str(tmp_path)},
           "models": [MODEL]}
    loaded = parse_config(raw, tmp_path / "audit.yaml")
    base = plan_models(loaded)
    fps = {}
    for p in (Placement("cuda", "bf16", "device"), Placement("cuda", "none", "device"),
              Placement("cuda", "bf16", "cpu"), Placement("cpu", "none", "cpu"), Placement("cpu", "none", "device")):
        (plan,) = placed(base, loaded, p)
        assert (plan.opts.device, plan.opts.autocast, plan.placement) == (p.device, p.autocast, p)
        fps[p] = plan.fingerprint
    assert len(set(fps.values())) == 5  # bf16 vs fp32, GPU vs CPU, device vs CPU decode: never one fingerprint
    compiled = parse_config({**raw, "execution": {"compile": True}}, tmp_path / "audit.yaml")
    assert plan_models(compiled)[0].fingerprint == base[0].fingerprint  # compilation does not change numbers
