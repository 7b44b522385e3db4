"""Model sources, weights checks, preprocessing defaults and fingerprints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from workers.models import (
    LITE0_PREPROCESS, SOURCES, ModelLoadError, ModelSpec, Preprocess, load_model, read_state_dict, spec_fingerprint,
)


def test_sources_registry():
    assert SOURCES.names() == ["efficientnet-lite0", "python", "timm", "torchvision"]
    with pytest.raises(KeyError, match="unknown model source 'onnx'; valid names"):
        load_model(ModelSpec(name="x", source="onnx:model.onnx"))


def test_efficientnet_lite0_is_real_and_offline():
    m = load_model(ModelSpec(name="lite0", source="efficientnet-lite0"))
    assert len(m.classes) == 1000 and m.classes[285] == "Egyptian cat"
    assert m.preprocess == LITE0_PREPROCESS  # inputs (x - 127) / 128
    assert not m.module.training and not any(p.requires_grad for p in m.module.parameters())


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "r18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), p)
    return p


def test_torchvision_with_local_weights(r18_weights):
    spec = ModelSpec(name="r", source="torchvision:resnet18", weights=str(r18_weights), num_classes=4,
                     classes=("a", "b", "c", "d"), preprocess=Preprocess(size=(64, 64)))
    m = load_model(spec)
    assert m.classes == ("a", "b", "c", "d")
    state = read_state_dict(r18_weights)
    assert torch.equal(m.module.fc.weight, state["fc.weight"])


def test_weights_errors_name_file_and_mismatch(tmp_path, r18_weights):
    with pytest.raises(ModelLoadError, match="needs `weights:`"):
        load_model(ModelSpec(name="r", source="torchvision:resnet18"))
    with pytest.raises(ModelLoadError, match=r"weights file '.*nope.pt' does not exist"):
        load_model(ModelSpec(name="r", source="torchvision:resnet18", weights=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelLoadError, match=r"fc.weight: file \(4, 512\) vs model \(1000, 512\).*check num_classes"):
        load_model(ModelSpec(name="r", source="torchvision:resnet18", weights=str(r18_weights)))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.pt' cannot be read"):
        load_model(ModelSpec(name="r", source="torchvision:resnet18", weights=str(tmp_path / "junk.pt")))
    with pytest.raises(ModelLoadError, match="unknown torchvision architecture 'resnet19'"):
        load_model(ModelSpec(name="r", source="torchvision:resnet19", weights=str(r18_weights)))
    with pytest.raises(ModelLoadError, match="4 outputs"):
        load_model(ModelSpec(name="r", source="torchvision:resnet18", weights=str(r18_weights), num_classes=4,
                             classes=("a", "b"), preprocess=Preprocess(size=(64, 64))))


def test_checkpoint_wrappers_and_ddp_prefix(tmp_path, r18_weights):
    state = torch.load(r18_weights, weights_only=True)
    p = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, p)
    m = load_model(ModelSpec(name="r", source="torchvision:resnet18", weights=str(p), num_classes=4,
                             preprocess=Preprocess(size=(64, 64))))
    assert torch.equal(m.module.fc.bias, state["fc.bias"])


def test_python_factory():
    m = load_model(ModelSpec(name="t", source="python:tests.factories:tiny_cnn", num_classes=5,
                             preprocess=Preprocess(size=(32, 32))))
    assert m.classes == tuple(str(i) for i in range(5))
    with pytest.raises(ModelLoadError, match="returned object, not an nn.Module"):
        load_model(ModelSpec(name="t", source="python:tests.factories:not_a_module"))
    with pytest.raises(ModelLoadError, match="has no callable 'nope'"):
        load_model(ModelSpec(name="t", source="python:tests.factories:nope"))
    with pytest.raises(ModelLoadError, match="must be 'python:package.module:function'"):
        load_model(ModelSpec(name="t", source="python:tests.factories"))


def test_timm_with_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    p = tmp_path / "t.pt"
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=3).state_dict(), p)
    m = load_model(ModelSpec(name="t", source="timm:resnet10t", weights=str(p), num_classes=3,
                             preprocess=Preprocess(size=(64, 64))))
    assert len(m.classes) == 3


def test_fingerprint_tracks_what_changes_outputs(tmp_path, r18_weights):
    base = ModelSpec(name="r", source="torchvision:resnet18", weights=str(r18_weights), num_classes=4)
    fp = spec_fingerprint(base)
    assert spec_fingerprint(dataclasses.replace(base, name="renamed")) == fp
    assert spec_fingerprint(dataclasses.replace(base, preprocess=Preprocess(size=(128, 128)))) != fp
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), other)
    assert spec_fingerprint(dataclasses.replace(base, weights=str(other))) != fp


def test_preprocess_validation():
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocess(crop_pct=0)
    with pytest.raises(ValueError, match="resize"):
        Preprocess(resize="stretch")  # type: ignore[arg-type]
