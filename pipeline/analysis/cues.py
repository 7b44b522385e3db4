"""Evidence for each kind of spurious cue, measured *conditioned on the label*.

On an audit set where a cue follows the label, a fair model's predictions follow the cue too,
because the labels do; raw cue/prediction agreement cannot tell it from a biased model. So every
analysis here splits each class into cue-*aligned* images (the cue agrees with the label) and
cue-*conflicting* ones (the cue points to another class), and compares the model's accuracy on the
two (worst-group accuracy, Sagawa et al. 2020). A fair model is as accurate on both; a model that
reads the cue fails on the conflicting minority.

- background colour: the cue is the class whose mean background colour is nearest (leave-one-out
  nearest centroid over the measured ``bg_color``);
- co-occurring objects: the cue is the class an annotated *other* category is associated with
  (the keyboard "belongs" to the mouse class when it appears mostly with mice);
- dataset attributes: any per-image attribute (``watermark: yes``) defines groups directly;
- counterfactual: the background swapped for another class's (Mixed-Rand) vs the same class's
  (Mixed-Same, the control); their accuracy gap is BG-Gap (Xiao et al. 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import methodcaller
from typing import Any

import numpy as np
import pandas as pd

from pipeline.analysis.ablation import ABLATION_COLUMNS, ContextAblationEvidence, context_ablation
from pipeline.analysis.frame import differs, example_ids, narrow
from pipeline.analysis.stats import (
    NAN,
    Estimate,
    diff_ci,
    mean_ci,
    paired_diff_ci,
    paired_rate_diff_ci,
    rate_ci,
    rate_diff_ci,
    rate_diff_from_counts,
    rate_from_counts,
)


@dataclass(frozen=True)
class StatOptions:
    """How estimates are made: rates get score intervals, continuous statistics the bootstrap.

    ``min_support``: images a co-occurring category must appear in before it can signal a class.
    (The floor of images below which a finding is not judged is the policy's: judging.Condition.)
    """

    conf: float = 0.95
    n_boot: int = 1000
    seed: int = 0
    min_support: int = 20
    examples: int = 8

    def mean(self, x: Any) -> Estimate:
        return mean_ci(x, self.conf, self.n_boot, self.seed)

    def diff(self, a: Any, b: Any) -> Estimate:
        return diff_ci(a, b, self.conf, self.n_boot, self.seed)

    def paired(self, a: Any, b: Any) -> Estimate:
        return paired_diff_ci(a, b, self.conf, self.n_boot, self.seed)

    def rate(self, x: Any) -> Estimate:
        """A rate of 0/1 values with its Wilson interval."""
        return rate_ci(x, self.conf)

    def rate_diff(self, a: Any, b: Any) -> Estimate:
        """rate(a) - rate(b), independent groups, Newcombe's interval."""
        return rate_diff_ci(a, b, self.conf)

    def paired_rate_diff(self, a: Any, b: Any) -> Estimate:
        """rate(a) - rate(b) on the same images, Newcombe's paired interval."""
        return paired_rate_diff_ci(a, b, self.conf)


def _entries(cells: Sequence[Any]) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Mapping cells (one per row) -> their entries in row order, then key order: (row, key, value).

    One pass in C over the rows (``len``), Python work only for the rows that have entries.
    """
    cells = np.asarray(cells, dtype=object) if not isinstance(cells, np.ndarray) else cells
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    full = np.flatnonzero(lengths)
    pairs = list(chain.from_iterable(map(methodcaller("items"), cells[full])))
    rows = np.repeat(full, lengths[full])
    if not pairs:
        return rows, [], []
    keys, values = zip(*pairs, strict=True)
    return rows, list(keys), list(values)


# ---------------------------------------------------------------------------------------------
# Background colour


@dataclass
class BgColourEvidence:
    n: int = 0
    predictiveness: float = float("nan")  # leave-one-out nearest-centroid accuracy of bg colour -> label
    chance: float = float("nan")  # majority-class rate
    null95: float = float("nan")  # the same accuracy's 95th percentile with shuffled labels
    n_aligned: int = 0
    n_conflicting: int = 0
    acc_aligned: Estimate = NAN
    acc_conflicting: Estimate = NAN
    gap: Estimate = NAN  # acc_aligned - acc_conflicting
    follow_rate: Estimate = NAN  # conflicting images predicted as the colour's class
    bg_share_gap: Estimate = NAN  # background_share on conflicting wrong minus right
    centroids: dict[str, list[float]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def strength(self) -> float:
        """How far colour predicts the label beyond chance (0 when it does not beat shuffled labels)."""
        if not self.predictiveness > self.null95:
            return 0.0
        return self.predictiveness - self.chance


def colour_cue_class(colors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Leave-one-out nearest-centroid class of each background colour (N,3) -> (N,) labels.

    Leaving the image out of its own class centroid matters for small classes: otherwise every
    image is pulled towards its own label and the cue looks stronger than it is.
    """
    classes, idx = _class_codes(labels)
    cue, cent, acc = _nearest_centroid(colors, idx, len(classes))
    return np.array(classes, dtype=object)[cue], {c: cent[k] for k, c in enumerate(classes)}, acc


def _class_codes(labels: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """(``sorted(set(labels))``, (N,) index of each label in it), hashing the labels once."""
    codes, uniques = pd.factorize(np.asarray(labels, dtype=object), use_na_sentinel=False)
    uniques = list(uniques)
    classes = sorted(uniques)
    remap = np.array([classes.index(u) for u in uniques], dtype=np.intp)
    return classes, remap[codes]


_CHUNK = 1 << 16  # rows per block of the (N, C, 3) distance temporary


def _nearest_centroid(colors: np.ndarray, idx: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Leave-one-out nearest-centroid over class codes: ((N,) code of the cue, (C, 3) centroids, accuracy).

    Sums and squared distances are accumulated in the same order as ``colors[idx == k].sum(0)`` and
    ``((colors[:, None] - cent) ** 2).sum(-1)`` (row order; channel 0, 1, 2), so the centroids and the
    ties are bit-for-bit those of the direct formulas.
    """
    if colors.dtype == np.float64:
        sums = np.stack([np.bincount(idx, weights=colors[:, j], minlength=n_classes) for j in range(3)], axis=1)
    else:  # bincount adds in float64; other dtypes sum in their own precision
        sums = np.stack([colors[idx == k].sum(0) for k in range(n_classes)])
    counts = np.bincount(idx, minlength=n_classes).astype(float)
    cent = sums / counts[:, None]
    d = np.empty((len(idx), n_classes))
    for a in range(0, len(idx), _CHUNK):
        x = colors[a:a + _CHUNK]
        d[a:a + _CHUNK] = ((x[:, 0:1] - cent[:, 0]) ** 2 + (x[:, 1:2] - cent[:, 1]) ** 2
                           + (x[:, 2:3] - cent[:, 2]) ** 2)  # (n, C)
    own_n = counts[idx]
    loo = np.where((own_n > 1)[:, None], (sums[idx] - colors) / np.maximum(own_n - 1, 1)[:, None], np.nan)
    d[np.arange(len(idx)), idx] = np.where(own_n > 1, ((colors - loo) ** 2).sum(-1), np.inf)
    cue = d.argmin(1)
    return cue, cent, float((cue == idx).mean())


def colour_null(colors: np.ndarray, labels: np.ndarray, n_perm: int = 200, seed: int = 0,
                max_n: int = 5000) -> float:
    """95th percentile of the leave-one-out accuracy when labels are shuffled: what colour "predicts"
    by chance at this sample size (small samples make nearest-centroid look informative)."""
    rng = np.random.default_rng(seed)
    if len(labels) > max_n:
        keep = rng.choice(len(labels), max_n, replace=False)
        colors, labels = colors[keep], labels[keep]
    classes, idx = _class_codes(labels)
    # Shuffling the codes draws the same permutation as shuffling the labels (same length, same stream).
    accs = [_nearest_centroid(colors, rng.permutation(idx), len(classes))[2] for _ in range(n_perm)]
    return float(np.quantile(accs, 0.95))


def bg_colours(cells: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``bg_color`` cells -> ((N,) which are a finite RGB triple, (M, 3) float64 of those, in order).

    A usable cell is a list or array of 3 finite numbers (None, NaN and odd shapes are not). The usual
    column (float32 arrays and None, from Arrow) is checked and stacked without a Python loop per row.
    """
    cells = np.asarray(cells, dtype=object) if not isinstance(cells, np.ndarray) else cells
    present = ~pd.isna(cells)
    sub = cells[present]
    if set(map(type, sub)) <= {list, np.ndarray}:
        lengths = np.fromiter(map(len, sub), dtype=np.int64, count=len(sub))
        three = lengths == 3
        try:
            flat = np.concatenate(sub[three]) if three.any() else np.empty(0)
        except ValueError:  # arrays of different ranks: take the careful path
            flat = None
        if flat is not None and flat.ndim == 1 and flat.dtype.kind in "biuf" and len(flat) == 3 * three.sum():
            rgb = flat.reshape(-1, 3).astype(float)
            finite = np.isfinite(rgb).all(1)
            ok = np.zeros(len(cells), dtype=bool)
            ok[np.flatnonzero(present)[three]] = finite
            return ok, rgb[finite]
    ok = np.array([isinstance(c, list | np.ndarray) and len(c) == 3 and bool(np.all(np.isfinite(c)))
                   for c in cells], dtype=bool)
    rgb = np.stack([np.asarray(c, dtype=float) for c in cells[ok]]) if ok.any() else np.empty((0, 3))
    return ok, rgb


def background_colour(df: pd.DataFrame, so: StatOptions) -> BgColourEvidence:
    cols = ("label", "correct", "pred", "pred_score", "background_share", "image_id", "bg_color")
    d = narrow(df, df.scored & df.label.notna() & df.correct.notna(), cols)
    ok, rgb = bg_colours(d.bg_color.to_numpy())
    d = d[ok]
    if len(d) < 2 or d.label.nunique() < 2:
        return BgColourEvidence(n=len(d))
    colors = rgb / 255.0
    labels = d.label.to_numpy(dtype=object)
    classes, idx = _class_codes(labels)
    cue_k, cent, acc = _nearest_centroid(colors, idx, len(classes))
    cue = np.array(classes, dtype=object)[cue_k]
    aligned = cue_k == idx
    right = d.correct.to_numpy() > 0.5
    conf = ~aligned
    wrong_conf = d[conf & ~right]
    bshare = d.background_share.to_numpy()
    ev = BgColourEvidence(
        n=len(d),
        predictiveness=acc,
        chance=float(np.bincount(idx).max() / len(idx)),  # value_counts(normalize=True).iloc[0]
        null95=colour_null(colors, labels, seed=so.seed),
        n_aligned=int(aligned.sum()),
        n_conflicting=int(conf.sum()),
        acc_aligned=so.rate(right[aligned].astype(float)),
        acc_conflicting=so.rate(right[conf].astype(float)),
        gap=so.rate_diff(right[aligned].astype(float), right[conf].astype(float)),
        follow_rate=so.rate((d.pred.to_numpy(dtype=object)[conf] == cue[conf]).astype(float)),
        bg_share_gap=so.diff(bshare[conf & ~right], bshare[conf & right]),
        centroids={c: [float(v * 255) for v in cent[k]] for k, c in enumerate(classes)},
        examples=example_ids(wrong_conf, "pred_score", so.examples, ascending=False),
    )
    return ev


# ---------------------------------------------------------------------------------------------
# Co-occurring objects


@dataclass
class CooccurrencePair:
    label: str
    category: str
    n_with: int  # images of `label` that contain `category`
    rate: float  # P(category present | label)
    mass: Estimate  # CAM mass on the category in those images
    area: float  # mean area of the category there
    lift: Estimate  # chance-corrected mass: (mass - area) / (1 - area)


@dataclass
class CooccurrenceEvidence:
    pairs: list[CooccurrencePair] = field(default_factory=list)
    associations: dict[str, str] = field(default_factory=dict)  # category -> class it signals
    n_aligned: int = 0
    n_conflicting: int = 0
    acc_aligned: Estimate = NAN
    acc_conflicting: Estimate = NAN
    gap: Estimate = NAN
    cue_mass: Estimate = NAN  # mass on the associated category, aligned images (the keyboard of the mouse)
    cue_lift: Estimate = NAN  # chance-corrected: (mass - area) / (1 - area), judged by cooccurrence_cue
    examples: list[str] = field(default_factory=list)
    context: ContextAblationEvidence = field(default_factory=ContextAblationEvidence)  # on aligned images


def associations(df: pd.DataFrame, min_n: int, min_lift: float = 0.2) -> dict[str, str]:
    """category -> the class it signals: P(class | category present) exceeds the base rate by min_lift."""
    d = narrow(df, df.label.notna(), ("label", "other_areas"))
    if d.empty:
        return {}
    rows, cats, _ = _entries(d.other_areas.to_numpy())
    return _associations(d.label, rows, cats, min_n, min_lift)


def _associations(label: pd.Series, rows: np.ndarray, cats: list[Any], min_n: int,
                  min_lift: float) -> dict[str, str]:
    """:func:`associations` over exploded ``other_areas`` entries (``rows`` index ``label``'s positions)."""
    base = label.value_counts(normalize=True)
    labels = label.to_numpy(dtype=object)
    codes, uniques = pd.factorize(np.asarray(cats, dtype=object), use_na_sentinel=False)  # first-seen order
    out = {}
    for k, cat in enumerate(uniques.tolist()):
        labs = labels[rows[codes == k]].tolist()  # in row order, as a row-by-row scan collects them
        if len(labs) < min_n:
            continue
        p = pd.Series(labs).value_counts(normalize=True)
        top = str(p.index[0])
        if p.iloc[0] - base.get(top, 0.0) >= min_lift:
            out[cat] = top
    return out


def cooccurrence(df: pd.DataFrame, so: StatOptions) -> CooccurrenceEvidence:
    cols = tuple(dict.fromkeys(("label", "correct", "pred_score", "image_id", "other_areas", "other_shares",
                                *ABLATION_COLUMNS)))
    d = narrow(df, df.scored & df.label.notna(), cols)
    if d.empty:
        return CooccurrenceEvidence()
    n = len(d)
    labels = d.label.to_numpy(dtype=object)
    areas_cells, shares_cells = d.other_areas.to_numpy(), d.other_shares.to_numpy()
    # Every (image, category) entry of other_areas, in row order: the per-class loops become masks.
    rows, cats, area_vals = _entries(areas_cells)
    cat_codes, cat_names = pd.factorize(np.asarray(cats, dtype=object), use_na_sentinel=False)
    cat_names = list(cat_names)
    mass_all = np.array([shares_cells[r].get(c, np.nan) for r, c in zip(rows.tolist(), cats, strict=True)],
                        dtype=float)
    area_all = np.array(area_vals, dtype=float)
    sizes = d.groupby("label").size()
    lab_pos = sizes.index.get_indexer(labels)[rows]  # each entry's class, as a position in sizes
    pairs = []
    for pos, (lab, size) in enumerate(sizes.items()):
        mine = np.flatnonzero(lab_pos == pos)
        here = cat_codes[mine]
        for k in sorted(np.unique(here).tolist(), key=cat_names.__getitem__):  # categories by name
            cat = cat_names[k]
            sel = mine[here == k]
            mass, area = mass_all[sel], area_all[sel]
            with np.errstate(divide="ignore", invalid="ignore"):
                lift = (mass - area) / (1 - area)
            pairs.append(CooccurrencePair(str(lab), cat, len(sel), len(sel) / int(size), so.mean(mass),
                                          float(np.nanmean(area)) if np.isfinite(area).any() else float("nan"),
                                          so.mean(lift)))
    assoc = _associations(d.label, rows, cats, so.min_support, 0.2)
    ev = CooccurrenceEvidence(pairs=pairs, associations=assoc)
    if not assoc:
        return ev
    signal = np.array([assoc.get(c) for c in cats], dtype=object)
    signals = np.array([c in assoc for c in cats], dtype=bool)
    own = signals & (signal == labels[rows])
    n_signals = np.bincount(rows[signals], minlength=n)
    n_own = np.bincount(rows[own], minlength=n)
    aligned = (n_own > 0) & (n_own == n_signals)  # signals == {label}
    conflicting = (n_signals > 0) & (n_own == 0)  # signals, none of them the label
    sel = np.flatnonzero(own & aligned[rows])
    sel_rows = rows[sel]
    # Summed entry by entry in row order, as Python's sum() over each image's own categories.
    m_vals = [float(shares_cells[r].get(cats[j]) or 0.0)
              for r, j in zip(sel_rows.tolist(), sel.tolist(), strict=True)]
    a_vals = [float(area_vals[j] or 0.0) for j in sel.tolist()]
    m = np.bincount(sel_rows, weights=np.asarray(m_vals, dtype=float), minlength=n)
    a = np.bincount(sel_rows, weights=np.asarray(a_vals, dtype=float), minlength=n)
    own_mass = np.where(aligned, m, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        own_lift = np.where(aligned & (a < 1), (m - a) / (1 - a), np.nan)
    right = d.correct.to_numpy(dtype=float)
    ev.n_aligned, ev.n_conflicting = int(aligned.sum()), int(conflicting.sum())
    ev.acc_aligned = so.rate(right[aligned])
    ev.acc_conflicting = so.rate(right[conflicting])
    ev.gap = so.rate_diff(right[aligned], right[conflicting])
    ev.cue_mass = so.mean(own_mass[aligned])
    ev.cue_lift = so.mean(own_lift[aligned])
    ev.examples = example_ids(d[conflicting & (right < 0.5)], "pred_score", so.examples, ascending=False)
    ev.context = context_ablation(d, aligned, so)
    return ev


# ---------------------------------------------------------------------------------------------
# Attributes (worst-group accuracy within each label)


@dataclass
class AttributeGroup:
    """The images of one label with one value of an attribute, against the label's other values."""

    label: str
    value: str
    n: int
    accuracy: Estimate = NAN  # of (label, value)
    rest: Estimate = NAN  # of the label's images with another value
    gap: Estimate = NAN  # rest - accuracy: how much worse this value does within its own label
    examples: list[str] = field(default_factory=list)  # its misclassified images, most confident first


@dataclass
class AttributeGap:
    attribute: str
    groups: list[AttributeGroup]


def attribute_gaps(df: pd.DataFrame, so: StatOptions, attributes: list[str] | None = None,
                   max_values: int = 20) -> list[AttributeGap]:
    """Per attribute with 2..max_values values: every (label, value) group's accuracy against the
    same label's other values (Newcombe interval). Comparing within the label keeps a class that is
    merely harder out: its values all do alike, so its gaps are near 0."""
    d = narrow(df, df.scored & df.correct.notna() & df.label.notna(),
                ("label", "correct", "pred_score", "image_id", "attributes"))
    if d.empty:
        return []
    cells = d.attributes.to_numpy()
    keys = sorted(set(chain.from_iterable(cells))) if attributes is None else list(attributes)
    base = d[["label", "correct", "pred_score", "image_id"]]
    out = []
    for key in keys:
        vals = pd.Series([a.get(key) for a in cells], index=d.index)
        has = vals.notna()
        if vals[has].nunique() < 2 or vals[has].nunique() > max_values:
            continue
        sub = base[has].assign(_v=vals[has])
        counts = sub.groupby(["label", "_v"]).correct.agg(["size", "sum"])  # sorted by (label, value)
        per_label = counts.groupby(level=0).sum()
        rest = per_label.reindex(counts.index.get_level_values(0)).to_numpy() - counts.to_numpy()
        wrong = sub[sub.correct < 0.5]
        wrong_by = dict(list(wrong.groupby(["label", "_v"])))
        groups = []
        for ((lab, v), (n, k)), (n_rest, k_rest) in zip(counts.iterrows(), rest, strict=True):
            n, k, n_rest, k_rest = int(n), int(k), int(n_rest), int(k_rest)
            groups.append(AttributeGroup(
                label=str(lab), value=str(v), n=n,
                accuracy=rate_from_counts(k, n, so.conf), rest=rate_from_counts(k_rest, n_rest, so.conf),
                gap=rate_diff_from_counts(k_rest, n_rest, k, n, so.conf),
                examples=example_ids(wrong_by.get((lab, v), wrong.iloc[:0]), "pred_score", so.examples,
                                   ascending=False),
            ))
        out.append(AttributeGap(key, groups))
    return out


# ---------------------------------------------------------------------------------------------
# Counterfactual backgrounds


@dataclass
class CounterfactualEvidence:
    n: int = 0
    flip_fill: Estimate = NAN
    flip_rand: Estimate = NAN
    flip_same: Estimate = NAN
    acc_original: Estimate = NAN
    acc_fill: Estimate = NAN
    acc_rand: Estimate = NAN
    acc_same: Estimate = NAN
    bg_gap: Estimate = NAN  # acc(Mixed-Same) - acc(Mixed-Rand), paired; flip-based without labels
    drop_rand: Estimate = NAN  # target probability lost under Mixed-Rand
    drop_same: Estimate = NAN
    by_class: dict[str, Estimate] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


def counterfactual(df: pd.DataFrame, so: StatOptions) -> CounterfactualEvidence:
    if "cf_rand_pred" not in df:
        return CounterfactualEvidence()
    cols = ("pred", "label", "correct", "pred_score", "image_id", "target_score", "cf_fill_pred", "cf_rand_pred",
            "cf_same_pred", "cf_rand_score", "cf_same_score")
    d = narrow(df, df.scored & df.cf_rand_pred.notna() & df.cf_same_pred.notna(), cols)
    if d.empty:
        return CounterfactualEvidence()
    flip = {k: differs(d[f"cf_{k}_pred"], d.pred).astype(float) for k in ("fill", "rand", "same")}
    flip["fill"][d.cf_fill_pred.isna().to_numpy()] = np.nan
    labelled = d.label.notna().to_numpy()
    ev = CounterfactualEvidence(n=len(d), flip_fill=so.rate(flip["fill"]), flip_rand=so.rate(flip["rand"]),
                                flip_same=so.rate(flip["same"]))
    ev.drop_rand = so.mean(d.target_score - d.cf_rand_score)
    ev.drop_same = so.mean(d.target_score - d.cf_same_score)
    if labelled.mean() > 0.5:
        acc = {k: (~differs(d[f"cf_{k}_pred"], d.label)).astype(float) for k in ("fill", "rand", "same")}
        ev.acc_original = so.rate(d.correct)
        ev.acc_fill, ev.acc_rand, ev.acc_same = so.rate(acc["fill"]), so.rate(acc["rand"]), so.rate(acc["same"])
        ev.bg_gap = so.paired_rate_diff(acc["same"][labelled], acc["rand"][labelled])
        codes, uniques = pd.factorize(d.label)  # one hash pass instead of an object comparison per class
        uniques = list(uniques)
        for c in sorted(uniques):  # the labels present, as sorted(set(labels))
            m = codes == uniques.index(c)
            ev.by_class[str(c)] = so.paired_rate_diff(acc["same"][m], acc["rand"][m])
    else:
        ev.bg_gap = so.paired_rate_diff(flip["rand"], flip["same"])
    bad = d[(flip["rand"] > 0.5) & (flip["same"] < 0.5)]
    ev.examples = example_ids(bad, "pred_score", so.examples, ascending=False)
    return ev
