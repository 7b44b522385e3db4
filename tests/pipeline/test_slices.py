"""Slice discovery on planted embeddings: found, judged on held-out images, described, deterministic;
noise flags nothing; spuriosity ranking exact on a small frame; the gate end to end without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.analysis.cues import StatOptions
from pipeline.analysis.slices import (
    EmbeddingTable,
    SliceOptions,
    discover,
    embedding_matrix,
    load_embeddings,
)
from pipeline.gate import evaluate, markdown
from pipeline.schema import PartWriter, conform

SO = StatOptions()


def _planted(n: int = 900, cue_rate: float = 0.3, cue_acc: float = 0.1, seed: int = 0, classes: int = 3,
             dims: int = 48) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Images of ``classes`` classes; a ``cue_rate`` share carry a feature (8 dimensions shifted) that
    nothing annotates except an attribute the analysis may use to *describe* the slice; the model is
    right on them with probability ``cue_acc``, on the others 0.97. Returns (frame, embeddings, cue)."""
    rng = np.random.default_rng(seed)
    labels = np.array([f"c{i}" for i in range(classes)])[rng.integers(0, classes, n)]
    cue = rng.random(n) < cue_rate
    x = rng.normal(size=(n, dims)) + 2.0
    x[cue, :8] += 3.0
    right = np.where(cue, rng.random(n) < cue_acc, rng.random(n) < 0.97)
    ids = np.array([f"img{i:05d}" for i in range(n)], dtype=object)
    frame = pd.DataFrame({
        "image_id": ids, "label": labels, "correct": right.astype(float), "scored": True,
        "pred": np.where(right, labels, "other"), "object_share": np.where(cue, 0.3, 0.6) + rng.normal(0, 0.05, n),
        "object_area": 0.15, "background_share": np.where(cue, 0.7, 0.4) + rng.normal(0, 0.05, n),
        "attributes": [{"stamp": "yes" if c else "no"} for c in cue], "other_areas": [{} for _ in range(n)],
        "bg_color": [np.array([100.0, 120.0, 140.0], np.float32)] * n,
    })
    return frame, x.astype(np.float16), cue


def test_a_planted_slice_is_found_judged_on_held_out_images_and_described():
    frame, x, cue = _planted()
    ev, members = discover(frame, EmbeddingTable(frame.image_id.to_numpy(), x, "embedding"), SO)
    assert ev.n == len(frame) and ev.classes == 3 and ev.dims == 48
    by_class = {}
    for s in ev.slices:
        by_class.setdefault(s.label, s)  # the first reported slice: largest fit-half gap
    assert sorted(by_class) == ["c0", "c1", "c2"]
    for s in by_class.values():
        inside = members.slice == s.scope
        assert cue[inside.to_numpy()].mean() > 0.9  # its members carry the cue
        assert s.gap.lo > 0.5 and s.gap.method == "newcombe"
        held = members[inside & members.held_out]
        assert s.held_out == len(held) and s.accuracy.n == len(held)  # accuracy on held-out images only
        assert any(d.startswith("stamp=yes") for d in s.description), s.description
        assert any(d.startswith("off-object CAM mass") for d in s.description)
        assert s.examples and set(s.examples) <= set(members[inside].image_id)
    assert 0.45 < members.held_out.mean() < 0.55


def test_held_out_outcomes_never_move_the_slices():
    """Changing whether the held-out images are right changes their accuracies, never the partition."""
    frame, x, _ = _planted(seed=1)
    emb = EmbeddingTable(frame.image_id.to_numpy(), x, "embedding")
    _, a = discover(frame, emb, SO)
    flipped = frame.copy()
    held = a.set_index("image_id").held_out.reindex(frame.image_id).to_numpy()
    flipped.loc[held, "correct"] = 1.0 - flipped.loc[held, "correct"]
    _, b = discover(flipped, emb, SO)
    assert (a.cluster.to_numpy() == b.cluster.to_numpy()).all()
    assert np.allclose(a.prob.to_numpy(), b.prob.to_numpy())


def test_deterministic_and_independent_of_row_order():
    frame, x, _ = _planted(seed=2)
    emb = EmbeddingTable(frame.image_id.to_numpy(), x, "embedding")
    ev1, m1 = discover(frame, emb, SO)
    order = np.random.default_rng(0).permutation(len(frame))
    ev2, m2 = discover(frame.iloc[order], EmbeddingTable(emb.ids[order], emb.matrix[order], "embedding"), SO)
    key = lambda ev: [(s.label, s.size, s.held_out, s.gap.counts) for s in ev.slices]
    assert key(ev1) == key(discover(frame, emb, SO)[0])  # same input, same slices
    # Another row order draws another PCA subsample only above 20,000 rows: here the same slices,
    # up to the components' numbering.
    assert sorted(x[:3] for x in key(ev1)) == sorted(x[:3] for x in key(ev2))
    assert m1.set_index("image_id").held_out.equals(m2.set_index("image_id").held_out.reindex(m1.image_id))


def test_noise_flags_nothing_across_many_classes(tmp_path):
    """Errors at random (no cue behind them): 40 classes, the correctness-aware mixture gathers each
    class's fit-half errors into a component, and its held-out images are as accurate as the rest."""
    frame, x, _ = _planted(n=4000, cue_rate=0.3, cue_acc=0.97, classes=40, seed=3)
    root = _results(tmp_path, {"m": (frame, x)})
    v = evaluate(root)
    r = {c.check: c for c in v.models[0].checks}["slice_gap"]
    assert v.models[0].evidence.slices.slices, "slices are reported (and tested) even without a cue"
    assert r.status in ("PASS", "SKIP") and not [f for f in r.findings if f.status in ("WARN", "FAIL")], r.message


def test_spuriosity_ranking_compares_top_and_bottom_quantiles_within_each_class():
    """One class of 20: off-object mass 0.00 .. 0.95; the two highest wrong, the rest right. At the
    10% quantile the top 2 are 0/2 right and the bottom 2 are 2/2: gap -1 with Newcombe's interval."""
    n = 20
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "label": "a", "scored": True,
                          "correct": [1.0] * (n - 2) + [0.0, 0.0], "pred": "a",
                          "background_share": np.arange(n) / n, "object_share": np.nan, "object_area": 0.2})
    x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float16)
    ev, _ = discover(frame, EmbeddingTable(frame.image_id.to_numpy(), x, "embedding"), SO)
    (sp,) = [s for s in ev.spuriosity if s.by == "off_object_mass"]
    assert (sp.label, sp.n, sp.top.counts, sp.bottom.counts) == ("a", 2, (0, 2), (2, 2))
    assert sp.gap.value == -1.0 and sp.gap.counts == (0, 2, 2, 2) and sp.gap.hi < 0


def test_embedding_matrix_reads_half_floats_and_refuses_mixed_lengths():
    col = pa.array([[1.0, 2.0], None, [3.0, 4.0]], type=pa.list_(pa.float16()))
    valid, m = embedding_matrix(col)
    assert valid.tolist() == [True, False, True] and m.dtype == np.float16 and m.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="different lengths"):
        embedding_matrix(pa.array([[1.0], [1.0, 2.0]], type=pa.list_(pa.float16())), "embedding_off")
    assert embedding_matrix(pa.array([None], type=pa.list_(pa.float16())))[1].shape == (0, 0)


def _results(root, models: dict[str, tuple[pd.DataFrame, np.ndarray]], images: list[str] | None = None,
             dataset_root: str | None = None):
    """Results of ``models`` through the real writer; rows point at ``images`` in turn when given."""
    for name, (frame, x) in models.items():
        paths = [images[i % len(images)] for i in range(len(frame))] if images else [None] * len(frame)
        cols = {"model": [name] * len(frame), "run_id": ["r1"] * len(frame), "image_id": list(frame.image_id),
                "path": paths, "dataset_root": [dataset_root] * len(frame), "model_fingerprint": ["f"] * len(frame),
                "label": list(frame.label), "pred": list(frame.pred), "correct": list(frame.correct > 0.5),
                "object_share": list(frame.object_share), "object_area": list(frame.object_area),
                "background_share": list(frame.background_share), "pred_score": [0.9] * len(frame),
                "attributes": [list(a.items()) for a in frame.attributes],
                "embedding": pa.ListArray.from_arrays(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32),
                                                      pa.array(x.ravel(), type=pa.float16()))}
        PartWriter(root, name, "r1").write(conform(cols))
    return root


def test_the_gate_fails_a_cue_it_was_never_told_about(tmp_path):
    """The planted cue, judged through the real gate: biased FAILs slice_gap (with the slice in the
    Markdown), fair passes; the stored float16 embeddings round-trip."""
    biased, xb, _ = _planted(seed=4)
    fair, xf, _ = _planted(seed=5, cue_acc=0.97)
    root = _results(tmp_path / "r", {"biased": (biased, xb), "fair": (fair, xf)})
    emb = load_embeddings(root, "biased")
    assert emb.matrix.dtype == np.float16 and emb.matrix.shape == (len(biased), 48)
    assert np.array_equal(emb.matrix[np.argsort(emb.ids)], xb[np.argsort(biased.image_id.to_numpy())])
    v = evaluate(root)
    status = {m.model: {c.check: c for c in m.checks}["slice_gap"] for m in v.models}
    assert status["biased"].status == "FAIL" and status["biased"].findings[0].scope == "model"
    assert status["fair"].status in ("PASS", "SKIP") and not [f for f in status["fair"].findings
                                                              if f.status in ("WARN", "FAIL")]
    md = markdown(v)
    assert "slice `c" in md and "what sets it apart" in md and "stamp=yes" in md
    assert SliceOptions().column == "embedding"


def test_mixture_matches_scikit_learn_without_the_correctness_term():
    """Two classes fitted in one padded batch: with gamma = 0 the EM is a diagonal Gaussian mixture,
    and on three separated blobs it finds scikit-learn's partition."""
    sklearn = pytest.importorskip("sklearn.mixture")
    from sklearn.metrics import adjusted_rand_score

    from pipeline.analysis.slices import _assign, _em, _pad, _Params

    rng = np.random.default_rng(0)
    blobs = [np.concatenate([rng.normal(m, 0.3, size=(n, 4)) for m, n in ((0, 60), (3, 40), (-3, 50))])
             for _ in range(2)]
    z = np.concatenate(blobs).astype(np.float32)
    groups = [np.arange(150), np.arange(150, 300)]
    zp, cp, wp = _pad(z, np.ones(len(z)), groups)
    params = _em(zp, cp, wp, np.array([3, 3]), SliceOptions(correctness_weight=0.0), seed=(0, 0))
    for j, g in enumerate(groups):
        mine = _Params(params.log_pi[j], params.mu[j], params.var[j], params.p_correct[j])
        ours, _ = _assign(z[g], mine)
        theirs = sklearn.GaussianMixture(3, covariance_type="diag", random_state=0).fit_predict(z[g])
        assert adjusted_rand_score(ours, theirs) == 1.0


def test_the_correctness_term_splits_what_the_embedding_cannot():
    """One blob, half of it wrong: without the correctness term the components ignore it; with
    Domino's weight a component is (almost) all errors on the fit half."""
    from pipeline.analysis.slices import _em, _pad

    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 4)).astype(np.float32)
    c = (np.arange(200) % 2).astype(np.float32)
    zp, cp, wp = _pad(z, c, [np.arange(200)])
    for gamma, purest in ((0.0, 0.7), (10.0, 0.95)):
        p = _em(zp, cp, wp, np.array([4]), SliceOptions(correctness_weight=gamma), seed=(0, 0))
        rate = p.p_correct[0][np.isfinite(p.log_pi[0])]
        extreme = np.maximum(rate, 1 - rate).max()
        assert (extreme > purest) if gamma else (extreme < purest), (gamma, rate)


def test_a_broken_search_is_the_checks_error_not_the_gates(tmp_path):
    """Embeddings of two lengths for one model cannot be clustered: slice_gap is ERROR (and the model
    with it), the other checks still run."""
    frame, x, _ = _planted(n=60, seed=6)
    root = _results(tmp_path, {"m": (frame.iloc[:30], x[:30, :48])})
    _results(tmp_path, {"m": (frame.iloc[30:], np.ascontiguousarray(x[30:, :40]))})
    v = evaluate(root)
    by = {c.check: c for c in v.models[0].checks}
    assert by["slice_gap"].status == "ERROR" and "different lengths" in by["slice_gap"].message
    assert by["attribute_gap"].status != "ERROR" and v.models[0].status == "FAIL"
