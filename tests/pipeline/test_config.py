"""audit.yaml validation: errors name the file, the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_config

BASE = {
    "name": "demo",
    "output": "results",
    "dataset": {"format": "folder", "root": "data"},
    "models": [{"name": "lite0", "source": "efficientnet-lite0"}],
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_minimal_config_and_relative_paths(tmp_path):
    loaded = load_config(_write(tmp_path, BASE))
    assert loaded.output == tmp_path / "results"
    assert loaded.config.target == "predicted" and loaded.config.execution.batch_size == 32
    (spec,) = loaded.model_specs()
    assert spec.source == "efficientnet-lite0" and spec.weights is None
    assert loaded.layer_for(loaded.config.models[0]) is None


@pytest.mark.parametrize(
    "patch, expect",
    [
        ({"models": [{"name": "x", "source": "torchvison:resnet18"}]}, r"models\.0\.source: unknown model source 'torchvison:resnet18'"),
        ({"target": "truth"}, r"target: Input should be 'predicted' or 'label' \(got 'truth'\)"),
        ({"dataset": {"format": "yolo", "root": "x"}}, r"dataset: .*'coco', 'voc'"),
        ({"execution": {"batch_size": 0}}, r"execution\.batch_size: Input should be greater than or equal to 1 \(got 0\)"),
        ({"models": []}, r"models: Tuple should have at least 1 item"),
        ({"models": [{"name": "a", "source": "efficientnet-lite0"}, {"name": "a", "source": "efficientnet-lite0"}]},
         r"model names must be unique, repeated: \['a'\]"),
        ({"extra_key": 1}, r"extra_key: Extra inputs are not permitted"),
        ({"models": [{"name": "x", "source": "torchvision:"}]}, r"needs a name after 'torchvision:'"),
        ({"execution": {"retry_errors": ["truncated", "timeout"]}},
         r"execution\.retry_errors: unknown error kind\(s\) \['timeout'\]; valid: missing, unreadable"),
        ({"execution": {"lock_timeout": 0}}, r"execution\.lock_timeout: Input should be greater than 0"),
    ],
)
def test_errors_name_file_field_and_value(tmp_path, patch, expect):
    p = _write(tmp_path, {**BASE, **patch})
    with pytest.raises(ConfigError, match=expect) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_config(["a"])  # type: ignore[arg-type]


def test_spec_file_is_inlined_and_overridable(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m/model.yaml").write_text(yaml.safe_dump({
        "name": "biased", "source": "python:workers.archs:tiny_resnet", "weights": "model.pt",
        "num_classes": 3, "classes": ["a", "b", "c"], "preprocess": {"size": [64, 64], "resize": "resize"},
    }))
    cfg = {**BASE, "models": [{"spec": "m/model.yaml", "name": "b2", "layer": "layer3"}]}
    loaded = load_config(_write(tmp_path, cfg))
    (spec,) = loaded.model_specs()
    assert spec.name == "b2" and spec.weights == str(tmp_path / "m/model.pt")
    assert spec.classes == ("a", "b", "c") and spec.preprocess.size == (64, 64)
    assert loaded.layer_for(loaded.config.models[0]) == "layer3"
    bad = {**BASE, "models": [{"spec": "m/none.yaml"}]}
    with pytest.raises(ConfigError, match=r"models\.0\.spec: file .*none.yaml.* does not exist"):
        load_config(_write(tmp_path, bad))


def test_imagenet_and_file_classes(tmp_path):
    (tmp_path / "classes.txt").write_text("x\ny\n\n")
    cfg = {**BASE, "models": [
        {"name": "a", "source": "torchvision:resnet18", "weights": "w.pt", "classes": "imagenet"},
        {"name": "b", "source": "torchvision:resnet18", "weights": "w.pt", "classes": "classes.txt"},
    ]}
    a, b = load_config(_write(tmp_path, cfg)).model_specs()
    assert len(a.classes) == 1000 and a.classes[0] == "tench"
    assert b.classes == ("x", "y")


def test_model_keys_for_modern_models(tmp_path):
    model = {"name": "v", "source": "timm:vit_tiny_patch16_224", "weights": "w.safetensors", "layout": "tokens",
             "prefix_tokens": 1, "fine_layer": "none", "label_map": {"cat": ["tabby", 282], "dog": 151},
             "preprocess": {"size": 64}, "kwargs": {"img_size": 64}}
    loaded = load_config(_write(tmp_path, {**BASE, "models": [model]}))
    (m,) = loaded.config.models
    assert m.label_map_items() == (("cat", ("tabby", 282)), ("dog", (151,)))
    assert loaded.fine_layer_for(m) is None and loaded.config.fine_layer == "auto"
    (spec,) = loaded.model_specs()
    # The one key given overrides timm's pretrained_cfg; the rest (bicubic, crop 0.9, mean 0.5) stays.
    assert spec.preprocess.size == (64, 64) and spec.preprocess.interpolation == "bicubic"
    assert spec.preprocess.crop_pct == 0.9 and spec.preprocess.mean == (0.5, 0.5, 0.5)
    builtin = load_config(_write(tmp_path, {**BASE, "models": [{**BASE["models"][0], "label_map": "imagenet9"}]}))
    items = dict(builtin.config.models[0].label_map_items())
    assert len(items) == 9 and len(items["dog"]) == 116
    with pytest.raises(ConfigError, match="unknown label map 'imagenet10'; built-in maps: imagenet9"):
        load_config(_write(tmp_path, {**BASE, "models": [{**BASE["models"][0], "label_map": "imagenet10"}]}))
    with pytest.raises(ConfigError, match="layout"):
        load_config(_write(tmp_path, {**BASE, "models": [{**BASE["models"][0], "layout": "nwhc"}]}))
    hf = load_config(_write(tmp_path, {**BASE, "models": [{"name": "h", "source": "hf:models/vit"}]}))
    assert hf.model_specs()[0].source == f"hf:{tmp_path / 'models' / 'vit'}"


def test_both_maps_is_stored_but_not_fingerprinted(tmp_path):
    from pipeline.run import plan_models

    tiny = {"name": "tiny", "source": "python:tests.factories:tiny_cnn", "num_classes": 3}
    cfg = {**BASE, "models": [tiny]}
    (off,) = plan_models(load_config(_write(tmp_path, cfg)))
    (on,) = plan_models(load_config(_write(tmp_path, {**cfg, "both_maps_when_wrong": True})))
    assert (off.opts.both_maps, on.opts.both_maps) == (False, True)
    # storing a second map changes no number: results scored either way stay current
    assert on.fingerprint == off.fingerprint
    (label,) = plan_models(load_config(_write(tmp_path, {**cfg, "target": "label"})))
    assert label.fingerprint != off.fingerprint


def test_error_kinds_are_every_kind_the_workers_write(tmp_path):
    from common.decode import IMAGE_ERROR_KINDS, MASK_ERROR_KINDS
    from pipeline.schema import ERROR_KINDS, TRANSIENT_ERROR_KINDS
    from workers.faults import INTERNAL

    # unknown_label and no_label come from workers.score; internal from workers.faults
    assert set(ERROR_KINDS) == {*IMAGE_ERROR_KINDS, *MASK_ERROR_KINDS, "unknown_label", "no_label", INTERNAL}
    assert set(TRANSIENT_ERROR_KINDS) <= set(IMAGE_ERROR_KINDS)
    assert load_config(_write(tmp_path, BASE)).config.execution.retry_errors == (
        "missing", "unreadable", "truncated", "empty_file")
