"""Model sources, weights checks, preprocessing defaults and fingerprints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision

from workers.models import (
    LITE0_PREPROCESS,
    SOURCES,
    ModelLoadError,
    ModelSpec,
    Preprocess,
    load_model,
    read_state_dict,
    spec_fingerprint,
)


def test_sources_registry():
    assert SOURCES.names() == ["efficientnet-lite0", "hf", "python", "timm", "torchvision"]
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


# --- safetensors, save_pretrained folders, hub checkpoints, timm's pretrained_cfg ---------------


def _lite0_logits(m, x):
    with torch.no_grad():
        return m.module(x)


def test_efficientnet_lite0_as_safetensors_and_as_a_transformers_style_folder(tmp_path):
    from safetensors.torch import save_file

    ref = load_model(ModelSpec(name="lite0", source="efficientnet-lite0"))
    state = {k: v.contiguous() for k, v in ref.module.state_dict().items()}
    single = tmp_path / "lite0.safetensors"
    save_file(state, single)
    # A sharded save_pretrained folder: two shards and the index that maps every key to its shard.
    folder = tmp_path / "lite0-hf"
    folder.mkdir()
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, folder / name)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    want = _lite0_logits(ref, x)
    for weights in (single, folder):
        got = load_model(ModelSpec(name="lite0", source="efficientnet-lite0", weights=str(weights)))
        torch.testing.assert_close(_lite0_logits(got, x), want, rtol=0, atol=0)
        assert got.classes == ref.classes
    fp = spec_fingerprint(ModelSpec(name="a", source="efficientnet-lite0", weights=str(folder)))
    assert fp == spec_fingerprint(ModelSpec(name="b", source="efficientnet-lite0", weights=str(folder)))
    assert fp != spec_fingerprint(ModelSpec(name="a", source="efficientnet-lite0", weights=str(single)))


def test_weights_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="holds none of model.safetensors"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot be read as safetensors"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "missing.safetensors"}}')
    with pytest.raises(ModelLoadError, match="shards that do not exist"):
        read_state_dict(tmp_path)


def test_timm_preprocessing_comes_from_pretrained_cfg_unless_given(tmp_path):
    timm = pytest.importorskip("timm")
    kw = {"img_size": 64, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
    p = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **kw).state_dict(), p)
    spec = ModelSpec(name="v", source="timm:vit_tiny_patch16_224", weights=str(p), num_classes=3,
                     kwargs=tuple(sorted(kw.items())))
    m = load_model(spec)
    assert m.preprocess == Preprocess(size=(64, 64), resize="resize_crop", crop_pct=0.9, mean=(0.5,) * 3,
                                      std=(0.5,) * 3, interpolation="bicubic")
    own = Preprocess(size=(64, 64))
    assert load_model(dataclasses.replace(spec, preprocess=own)).preprocess == own
    assert spec_fingerprint(spec) != spec_fingerprint(dataclasses.replace(spec, preprocess=own))


@pytest.fixture(scope="module")
def hf_vit_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fish"},
                                 label2id={"cat": 0, "dog": 1, "fish": 2})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "vit"
    model.save_pretrained(folder)  # model.safetensors + config.json
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}, resample=3, image_mean=[0.5, 0.4, 0.3],
                                   image_std=[0.2, 0.2, 0.2]).save_pretrained(folder)
    return folder, model


def test_hf_source_logits_classes_and_preprocessing(hf_vit_dir):
    folder, model = hf_vit_dir
    assert (folder / "model.safetensors").is_file()
    m = load_model(ModelSpec(name="hfvit", source=f"hf:{folder}"))
    assert m.classes == ("cat", "dog", "fish")
    assert m.preprocess == Preprocess(size=(64, 64), resize="resize", crop_pct=1.0, mean=(0.5, 0.4, 0.3),
                                      std=(0.2, 0.2, 0.2), interpolation="bicubic")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(m.module(x), model(pixel_values=x).logits)
    from workers.cam import GradCAM

    cam = GradCAM(m.module)
    assert cam(x).maps.shape == (2, 8, 8) and cam.layer_for(x).layout == "tokens"
    with pytest.raises(ModelLoadError, match="config.json' does not exist"):
        load_model(ModelSpec(name="x", source=f"hf:{folder.parent / 'nope'}"))
    assert spec_fingerprint(ModelSpec(name="a", source=f"hf:{folder}")) == spec_fingerprint(
        ModelSpec(name="b", source=f"hf:{folder}"))


@pytest.mark.parametrize(("cfg", "want"), [
    ({"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
      "image_std": [0.229, 0.224, 0.225]},  # ConvNeXt
     Preprocess(size=(224, 224), resize="resize_crop", crop_pct=0.875, interpolation="bicubic")),
    ({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
      "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
     Preprocess(size=(224, 224), resize="resize_crop", crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3)),
])
def test_hf_image_processor_settings(cfg, want):
    from workers.models import hf_preprocess

    assert hf_preprocess(cfg) == want
