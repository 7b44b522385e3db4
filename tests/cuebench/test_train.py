"""Ground-truth models of the synthetic benchmark: the biased one collapses when its cue is reversed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from common.registry import RegistryError
from cuebench.synth import CUES, SynthConfig, generate
from cuebench.train import TrainError, evaluate, spec_from_yaml, train, train_cached
from workers.archs import ARCHS, tiny_resnet
from workers.models import ModelSpec, Preprocess, load_model


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("tiny"), SynthConfig(cue="background", n=48, correlation=0.6, split="train"))


def test_tiny_resnet_maps_at_64px() -> None:
    model = tiny_resnet(num_classes=3).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name in ("layer1", "layer2", "layer3", "layer4")]
    try:
        out = model(torch.zeros(2, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 3)
    assert shapes == {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8), "layer4": (2, 128, 4, 4)}
    assert isinstance(model.avgpool, torch.nn.AdaptiveAvgPool2d) and model.fc.out_features == 3


def test_tiny_resnet_is_a_model_source_with_deterministic_init() -> None:
    assert "tiny_resnet" in ARCHS
    spec = ModelSpec(name="t", source="python:workers.archs:tiny_resnet", num_classes=4, kwargs=(("widths", (8, 8, 16, 16)),),
                     preprocess=Preprocess(size=(64, 64), resize="resize", crop_pct=1.0))
    torch.manual_seed(0)
    a = load_model(spec).module.state_dict()
    torch.manual_seed(0)
    b = load_model(spec).module.state_dict()
    assert a["fc.weight"].shape == (4, 16)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_a_loadable_model(tiny_data: Path, tmp_path: Path) -> None:
    result = train(tiny_data, tmp_path / "m", epochs=1, batch_size=16, val_dir=tiny_data)
    assert result.classes == ("disk", "square", "triangle") and len(result.epochs) == 1
    raw = yaml.safe_load(result.spec_path.read_text())
    assert raw["source"] == "python:workers.archs:tiny_resnet" and raw["weights"] == "model.pt"
    assert raw["preprocess"] == {"size": [64, 64], "resize": "resize", "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    spec = spec_from_yaml(result.spec_path)
    assert Path(spec.weights).is_file() and spec.classes == result.classes and spec.num_classes == 3
    loaded = load_model(spec)
    assert loaded.classes == result.classes and loaded.preprocess.size == (64, 64)
    state = torch.load(result.weights, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in loaded.module.state_dict().items())
    acc = evaluate(result.model_dir, tiny_data)
    assert acc == pytest.approx(result.val_acc)
    record = json.loads((result.model_dir / "train.json").read_text())
    assert record["classes"] == list(result.classes) and record["params"]["seed"] == 0 and record["wall_s"] > 0
    # Same seed, same weights.
    again = train(tiny_data, tmp_path / "m2", epochs=1, batch_size=16)
    assert all(torch.equal(state[k], v) for k, v in torch.load(again.weights, weights_only=True).items())


def test_train_cached_hits_the_second_time(model_cache: Path) -> None:
    kw = {"train_n": 30, "epochs": 1, "batch_size": 16}
    first = train_cached(model_cache, "watermark", "fair", seed=5, **kw)
    mtime = (first / "model.pt").stat().st_mtime_ns
    t0 = time.perf_counter()
    second = train_cached(model_cache, "watermark", "fair", seed=5, **kw)
    assert second == first and time.perf_counter() - t0 < 1.0
    assert (second / "model.pt").stat().st_mtime_ns == mtime
    assert train_cached(model_cache, "watermark", "fair", seed=5, **{**kw, "epochs": 2}) != first
    assert not [p for p in model_cache.iterdir() if p.name.startswith(".tmp")]
    assert (first / "data" / "synth.json").is_file() and (first / "cache.json").is_file()


def test_train_cached_renders_the_scenario_options(model_cache: Path) -> None:
    kw = {"train_n": 24, "epochs": 1, "batch_size": 8}
    plain = train_cached(model_cache, "texture", "biased", seed=6, **kw)
    soft = train_cached(model_cache, "texture", "biased", seed=6, salience=0.5, backdrop="mixed", edge_blur=1.0, **kw)
    assert soft != plain
    cfg = json.loads((soft / "data" / "synth.json").read_text())["config"]
    assert (cfg["salience"], cfg["backdrop"], cfg["edge_blur"]) == (0.5, "mixed", 1.0)
    assert not {"salience", "backdrop", "edge_blur"} & set(json.loads((plain / "data" / "synth.json").read_text())["config"])


def test_bad_arguments_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="valid names: tiny_resnet"):
        train(tiny_data, tmp_path, arch="resnet9000")
    with pytest.raises(TrainError, match="model name"):
        train(tiny_data, tmp_path, name="my model")
    with pytest.raises(TrainError, match="images"):
        train(tmp_path / "nowhere", tmp_path)
    with pytest.raises(TrainError, match="variant"):
        train_cached(tmp_path, "background", "unfair")  # type: ignore[arg-type]


def test_spec_from_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_text("source: python:workers.archs:tiny_resnet\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"model\.yaml.*epochs"):
        spec_from_yaml(bad)


@pytest.mark.slow
@pytest.mark.parametrize("cue", CUES.names())
def test_biased_collapses_on_reversed_cue_and_fair_does_not(cue: str, model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp(f"eval-{cue}")
    aligned = generate(data / "aligned", SynthConfig(cue=cue, n=150, correlation=1.0, seed=11, split="aligned"))
    reversed_ = generate(data / "reversed", SynthConfig(cue=cue, n=150, correlation=0.0, seed=11, split="cue_reversed"))
    biased = train_cached(model_cache, cue, "biased")
    fair = train_cached(model_cache, cue, "fair")
    acc = {(v, s): evaluate(m, d) for v, m in (("biased", biased), ("fair", fair)) for s, d in (("aligned", aligned), ("reversed", reversed_))}
    assert acc["biased", "aligned"] > 0.9, acc
    assert acc["biased", "reversed"] < 0.5, acc
    assert acc["fair", "aligned"] > 0.9 and acc["fair", "reversed"] > 0.9, acc
