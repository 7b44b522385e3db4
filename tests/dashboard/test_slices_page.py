"""The Slices page over results with planted embeddings: the judged table, a slice's image grid,
the spuriosity ranking; results without embeddings say how to get them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.dashboard.test_app import frame_with, run, texts
from tests.pipeline.test_slices import _planted, _results


def _with_images(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        p = dataset / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    frame, x, _ = _planted(seed=4)
    return _results(tmp_path / "results", {"biased": (frame, x)}, images, str(dataset))


def test_slices_page_lists_judged_slices_and_draws_one(monkeypatch, tmp_path):
    root = _with_images(tmp_path)
    at = run(monkeypatch, root, page="Slices")
    table = frame_with(at, "what sets it apart")
    assert table.status.iloc[0] == "FAIL" and "stamp=yes" in table["what sets it apart"].iloc[0]
    assert at.selectbox(key="slices_selected").value == table.slice.iloc[0]
    assert "slice_gap" in texts(at.markdown) and "held out" in texts(at.markdown)
    assert len(at.image) == 12, "the grid shows the slice's first 12 images"
    first = table.slice.iloc[0].split("#")[0]
    assert all(f"{first} → other" in im.captions[0] for im in at.image[:3]), "misclassified members first"
    spur = frame_with(at, "ranked by")
    assert set(spur["ranked by"]) == {"off_object_mass", "slice_direction"}


def test_slices_page_without_embeddings_says_how_to_get_them(monkeypatch, fake_results):
    at = run(monkeypatch, fake_results.root, page="Slices")
    assert "embedding" in texts(at.info)
