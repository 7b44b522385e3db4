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
per class: a million rows in 1,000 classes take 19 s on two busy cores (BENCHMARKS.md, section 7).

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
    error: str = ""  # why the search broke (the slice_gap check reports it as ERROR)


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
    if ev.slices:
        lookup = np.full(len(classes) * opts.components, None, dtype=object)  # (class, cluster) -> scope
        index = {c: i for i, c in enumerate(classes)}
        for sl in ev.slices:
            lookup[index[sl.label] * opts.components + sl.cluster] = sl.scope
        members["slice"] = lookup[code * opts.components + cluster]
    ev.spuriosity = _spuriosity(d, code, classes, z, fit, correct, ev.slices, fitted, so, opts)
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
    of the fit half (at most 20,000 of its rows, seeded): ``(N, p)`` float32, in blocks of rows.

    Rows are normalised first so that clusters follow what the features encode, not the image's
    overall activation strength (contrast, size). The sample is taken in the order of the images'
    hashes and each axis's sign fixed (its largest entry positive), so the input's row order does not
    matter."""
    def unit(rows: np.ndarray) -> np.ndarray:
        x = matrix[pos[rows]].astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))

    rows = np.flatnonzero(fit)
    rows = rows[np.argsort(u[rows], kind="stable")][:_PCA_FIT_MAX] if len(rows) >= 2 else np.argsort(u, kind="stable")
    sample = unit(rows).astype(np.float64)
    mean = sample.mean(axis=0)
    p = max(1, min(opts.pca_dim, sample.shape[1], len(sample) - 1))
    centred = sample - mean
    _, vecs = np.linalg.eigh(centred.T @ centred)  # (D, D) covariance: cheaper than an SVD of the sample
    top = vecs[:, ::-1][:, :p].T  # (p, D), largest variance first
    axes = (top * np.sign(top[np.arange(p), np.abs(top).argmax(axis=1)])[:, None]).T.astype(np.float32)
    shift = (mean @ axes).astype(np.float32)
    z = np.empty((len(pos), p), dtype=np.float32)
    for a in range(0, len(pos), 1 << 16):
        z[a:a + (1 << 16)] = unit(np.arange(a, min(a + (1 << 16), len(pos)))) @ axes - shift
    return z


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
        for c in chunk:
            cluster[rows[c]], prob[rows[c]] = _assign(z[rows[c]], fitted[c])
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
    zp = np.zeros((len(groups), m, z.shape[1]), dtype=z.dtype)
    cp = np.zeros((len(groups), m), dtype=z.dtype)
    wp = np.zeros((len(groups), m), dtype=z.dtype)
    zp[g_idx, slot] = z[src]
    cp[g_idx, slot] = correct[src]
    wp[g_idx, slot] = 1.0
    return zp, cp, wp


def _log_gauss(z: np.ndarray, p: _Params) -> np.ndarray:
    """``log N(z; mu_k, diag var_k)`` for ``z`` ``(..., M, p)`` -> ``(..., M, K)``, parameters
    ``(..., K, p)``: ``-(sum log 2 pi var + z^2 . 1/var - 2 z . mu/var + mu^2 . 1/var) / 2``, as
    batched matrix products."""
    inv = 1.0 / p.var
    quad = (np.matmul(z * z, np.swapaxes(inv, -1, -2)) - 2 * np.matmul(z, np.swapaxes(p.mu * inv, -1, -2))
            + (p.mu * p.mu * inv).sum(-1)[..., None, :])
    return -0.5 * (np.log(2 * np.pi * p.var).sum(-1)[..., None, :] + quad)


def _softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = logits.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(logits - top)
    s = e.sum(axis=-1, keepdims=True)
    return e / s, (np.log(s) + top)[..., 0]


def _assign(z: np.ndarray, p: _Params) -> tuple[np.ndarray, np.ndarray]:
    """Most probable component of each row of ``z`` ``(n, p)`` under one class's mixture, and its
    probability ``p(k | z)`` from the embedding alone (the correctness term marginalised out)."""
    post, _ = _softmax(p.log_pi + _log_gauss(z, p))
    return post.argmax(axis=1), post.max(axis=1)


def _em(z: np.ndarray, c: np.ndarray, w: np.ndarray, k: np.ndarray, opts: SliceOptions,
        seed: tuple[int, int]) -> _Params:
    """EM for ``G`` padded classes at once: ``z`` ``(G, M, p)``, correctness ``c`` and weights ``w``
    ``(G, M)`` (0 = padding), ``k`` ``(G,)`` components per class (of ``K = max k``). Initialised by
    k-means++ seeding on the embeddings; variances floored at 1e-3 of the class's per-dimension
    variance; correctness rates Laplace-smoothed. A class stops when its mean log-likelihood per image
    moves less than 1e-3 (scikit-learn's tol); converged classes leave the batch once a fifth of it
    has, so one slow class does not keep the others iterating."""
    g, _, dim = z.shape
    kk = int(k.max())
    used = np.arange(kk)[None, :] < k[:, None]  # (G, K)
    n = w.sum(axis=1)  # (G,)
    mean = (w[:, :, None] * z).sum(axis=1) / n[:, None]
    floor = 1e-3 * np.maximum((w[:, :, None] * (z - mean[:, None]) ** 2).sum(axis=1) / n[:, None], 1e-12)
    resp = _kmeans_pp(z, w, used, np.random.default_rng(list(seed)))
    out = _Params(np.full((g, kk), -np.inf), np.zeros((g, kk, dim)), np.ones((g, kk, dim)), np.full((g, kk), 0.5))
    active = np.arange(g)
    prev = np.full(g, -np.inf)
    done = np.zeros(g, dtype=bool)
    for it in range(opts.iterations):
        params = _m_step(resp, z, c, w, used, floor)
        logit = (params.log_pi[:, None, :] + _log_gauss(z, params) + opts.correctness_weight
                 * (c[:, :, None] * np.log(params.p_correct)[:, None, :]
                    + (1 - c[:, :, None]) * np.log1p(-params.p_correct)[:, None, :]))
        resp, lse = _softmax(logit)
        ll = (lse * w).sum(axis=1) / n
        done = np.abs(ll - prev) <= 1e-3
        prev = ll
        last = it == opts.iterations - 1 or done.all()
        if last or done.sum() >= max(1, len(active) // 5):
            leave = np.ones(len(active), dtype=bool) if last else done
            for name in ("log_pi", "mu", "var", "p_correct"):
                getattr(out, name)[active[leave]] = getattr(params, name)[leave]
            if last:
                break
            keep = ~leave
            active, z, c, w, used, n, floor, resp, prev = (
                x[keep] for x in (active, z, c, w, used, n, floor, resp, prev))
    log.debug("EM for %d classes: %d iterations, %d not converged", g, it + 1, int((~done).sum()))
    return out


def _m_step(resp: np.ndarray, z: np.ndarray, c: np.ndarray, w: np.ndarray, used: np.ndarray,
            floor: np.ndarray) -> _Params:
    """Weights, means, floored diagonal variances and smoothed correctness rates from ``resp`` ``(G, M, K)``."""
    rw = np.swapaxes(resp * w[:, :, None], 1, 2)  # (G, K, M)
    nk = rw.sum(axis=2) + 1e-10  # (G, K)
    mu = np.matmul(rw, z) / nk[:, :, None]
    var = np.matmul(rw, z * z) / nk[:, :, None] - mu * mu
    var = np.maximum(var, floor[:, None, :]) + floor[:, None, :]
    with np.errstate(divide="ignore"):
        log_pi = np.where(used, np.log(nk / nk.sum(axis=1, keepdims=True)), -np.inf)
    p_correct = (np.matmul(rw, c[:, :, None])[:, :, 0] + 1.0) / (nk + 2.0)
    return _Params(log_pi, mu, var, p_correct)


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
    dist = ((z * z).sum(-1)[:, :, None] - 2 * np.matmul(z, np.swapaxes(centres, 1, 2))
            + (centres * centres).sum(-1)[:, None, :])
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
    described = _describe(d, code, key, kk, chosen)
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
        s.description, s.facts = described[(c, j)]
        out.append(s)
    return out


def _describe(d: pd.DataFrame, code: np.ndarray, key: np.ndarray, kk: int,
              chosen: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[list[str], dict[str, float]]]:
    """What sets each chosen slice apart from the rest of its class, from columns the audit already has:
    the prediction most of its errors get, attribute values and co-occurring categories at least 20
    points more common than in the rest of the class, off-object CAM mass, object area and background
    colour against the rest's. Grouped sums over (class, cluster) keys, one pass for all slices."""
    n_keys = int(code.max() + 1) * kk if len(code) else 0
    n_key = np.bincount(key, minlength=n_keys).astype(float)
    n_cls = np.bincount(code, minlength=n_keys // kk).astype(float)
    out: dict[tuple[int, int], tuple[list[str], dict[str, float]]] = {cj: ([], {}) for cj in chosen}
    wrong = d.correct.to_numpy(dtype=np.float64) < 0.5
    if "pred" in d and wrong.any():
        errs = pd.DataFrame({"k": key[wrong], "pred": d.pred.to_numpy(dtype=object)[wrong]})
        top = errs.groupby(["k", "pred"]).size().sort_values(ascending=False, kind="stable")
        first = top[~top.index.get_level_values(0).duplicated()]
        total = errs.groupby("k").size()
        for (k, pred), cnt in first.items():
            cj = (int(k) // kk, int(k) % kk)
            if cj in out:
                out[cj][0].append(f"predicted {pred}: {int(cnt)} of {int(total[k])} errors")
    tags = _tags(d)
    if tags is not None:
        rows, names = tags
        counts = pd.DataFrame({"k": key[rows], "c": code[rows], "t": names})
        here = counts.groupby(["k", "t"]).size()
        per_class = counts.groupby(["c", "t"]).size()
        for (k, t), h in here.items():
            cj = (int(k) // kk, int(k) % kk)
            if cj not in out:
                continue
            rest_n = n_cls[cj[0]] - n_key[k]
            share, rest = h / n_key[k], (per_class[(cj[0], t)] - h) / max(rest_n, 1.0)
            if share - rest >= 0.2:
                out[cj][0].append(f"{t}: {share:.0%} (rest of the class {rest:.0%})")
    numbers = {"off_object_mass": ("off-object CAM mass", off_object_mass(d)),
               "object_area": ("object area", d.object_area.to_numpy(dtype=np.float64) if "object_area" in d
                               else np.full(len(d), np.nan))}
    for name, (what, v) in numbers.items():
        mine, rest = _group_means(v[:, None], key, code, kk, n_keys)
        for cj in chosen:
            a, b = float(mine[cj[0] * kk + cj[1], 0]), float(rest[cj[0] * kk + cj[1], 0])
            out[cj][1][name], out[cj][1][f"{name}_rest"] = a, b
            if math.isfinite(a) and math.isfinite(b):
                out[cj][0].append(f"{what} {a:.2f} (rest {b:.2f})")
    if "bg_color" in d:
        rgb = np.full((len(d), 3), np.nan)
        has, values = bg_colours(d.bg_color.to_numpy())
        rgb[has] = values
        mine, rest = _group_means(rgb, key, code, kk, n_keys)
        for cj in chosen:
            a, b = mine[cj[0] * kk + cj[1]], rest[cj[0] * kk + cj[1]]
            if np.isfinite(a).all() and np.isfinite(b).all():
                dist = float(np.linalg.norm(a - b) / (255 * math.sqrt(3)))
                out[cj][1]["bg_colour_distance"] = dist
                out[cj][0].append(f"background {_hex(a)} (rest {_hex(b)}, distance {dist:.2f})")
    return out


def _tags(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(row, "key=value" / "with <category>") entries of the attributes and co-occurring categories."""
    parts = []
    if "attributes" in d:
        rows, keys, vals = _entries(d.attributes.to_numpy())
        parts.append((rows, [f"{k}={v}" for k, v in zip(keys, vals, strict=True)]))
    if "other_areas" in d:
        rows, keys, _ = _entries(d.other_areas.to_numpy())
        parts.append((rows, [f"with {k}" for k in keys]))
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return None
    return np.concatenate([p[0] for p in parts]), np.asarray(list(chain.from_iterable(p[1] for p in parts)), dtype=object)


def _group_means(v: np.ndarray, key: np.ndarray, code: np.ndarray, kk: int, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (class, cluster) key: the mean of the finite rows of ``v`` ``(N, q)`` in it and in the rest of
    its class, ``(n_keys, q)`` each (NaN where there are none)."""
    ok = np.isfinite(v).all(axis=1)
    k, c, x = key[ok], code[ok], v[ok]
    n_k = np.bincount(k, minlength=n_keys).astype(float)
    n_c = np.bincount(c, minlength=n_keys // kk).astype(float)
    s_k = np.stack([np.bincount(k, weights=x[:, j], minlength=n_keys) for j in range(v.shape[1])], axis=1)
    s_c = np.stack([np.bincount(c, weights=x[:, j], minlength=n_keys // kk) for j in range(v.shape[1])], axis=1)
    cls = np.arange(n_keys) // kk
    with np.errstate(divide="ignore", invalid="ignore"):
        mine = s_k / n_k[:, None]
        rest = (s_c[cls] - s_k) / (n_c[cls] - n_k)[:, None]
    return mine, rest


def _hex(rgb: np.ndarray) -> str:
    r, g, b = (min(255, max(0, round(float(v)))) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------------------------
# Spuriosity rankings


def off_object_mass(d: pd.DataFrame) -> np.ndarray:
    """Per row, the CAM mass off the labelled object: ``background_share``, else ``1 - object_share``."""
    nan = np.full(len(d), np.nan)
    bs = d.background_share.to_numpy(dtype=np.float64) if "background_share" in d else nan
    osh = d.object_share.to_numpy(dtype=np.float64) if "object_share" in d else nan
    return np.where(np.isfinite(bs), bs, 1.0 - osh)


def _spuriosity(d: pd.DataFrame, code: np.ndarray, classes: list[str], z: np.ndarray, fit: np.ndarray,
                correct: np.ndarray, slices: list[Slice], fitted: dict[int, _Params], so: StatOptions,
                opts: SliceOptions) -> list[Spuriosity]:
    out = []
    out += _ranked(off_object_mass(d), code, classes, correct, "off_object_mass", so, opts)
    index = {c: i for i, c in enumerate(classes)}
    direction = np.full((len(classes), z.shape[1]), np.nan, dtype=z.dtype)
    for s in slices:  # the first reported slice of each class (the top-ranked one): its mean minus
        c = index[s.label]  # the class's, both from the fitted mixture (no pass over the rows)
        if c in fitted and not np.isfinite(direction[c]).all():
            p = fitted[c]
            d_c = p.mu[s.cluster] - np.exp(p.log_pi) @ p.mu
            direction[c] = d_c / max(float(np.linalg.norm(d_c)), 1e-12)
    rows = ~fit & np.isfinite(direction[code]).all(axis=1)
    score = np.full(len(d), np.nan)
    score[rows] = (z[rows] * direction[code[rows]]).sum(axis=1)
    out += _ranked(score, code, classes, correct, "slice_direction", so, opts)
    return out


def _ranked(score: np.ndarray, code: np.ndarray, classes: list[str], correct: np.ndarray, by: str,
            so: StatOptions, opts: SliceOptions) -> list[Spuriosity]:
    """Per class: accuracy of the top vs bottom ``quantile`` of the images with a finite ``score``."""
    has = np.isfinite(score)
    if not has.any():
        return []
    c, sc, right = code[has], score[has], correct[has] > 0.5
    order = np.lexsort((sc, c))  # per class by score; ties keep row order
    n_c = np.bincount(c, minlength=len(classes))
    start = np.concatenate([[0], np.cumsum(n_c)[:-1]])
    rank = np.empty(len(c), dtype=np.int64)
    rank[order] = np.arange(len(c)) - start[c[order]]  # 0-based rank within the class
    q = np.floor(opts.quantile * n_c[c])
    top, bottom = rank >= n_c[c] - q, rank < q
    nt, nb = np.bincount(c[top], minlength=len(classes)), np.bincount(c[bottom], minlength=len(classes))
    kt, kb = np.bincount(c[top & right], minlength=len(classes)), np.bincount(c[bottom & right], minlength=len(classes))
    out = []
    for cls in np.flatnonzero((nt > 0) & (nb > 0)).tolist():  # one Estimate per class
        nt_c, nb_c, kt_c, kb_c = int(nt[cls]), int(nb[cls]), int(kt[cls]), int(kb[cls])
        out.append(Spuriosity(classes[cls], by, nt_c, rate_from_counts(kt_c, nt_c, so.conf),
                              rate_from_counts(kb_c, nb_c, so.conf), rate_diff_from_counts(kt_c, nt_c, kb_c, nb_c, so.conf)))
    return out


# ---------------------------------------------------------------------------------------------
# For the gate


def model_slices(root: str | os.PathLike[str], model: str, frame: pd.DataFrame, so: StatOptions,
                 opts: SliceOptions = SliceOptions(), as_of: str | None = None) -> SliceEvidence:
    """:func:`discover` on the stored embeddings of ``model`` (its rows of ``frame``); a failure is
    kept in ``error`` (and logged) so that the check reports it instead of the gate stopping."""
    try:
        return discover(frame, load_embeddings(root, model, opts.column, as_of), so, opts)[0]
    except Exception as e:  # a broken analysis is reported as the check's ERROR, never hidden
        log.exception("slice discovery failed for model %s", model)
        return SliceEvidence(column=opts.column, error=f"{type(e).__name__}: {e}")


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
