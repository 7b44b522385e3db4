"""Cues nobody annotated: slice discovery on the model's own embeddings, and spuriosity rankings.

Every other check needs the cue named in advance (masks, context categories, attributes). Here the
workers' per-image embeddings at the CAM layer (:mod:`workers.embed`) stand in for the annotation:
images that share an unannotated cue (a watermark, a texture) share features, and when the model
leans on the cue they share its mistakes too.

**Slices** (Domino, Eyuboglu et al. 2022). Per class, a Gaussian mixture with diagonal covariances
is fitted to the embeddings (reduced by one global PCA) *jointly with the model's correctness*::

    log p(z, c | k) = log N(z; mu_k, diag var_k) + gamma * log Bernoulli(c; p_k)

so components gather images that look alike *and* are right or wrong alike (``gamma``: Domino's
weight on the prediction term, 10 in its experiments). Two things keep the reported numbers
honest: the mixture is fitted on a seeded half of each class (the *fit half*, by a hash of the
image id), and every image, the other half included, is assigned to a component by its embedding
alone, ``p(k | z)``; a slice's accuracy, and its gap to the rest of its class, are then measured on
the *held-out half*, whose correctness never entered the fit. The gap ``accuracy(rest of the class)
- accuracy(slice)`` gets Newcombe's interval and is judged by the ``slice_gap`` check as one Holm
family over every reported slice of every class. Per class, the ``max_slices`` components with the
largest fit-half gap (ranked by its Newcombe lower bound, which discounts tiny components) are
reported. Each slice is described by what the audit already has: attribute values, co-occurring
categories, background colour, object area, off-object CAM mass and the predictions it gets.

**Spuriosity ranking** (Moayeri et al. 2023, "Spuriosity Rankings"). Within each class, images are
ranked by their off-object CAM mass (``background_share``, else ``1 - object_share``) and, for
classes with a slice, by the slice's direction (the projection of the held-out embeddings on the
slice mean minus the class mean). The *spuriosity gap* is accuracy(top quantile) - accuracy(bottom
quantile) with Newcombe's interval: the model does better where the ranked feature is strongest
when positive, worse when negative. It is context (INFO), not judged.

Deterministic for a seed; vectorised over images (mixtures are fitted for chunks of classes at once
on padded arrays; nothing loops over rows in Python), and the fit uses at most ``max_fit`` images
per class, so a million rows cost seconds.

>>> ev, members = discover(frame, load_embeddings("results", "resnet50"), StatOptions())  # doctest: +SKIP
>>> [(s.label, s.gap.fmt(), s.description[:2]) for s in ev.slices[:1]]                      # doctest: +SKIP
[('square', '0.912 [0.757, 0.969] (n=23)', ['predicted triangle: 21 of 23 errors', ...])]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.analysis.cues import StatOptions, _entries, bg_colours
from pipeline.analysis.stats import (
    NAN,
    Estimate,
    newcombe_bounds,
    rate_diff_from_counts,
    rate_from_counts,
    z_of,
)
from pipeline.schema import read_results

log = logging.getLogger(__name__)

EMBEDDING_COLUMNS = ("embedding", "embedding_off", "embedding_on")
_PADDED_BUDGET = 1 << 21  # padded rows per chunk of classes (x components x PCA dims floats per array)
_PCA_FIT_MAX = 20_000


@dataclass(frozen=True)
class SliceOptions:
    """How slices are searched for (the ``slice_gap`` policy's knobs; thresholds live in the policy).

    ``components`` mixture components per class (fewer for small classes: about one per 20 fit
    images, at least 2); ``correctness_weight`` Domino's gamma on the correctness term; ``pca_dim``
    the global PCA's dimensions; ``fit_fraction`` the share of each class the mixture is fitted on
    (at most ``max_fit`` images); ``quantile`` the top/bottom share compared by the spuriosity
    ranking; ``members`` the most typical image ids kept per slice (the dashboard's grid);
    ``min_held_out`` the held-out images a component needs to be reported (fewer cannot be judged:
    the policy's ``min_n``).
    """

    column: str = "embedding"
    components: int = 8
    max_slices: int = 3
    correctness_weight: float = 10.0
    pca_dim: int = 32
    fit_fraction: float = 0.5
    max_fit: int = 1000
    iterations: int = 100
    quantile: float = 0.1
    members: int = 48
    min_held_out: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.column not in EMBEDDING_COLUMNS:
            raise ValueError(f"slice column must be one of {', '.join(EMBEDDING_COLUMNS)}, got {self.column!r}")
        if self.components < 2 or self.max_slices < 1 or self.pca_dim < 1:
            raise ValueError(f"components must be >= 2, max_slices and pca_dim >= 1; got {self}")
        if not 0 < self.fit_fraction < 1 or not 0 < self.quantile <= 0.5:
            raise ValueError(f"fit_fraction must be in (0, 1) and quantile in (0, 0.5]; got {self}")


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Slice:
    """One reported mixture component of one class; accuracies are measured on its held-out images."""

    label: str
    cluster: int
    size: int  # images assigned to it, both halves
    held_out: int  # its held-out images: what its accuracy rests on
    accuracy: Estimate = NAN  # held-out accuracy of the slice
    rest: Estimate = NAN  # held-out accuracy of the class's other images
    gap: Estimate = NAN  # rest - accuracy (Newcombe), judged by slice_gap
    fit_gap: float = float("nan")  # the same gap on the fit half (what selected it; never judged)
    description: list[str] = field(default_factory=list)
    facts: dict[str, float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # its misclassified images, most typical first
    members: list[str] = field(default_factory=list)  # its most typical images (membership probability)

    @property
    def scope(self) -> str:
        return slice_scope(self.label, self.cluster)


@dataclass
class Spuriosity:
    """Accuracy of a class's top vs bottom ``quantile`` of images ranked ``by`` a spurious score."""

    label: str
    by: str  # "off_object_mass" or "slice_direction"
    n: int  # images per quantile
    top: Estimate = NAN
    bottom: Estimate = NAN
    gap: Estimate = NAN  # top - bottom (Moayeri et al.'s sign)


@dataclass
class SliceEvidence:
    column: str = ""
    n: int = 0  # labelled, scored images with an embedding
    dims: int = 0
    classes: int = 0
    slices: list[Slice] = field(default_factory=list)
    spuriosity: list[Spuriosity] = field(default_factory=list)
    note: str = ""  # why nothing was searched


def slice_scope(label: str, cluster: int) -> str:
    return f"slice:{label}#{cluster}"


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class EmbeddingTable:
    """One model's embeddings of one column: ``ids`` ``(N,)`` and ``matrix`` ``(N, D)`` float16."""

    ids: np.ndarray
    matrix: np.ndarray
    column: str


def embedding_matrix(values: pa.Array | pa.ChunkedArray, column: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """A ``list<halffloat>`` column -> ((N,) which rows hold one, (M, D) float16), without a row loop.

    Every non-null row must have the same length (one model, one layer, one projection)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if len(arr) else np.zeros(0, dtype=bool)
    kept = arr.filter(pa.array(valid)) if arr.null_count else arr
    if len(kept) == 0:
        return valid, np.zeros((0, 0), dtype=np.float16)
    lengths = pc.list_value_length(kept).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ValueError(f"column {column!r}: embeddings of different lengths ({lengths.min()}..{lengths.max()}) "
                         "for one model; were results of different layers mixed?")
    flat = kept.flatten().to_numpy(zero_copy_only=False).astype(np.float16, copy=False)
    return valid, flat.reshape(len(kept), int(lengths[0]))


def load_embeddings(root: str | os.PathLike[str], model: str, column: str = "embedding",
                    as_of: str | None = None) -> EmbeddingTable:
    """The current embeddings of ``model`` (latest row per image, current fingerprint)."""
    if column not in EMBEDDING_COLUMNS:
        raise ValueError(f"embedding column must be one of {', '.join(EMBEDDING_COLUMNS)}, got {column!r}")
    t = read_results(root, columns=["image_id", column], models=[model], as_of=as_of)
    valid, matrix = embedding_matrix(t.column(column), column)
    ids = t.column("image_id").to_numpy(zero_copy_only=False)[valid]
    return EmbeddingTable(np.asarray(ids, dtype=object), matrix, column)


# ---------------------------------------------------------------------------------------------
# Discovery


_COLUMNS = ("image_id", "label", "correct", "pred", "object_share", "object_area", "background_share",
            "other_areas", "attributes", "bg_color", "scored")


def discover(frame: pd.DataFrame, emb: EmbeddingTable, so: StatOptions,
             opts: SliceOptions = SliceOptions()) -> tuple[SliceEvidence, pd.DataFrame]:
    """Slices and spuriosity rankings of one model's rows ``frame`` (see the module docstring).

    Returns the evidence and the membership of every image used: ``image_id``, ``label``,
    ``cluster``, ``prob`` (its embedding-only membership probability), ``held_out`` and ``slice``
    (the scope of the reported slice it belongs to, else None).
    """
    empty = pd.DataFrame(columns=["image_id", "label", "cluster", "prob", "held_out", "slice"])
    if emb.matrix.size == 0:
        return SliceEvidence(column=emb.column, note=f"no {emb.column!r} in these results (audit with "
                                                     "embedding.enabled: true)"), empty
    d = frame[[c for c in _COLUMNS if c in frame.columns]]
    d = d[d.scored & d.label.notna() & d.correct.notna()]
    pos = pd.Index(emb.ids).get_indexer(d.image_id.to_numpy(dtype=object))
    d, pos = d[pos >= 0], pos[pos >= 0]
    ev = SliceEvidence(column=emb.column, n=len(d), dims=int(emb.matrix.shape[1]))
    if len(d) == 0:
        ev.note = f"no labelled, scored image has an {emb.column!r}"
        return ev, empty
    labels = d.label.to_numpy(dtype=object)
    classes = sorted(pd.unique(labels).tolist())
    code = pd.Index(classes).get_indexer(labels)
    ev.classes = len(classes)
    correct = d.correct.to_numpy(dtype=np.float64)
    ids = d.image_id.to_numpy(dtype=object)
    u = _uniform(ids, opts.seed)
    fit = _fit_half(code, u, opts)
    z = _pca(emb.matrix, pos, fit, u, opts)
    cluster, prob, fitted = _mixtures(z, correct, code, fit, u, len(classes), opts)
    members = pd.DataFrame({"image_id": ids, "label": labels, "cluster": cluster, "prob": prob, "held_out": ~fit,
                            "slice": None})
    ev.slices = _report(d, code, classes, cluster, prob, fit, correct, fitted, so, opts)
    scope = {(s.label, s.cluster): s.scope for s in ev.slices}
    if scope:
        keys = pd.Series(list(zip(labels.tolist(), cluster.tolist(), strict=True)), dtype=object)
        members["slice"] = keys.map(scope).to_numpy(dtype=object)
    ev.spuriosity = _spuriosity(d, code, classes, z, cluster, fit, correct, ev.slices, so, opts)
    return ev, members


def _uniform(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per image id, fixed by (id, seed) and independent of row order."""
    h = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=f"{seed:016d}"[-16:], categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _fit_half(code: np.ndarray, u: np.ndarray, opts: SliceOptions) -> np.ndarray:
    """The fit half: images with ``u < fit_fraction``, at most ``max_fit`` per class (smallest u first)."""
    cand = u < opts.fit_fraction
    order = np.lexsort((u, ~cand, code))  # per class: candidates first, by u
    rank = np.empty(len(u), dtype=np.int64)
    starts = np.searchsorted(code[order], code[order], side="left")
    rank[order] = np.arange(len(u)) - starts
    return cand & (rank < opts.max_fit)


def _pca(matrix: np.ndarray, pos: np.ndarray, fit: np.ndarray, u: np.ndarray, opts: SliceOptions) -> np.ndarray:
    """Rows ``pos`` of the L2-normalised embeddings projected on the top ``pca_dim`` principal axes
    of the fit half (at most 20,000 of its rows, seeded): ``(N, p)`` float64.

    Rows are normalised first so that clusters follow what the features encode, not the image's
    overall activation strength (contrast, size). The sample is taken in the order of the images'
    hashes and each axis's sign fixed (its largest entry positive), so the input's row order does not
    matter."""
    x = matrix[pos].astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    rows = np.flatnonzero(fit)
    rows = rows[np.argsort(u[rows], kind="stable")][:_PCA_FIT_MAX] if len(rows) >= 2 else np.argsort(u, kind="stable")
    sample = x[rows].astype(np.float64)
    mean = sample.mean(axis=0)
    p = max(1, min(opts.pca_dim, x.shape[1], len(sample) - 1))
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    axes = vt[:p] * np.sign(vt[:p][np.arange(p), np.abs(vt[:p]).argmax(axis=1)])[:, None]
    return (x.astype(np.float64) - mean) @ axes.T


# ---------------------------------------------------------------------------------------------
# The mixture (Domino's, with a Bernoulli correctness term), fitted for many classes at once


@dataclass
class _Params:
    log_pi: np.ndarray  # (G, K), -inf for unused components
    mu: np.ndarray  # (G, K, p)
    var: np.ndarray  # (G, K, p)
    p_correct: np.ndarray  # (G, K)


def _mixtures(z: np.ndarray, correct: np.ndarray, code: np.ndarray, fit: np.ndarray, u: np.ndarray,
              n_classes: int, opts: SliceOptions) -> tuple[np.ndarray, np.ndarray, dict[int, _Params]]:
    """Fit one mixture per class on its fit half; assign every image by its embedding alone.

    Rows enter each class's arrays in the order of their hashes ``u``, so the seeded initialisation
    draws the same images whatever the input's row order. Returns (cluster (N,), membership
    probability (N,), class -> its fitted parameters)."""
    n = len(code)
    cluster = np.zeros(n, dtype=np.int64)
    prob = np.ones(n)
    fitted: dict[int, _Params] = {}
    by_class = np.lexsort((u, code))
    bounds = np.searchsorted(code[by_class], np.arange(n_classes + 1))
    rows = [by_class[bounds[c]:bounds[c + 1]] for c in range(n_classes)]
    fit_rows = [r[fit[r]] for r in rows]
    sizes = np.array([len(r) for r in fit_rows])
    for chunk in _chunks(sizes, opts.components * z.shape[1]):
        chunk = [c for c in chunk if sizes[c] >= 4]  # fewer fit images cannot be clustered
        if not chunk:
            continue
        zf, cf, wf = _pad(z, correct, [fit_rows[c] for c in chunk])
        k = np.clip(sizes[chunk] // 20, 2, opts.components)
        params = _em(zf, cf, wf, k, opts, seed=(opts.seed, int(chunk[0])))
        for j, c in enumerate(chunk):
            fitted[c] = _Params(params.log_pi[j], params.mu[j], params.var[j], params.p_correct[j])
        mine = np.concatenate([rows[c] for c in chunk])
        which = np.repeat(np.arange(len(chunk)), [len(rows[c]) for c in chunk])
        cluster[mine], prob[mine] = _assign(z[mine], which, params)
    return cluster, prob, fitted


def _chunks(sizes: np.ndarray, width: int) -> list[list[int]]:
    """Classes grouped by size (largest first) so that each chunk's padded array stays in budget."""
    order = np.argsort(-sizes, kind="stable")
    out: list[list[int]] = []
    cur: list[int] = []
    for c in order.tolist():
        longest = int(sizes[cur[0]]) if cur else int(sizes[c])
        if cur and (len(cur) + 1) * max(longest, 1) * width > _PADDED_BUDGET:
            out.append(cur)
            cur = []
        cur.append(c)
    if cur:
        out.append(cur)
    return out


def _pad(z: np.ndarray, correct: np.ndarray, groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of each group stacked into ``(G, M, p)`` / ``(G, M)`` arrays padded with zero weight."""
    m = max(len(g) for g in groups)
    g_idx = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    slot = np.concatenate([np.arange(len(g)) for g in groups])
    src = np.concatenate(groups)
    zp = np.zeros((len(groups), m, z.shape[1]))
    cp = np.zeros((len(groups), m))
    wp = np.zeros((len(groups), m))
    zp[g_idx, slot] = z[src]
    cp[g_idx, slot] = correct[src]
    wp[g_idx, slot] = 1.0
    return zp, cp, wp


def _log_gauss(z: np.ndarray, p: _Params) -> np.ndarray:
    """``log N(z; mu_k, diag var_k)`` for padded ``z`` ``(G, M, p)`` -> ``(G, M, K)``."""
    inv = 1.0 / p.var
    quad = (np.einsum("gmp,gkp->gmk", z * z, inv) - 2 * np.einsum("gmp,gkp->gmk", z, p.mu * inv)
            + np.einsum("gkp,gkp->gk", p.mu * p.mu, inv)[:, None, :])
    return -0.5 * (np.log(2 * np.pi * p.var).sum(-1)[:, None, :] + quad)


def _softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = logits.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(logits - top)
    s = e.sum(axis=-1, keepdims=True)
    return e / s, (np.log(s) + top)[..., 0]


def _assign(z: np.ndarray, which: np.ndarray, p: _Params, block: int = 1 << 14) -> tuple[np.ndarray, np.ndarray]:
    """Most probable component of each row of ``z`` ``(n, p)`` under its class's mixture ``which``
    ``(n,)``, and its probability: ``p(k | z)`` from the embedding alone (the correctness term
    marginalised out). In blocks of rows, so the gathered parameters stay small."""
    cluster = np.zeros(len(z), dtype=np.int64)
    prob = np.zeros(len(z))
    for a in range(0, len(z), block):
        zz, g = z[a:a + block], which[a:a + block]
        var = p.var[g]
        logn = -0.5 * (np.log(2 * np.pi * var).sum(-1) + ((zz[:, None, :] - p.mu[g]) ** 2 / var).sum(-1))
        post, _ = _softmax(p.log_pi[g] + logn)
        cluster[a:a + block] = post.argmax(axis=1)
        prob[a:a + block] = post.max(axis=1)
    return cluster, prob


def _em(z: np.ndarray, c: np.ndarray, w: np.ndarray, k: np.ndarray, opts: SliceOptions,
        seed: tuple[int, int]) -> _Params:
    """EM for ``G`` padded classes at once: ``z`` ``(G, M, p)``, correctness ``c`` and weights ``w``
    ``(G, M)`` (0 = padding), ``k`` ``(G,)`` components per class (of ``K = max k``). Initialised by
    k-means++ seeding on the embeddings; variances floored at 1e-3 of the class's per-dimension
    variance; correctness rates Laplace-smoothed."""
    g = z.shape[0]
    kk = int(k.max())
    used = np.arange(kk)[None, :] < k[:, None]  # (G, K)
    n = w.sum(axis=1)  # (G,)
    mean = np.einsum("gm,gmp->gp", w, z) / n[:, None]
    floor = 1e-3 * np.maximum(np.einsum("gm,gmp->gp", w, (z - mean[:, None]) ** 2) / n[:, None], 1e-12)
    resp = _kmeans_pp(z, w, used, np.random.default_rng(list(seed)))
    gamma = opts.correctness_weight
    prev = np.full(g, -np.inf)
    params = None
    for _ in range(opts.iterations):
        rw = resp * w[:, :, None]
        nk = rw.sum(axis=1) + 1e-10  # (G, K)
        mu = np.einsum("gmk,gmp->gkp", rw, z) / nk[:, :, None]
        var = np.einsum("gmk,gmp->gkp", rw, z * z) / nk[:, :, None] - mu * mu
        var = np.maximum(var, floor[:, None, :]) + floor[:, None, :]
        log_pi = np.where(used, np.log(nk / nk.sum(axis=1, keepdims=True)), -np.inf)
        pcor = (np.einsum("gmk,gm->gk", rw, c) + 1.0) / (nk + 2.0)
        params = _Params(log_pi, mu, var, pcor)
        logit = (log_pi[:, None, :] + _log_gauss(z, params)
                 + gamma * (c[:, :, None] * np.log(pcor)[:, None, :] + (1 - c[:, :, None]) * np.log1p(-pcor)[:, None, :]))
        resp, lse = _softmax(logit)
        ll = (lse * w).sum(axis=1) / n
        if np.all(np.abs(ll - prev) <= 1e-6 * np.maximum(np.abs(ll), 1.0)):
            break
        prev = ll
    assert params is not None
    return params


def _kmeans_pp(z: np.ndarray, w: np.ndarray, used: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hard initial responsibilities ``(G, M, K)`` from k-means++ seeding (Arthur & Vassilvitskii 2007),
    all classes at once; padding rows are never drawn."""
    g = z.shape[0]
    kk = used.shape[1]
    centres = np.zeros((g, kk, z.shape[2]))
    rows = np.arange(g)
    centres[:, 0] = z[rows, _draw(w, w, rng)]
    d2 = ((z - centres[:, :1]) ** 2).sum(-1)
    for j in range(1, kk):
        centres[:, j] = z[rows, _draw(d2 * w, w, rng)]
        d2 = np.minimum(d2, ((z - centres[:, j:j + 1]) ** 2).sum(-1))
    dist = (np.einsum("gmp,gmp->gm", z, z)[:, :, None] - 2 * np.einsum("gmp,gkp->gmk", z, centres)
            + np.einsum("gkp,gkp->gk", centres, centres)[:, None, :])
    dist = np.where(used[:, None, :], dist, np.inf)
    return np.eye(kk)[dist.argmin(axis=2)]


def _draw(weights: np.ndarray, fallback: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of ``weights`` ``(G, M)`` with probability proportional to it; rows whose
    weights are all 0 (every point already a centre) draw by ``fallback`` (the non-padding rows)."""
    weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, fallback)
    cum = np.cumsum(weights, axis=1)
    r = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum <= r[:, None]).sum(axis=1), weights.shape[1] - 1)


# ---------------------------------------------------------------------------------------------
# Reporting: held-out accuracies, descriptions


def _report(d: pd.DataFrame, code: np.ndarray, classes: list[str], cluster: np.ndarray, prob: np.ndarray,
            fit: np.ndarray, correct: np.ndarray, fitted: dict[int, _Params], so: StatOptions,
            opts: SliceOptions) -> list[Slice]:
    kk = opts.components
    key = code * kk + cluster
    size = len(classes) * kk
    right = correct > 0.5

    def counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.bincount(key[mask], minlength=size).reshape(-1, kk),
                np.bincount(key[mask & right], minlength=size).reshape(-1, kk))

    n_fit, k_fit = counts(fit)
    n_out, k_out = counts(~fit)
    n_all = np.bincount(key, minlength=size).reshape(-1, kk)
    # Selection on the fit half only: the gap rest - slice and its Newcombe lower bound, all at once.
    rest_n, rest_k = n_fit.sum(1, keepdims=True) - n_fit, k_fit.sum(1, keepdims=True) - k_fit
    with np.errstate(divide="ignore", invalid="ignore"):
        gap_fit = rest_k / rest_n - k_fit / n_fit
    lo_fit, _ = newcombe_bounds(rest_k, rest_n, k_fit, n_fit, z_of(so.conf))
    # Held-out *counts* may select (membership depends on embeddings only); held-out outcomes may not.
    ok = (n_fit > 0) & (rest_n > 0) & (gap_fit > 0) & np.isfinite(lo_fit) & (n_out >= max(opts.min_held_out, 1))
    for c in range(len(classes)):
        if c not in fitted:
            ok[c] = False
    rank = np.where(ok, lo_fit, -np.inf)
    chosen = [(c, j) for c in range(len(classes))
              for j in np.argsort(-rank[c], kind="stable")[: opts.max_slices].tolist() if ok[c, j]]
    if not chosen:
        return []
    describe = _Describer(d, code)
    out = []
    order = np.lexsort((-prob, key))  # per (class, cluster): most typical first
    sorted_keys = key[order]
    ids = d.image_id.to_numpy(dtype=object)
    for c, j in chosen:
        sel = order[np.searchsorted(sorted_keys, c * kk + j, "left"):np.searchsorted(sorted_keys, c * kk + j, "right")]
        n_s, k_s = int(n_out[c, j]), int(k_out[c, j])
        n_r, k_r = int(n_out[c].sum()) - n_s, int(k_out[c].sum()) - k_s
        wrong = sel[~right[sel]]
        s = Slice(label=classes[c], cluster=j, size=int(n_all[c, j]), held_out=n_s,
                  accuracy=rate_from_counts(k_s, n_s, so.conf), rest=rate_from_counts(k_r, n_r, so.conf),
                  gap=rate_diff_from_counts(k_r, n_r, k_s, n_s, so.conf), fit_gap=float(gap_fit[c, j]),
                  examples=[str(x) for x in ids[wrong[: so.examples]]],
                  members=[str(x) for x in ids[sel[: opts.members]]])
        s.description, s.facts = describe(c, sel)
        out.append(s)
    return out


class _Describer:
    """What sets a slice apart from the rest of its class, from columns the audit already has."""

    def __init__(self, d: pd.DataFrame, code: np.ndarray) -> None:
        self.d, self.code = d, code
        self.wrong = d.correct.to_numpy(dtype=np.float64) < 0.5
        self.pred = d.pred.to_numpy(dtype=object) if "pred" in d else np.full(len(d), None, dtype=object)
        bs = d.background_share.to_numpy(dtype=np.float64) if "background_share" in d else np.full(len(d), np.nan)
        osh = d.object_share.to_numpy(dtype=np.float64) if "object_share" in d else np.full(len(d), np.nan)
        self.numbers = {
            "off_object_mass": np.where(np.isfinite(bs), bs, 1.0 - osh),
            "object_area": d.object_area.to_numpy(dtype=np.float64) if "object_area" in d else np.full(len(d), np.nan),
        }
        self.rgb = np.full((len(d), 3), np.nan)
        if "bg_color" in d:
            has, rgb = bg_colours(d.bg_color.to_numpy())
            self.rgb[has] = rgb
        # (row, "key=value") entries of attributes and present co-occurring categories, once for all rows.
        self.tags: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))
        parts = []
        if "attributes" in d:
            rows, keys, vals = _entries(d.attributes.to_numpy())
            parts.append((rows, [f"{k}={v}" for k, v in zip(keys, vals, strict=True)]))
        if "other_areas" in d:
            rows, keys, _ = _entries(d.other_areas.to_numpy())
            parts.append((rows, [f"with {k}" for k in keys]))
        if parts:
            self.tags = (np.concatenate([p[0] for p in parts]),
                         np.asarray(list(chain.from_iterable(p[1] for p in parts)), dtype=object))

    def __call__(self, c: int, sel: np.ndarray) -> tuple[list[str], dict[str, float]]:
        mine = np.zeros(len(self.d), dtype=bool)
        mine[sel] = True
        rest = (self.code == c) & ~mine
        text: list[str] = []
        facts: dict[str, float] = {}
        wrong = sel[self.wrong[sel]]
        if len(wrong):
            preds = pd.Series(self.pred[wrong]).value_counts()
            if len(preds):
                text.append(f"predicted {preds.index[0]}: {int(preds.iloc[0])} of {len(wrong)} errors")
        tag_rows, tags = self.tags
        if len(tags):
            here = pd.Series(tags[mine[tag_rows]]).value_counts() / max(len(sel), 1)
            there = pd.Series(tags[rest[tag_rows]]).value_counts() / max(int(rest.sum()), 1)
            lift = here.sub(there, fill_value=0.0).sort_values(ascending=False)
            for tag, v in lift.items():
                if v < 0.2:
                    break
                text.append(f"{tag}: {here.get(tag, 0.0):.0%} (rest of the class {there.get(tag, 0.0):.0%})")
        for name, what in (("off_object_mass", "off-object CAM mass"), ("object_area", "object area")):
            a, b = _nanmean(self.numbers[name][mine]), _nanmean(self.numbers[name][rest])
            facts[name], facts[f"{name}_rest"] = a, b
            if math.isfinite(a) and math.isfinite(b):
                text.append(f"{what} {a:.2f} (rest {b:.2f})")
        a_rgb, b_rgb = _nanmean_rows(self.rgb[mine]), _nanmean_rows(self.rgb[rest])
        if np.isfinite(a_rgb).all() and np.isfinite(b_rgb).all():
            dist = float(np.linalg.norm(a_rgb - b_rgb) / (255 * math.sqrt(3)))
            facts["bg_colour_distance"] = dist
            text.append(f"background {_hex(a_rgb)} (rest {_hex(b_rgb)}, distance {dist:.2f})")
        return text, facts


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    x = x[np.isfinite(x).all(axis=1)]
    return x.mean(axis=0) if len(x) else np.full(3, np.nan)


def _hex(rgb: np.ndarray) -> str:
    r, g, b = (min(255, max(0, round(float(v)))) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------------------------
# Spuriosity rankings


def _spuriosity(d: pd.DataFrame, code: np.ndarray, classes: list[str], z: np.ndarray, cluster: np.ndarray,
                fit: np.ndarray, correct: np.ndarray, slices: list[Slice], so: StatOptions,
                opts: SliceOptions) -> list[Spuriosity]:
    out = []
    bs = d.background_share.to_numpy(dtype=np.float64) if "background_share" in d else np.full(len(d), np.nan)
    osh = d.object_share.to_numpy(dtype=np.float64) if "object_share" in d else np.full(len(d), np.nan)
    off = np.where(np.isfinite(bs), bs, 1.0 - osh)
    out += _ranked(off, code, classes, correct, "off_object_mass", so, opts)
    top_slice: dict[int, Slice] = {}
    for s in slices:  # the first reported slice of each class: the largest fit-half gap
        top_slice.setdefault(classes.index(s.label), s)
    score = np.full(len(d), np.nan)
    for c, s in top_slice.items():
        mine = code == c
        direction = z[mine & (cluster == s.cluster)].mean(axis=0) - z[mine].mean(axis=0)
        norm = float(np.linalg.norm(direction))
        if norm > 0:
            score[mine & ~fit] = z[mine & ~fit] @ (direction / norm)
    out += _ranked(score, code, classes, correct, "slice_direction", so, opts)
    return out


def _ranked(score: np.ndarray, code: np.ndarray, classes: list[str], correct: np.ndarray, by: str,
            so: StatOptions, opts: SliceOptions) -> list[Spuriosity]:
    """Per class: accuracy of the top vs bottom ``quantile`` of the images with a finite ``score``."""
    has = np.isfinite(score)
    if not has.any():
        return []
    frame = pd.DataFrame({"c": code[has], "s": score[has], "r": correct[has] > 0.5})
    rank = frame.groupby("c").s.rank(method="first").to_numpy()
    n = frame.groupby("c").s.transform("size").to_numpy()
    q = np.floor(opts.quantile * n)
    top, bottom = rank > n - q, rank <= q
    frame = frame.assign(top=top, bottom=bottom, top_r=top & frame.r.to_numpy(), bottom_r=bottom & frame.r.to_numpy())
    agg = frame.groupby("c")[["top", "bottom", "top_r", "bottom_r"]].sum()
    out = []
    for c, row in agg.iterrows():  # one Estimate per class
        nt, nb, kt, kb = (int(row[x]) for x in ("top", "bottom", "top_r", "bottom_r"))
        if nt == 0 or nb == 0:
            continue
        out.append(Spuriosity(classes[int(c)], by, nt, rate_from_counts(kt, nt, so.conf),
                              rate_from_counts(kb, nb, so.conf), rate_diff_from_counts(kt, nt, kb, nb, so.conf)))
    return out


# ---------------------------------------------------------------------------------------------
# For the gate


def model_slices(root: str | os.PathLike[str], model: str, frame: pd.DataFrame, so: StatOptions,
                 opts: SliceOptions = SliceOptions(), as_of: str | None = None) -> SliceEvidence:
    """:func:`discover` on the stored embeddings of ``model`` (its rows of ``frame``)."""
    return discover(frame, load_embeddings(root, model, opts.column, as_of), so, opts)[0]


def markdown_lines(ev: SliceEvidence, statuses: dict[str, str], limit: int = 5) -> list[str]:
    """The flagged slices as Markdown list items (the gate's report): size, held-out accuracies and
    gap, what describes them, examples."""
    flagged = [s for s in ev.slices if statuses.get(s.scope) in ("WARN", "FAIL")]
    flagged.sort(key=lambda s: -s.gap.value)
    lines = []
    for s in flagged[:limit]:
        lines.append(f"  - {statuses[s.scope]} slice `{s.label}#{s.cluster}` ({s.size} images, {s.held_out} held out): "
                     f"accuracy {s.accuracy.fmt(True)} vs the rest of `{s.label}` {s.rest.fmt(True)}, "
                     f"gap {s.gap.fmt()}")
        if s.description:
            lines.append(f"    - what sets it apart: {'; '.join(s.description[:4])}")
        if s.examples:
            lines.append(f"    - examples: {', '.join(f'`{x}`' for x in s.examples[:5])}")
    if len(flagged) > limit:
        lines.append(f"  - ... {len(flagged) - limit} more flagged slices")
    return lines


def to_records(ev: SliceEvidence) -> list[dict[str, Any]]:
    """The slices as flat rows (the dashboard's table)."""
    return [{"slice": s.scope, "class": s.label, "cluster": s.cluster, "images": s.size, "held out": s.held_out,
             "accuracy": s.accuracy.value, "rest": s.rest.value, "gap": s.gap.fmt(), "gap_value": s.gap.value,
             "description": "; ".join(s.description)} for s in ev.slices]
