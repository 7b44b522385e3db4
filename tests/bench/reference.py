"""The straightforward, row-by-row analysis that :mod:`pipeline.analysis` optimised: the oracle.

These are the pre-optimisation bodies of ``frame.prepare_frame`` / ``load_frame``, the cue analyses
of ``cues`` and ``evidence.group_stats`` / ``model_evidence`` / ``analyse``, in their plain form (a
Python loop per row over maps, colours and groups; attribute groups counted one by one). The
interval formulas they call (:mod:`pipeline.analysis.stats`) are shared: those are tested on their
own against published values and statsmodels (tests/pipeline/test_stats.py). ``tests/bench`` checks that the optimised functions
return exactly what these return; :mod:`bench.aggregate` times both on the same frame, so the
speed-up is measured on the same machine and load rather than quoted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.analysis.cues import (
    AttributeGap,
    AttributeGroup,
    BgColourEvidence,
    CooccurrenceEvidence,
    CooccurrencePair,
    CounterfactualEvidence,
    StatOptions,
)
from pipeline.analysis.evidence import ALL, GroupStats, ModelEvidence
from pipeline.analysis.frame import ANALYSIS_COLUMNS, object_lift
from pipeline.analysis.resolution import fine_evidence
from pipeline.analysis.stats import NAN, median_ci, rate_diff_from_counts, rate_from_counts
from pipeline.schema import map_to_dict, read_results


def prepare_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise types (maps -> dicts, nullable -> float) and add derived columns."""
    df = df.copy()
    for col in ("other_shares", "other_areas", "attributes", "fine_other_shares"):
        if col in df:
            df[col] = [map_to_dict(v) for v in df[col]]
    for col in ("correct", "pointing_hit", "fine_pointing_hit"):
        if col in df:
            df[col] = df[col].map(lambda v: np.nan if v is None or v is pd.NA else float(v)).astype(float)
    for col in ("object_share", "object_area", "object_cells", "background_share", "pred_score", "target_score",
                "cf_fill_score", "cf_rand_score", "cf_same_score", "cf_ctx_score", "cf_ctrl_score", "fine_object_share",
                "fine_object_cells", "fine_background_share"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "object_share" in df and "object_area" in df:
        df["object_lift"] = object_lift(df["object_share"], df["object_area"])
    if "fine_object_share" in df and "object_area" in df:
        df["fine_object_lift"] = object_lift(df["fine_object_share"], df["object_area"])
    if "error" in df:
        df["scored"] = df["error"].isna()
    return df


def load_frame(root: str | os.PathLike[str], models: Sequence[str] | None = None, as_of: str | None = None,
               columns: Sequence[str] = ANALYSIS_COLUMNS) -> pd.DataFrame:
    t = read_results(root, columns=list(columns), models=models, as_of=as_of)
    return prepare_frame(t.to_pandas())


def _examples(df: pd.DataFrame, order: str | None, k: int, ascending: bool = True) -> list[str]:
    if df.empty:
        return []
    d = df.sort_values(order, ascending=ascending) if order and order in df else df
    return [str(x) for x in d["image_id"].head(k)]


def colour_cue_class(colors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Leave-one-out nearest-centroid class of each background colour (N,3) -> (N,) labels.

    Leaving the image out of its own class centroid matters for small classes: otherwise every
    image is pulled towards its own label and the cue looks stronger than it is.
    """
    classes = sorted(set(labels))
    idx = np.array([classes.index(c) for c in labels])
    sums = np.stack([colors[idx == k].sum(0) for k in range(len(classes))])
    counts = np.bincount(idx, minlength=len(classes)).astype(float)
    cent = sums / counts[:, None]
    d = ((colors[:, None, :] - cent[None, :, :]) ** 2).sum(-1)  # (N, C)
    own_n = counts[idx]
    loo = np.where((own_n > 1)[:, None], (sums[idx] - colors) / np.maximum(own_n - 1, 1)[:, None], np.nan)
    d[np.arange(len(idx)), idx] = np.where(own_n > 1, ((colors - loo) ** 2).sum(-1), np.inf)
    pred = np.array(classes, dtype=object)[d.argmin(1)]
    acc = float((pred == labels).mean())
    return pred, {c: cent[k] for k, c in enumerate(classes)}, acc


def colour_null(colors: np.ndarray, labels: np.ndarray, n_perm: int = 200, seed: int = 0,
                max_n: int = 5000) -> float:
    """95th percentile of the leave-one-out accuracy when labels are shuffled: what colour "predicts"
    by chance at this sample size (small samples make nearest-centroid look informative)."""
    rng = np.random.default_rng(seed)
    if len(labels) > max_n:
        keep = rng.choice(len(labels), max_n, replace=False)
        colors, labels = colors[keep], labels[keep]
    accs = [colour_cue_class(colors, rng.permutation(labels))[2] for _ in range(n_perm)]
    return float(np.quantile(accs, 0.95))


def background_colour(df: pd.DataFrame, so: StatOptions) -> BgColourEvidence:
    d = df[df.scored & df.label.notna() & df.correct.notna()]
    d = d[[isinstance(c, list | np.ndarray) and len(c) == 3 and np.all(np.isfinite(c)) for c in d.bg_color]]
    if len(d) < 2 or d.label.nunique() < 2:
        return BgColourEvidence(n=len(d))
    colors = np.stack([np.asarray(c, dtype=float) for c in d.bg_color]) / 255.0
    labels = d.label.to_numpy(dtype=object)
    cue, cent, acc = colour_cue_class(colors, labels)
    aligned = cue == labels
    right = d.correct.to_numpy() > 0.5
    conf = ~aligned
    wrong_conf = d[conf & ~right]
    ev = BgColourEvidence(
        n=len(d),
        predictiveness=acc,
        chance=float(pd.Series(labels).value_counts(normalize=True).iloc[0]),
        null95=colour_null(colors, labels, seed=so.seed),
        n_aligned=int(aligned.sum()),
        n_conflicting=int(conf.sum()),
        acc_aligned=so.rate(right[aligned].astype(float)),
        acc_conflicting=so.rate(right[conf].astype(float)),
        gap=so.rate_diff(right[aligned].astype(float), right[conf].astype(float)),
        follow_rate=so.rate((d.pred.to_numpy(dtype=object)[conf] == cue[conf]).astype(float)),
        bg_share_gap=so.diff(d.background_share.to_numpy()[conf & ~right], d.background_share.to_numpy()[conf & right]),
        centroids={c: [float(v * 255) for v in x] for c, x in cent.items()},
        examples=_examples(wrong_conf, "pred_score", so.examples, ascending=False),
    )
    return ev


def associations(df: pd.DataFrame, min_n: int, min_lift: float = 0.2) -> dict[str, str]:
    """category -> the class it signals: P(class | category present) exceeds the base rate by min_lift."""
    d = df[df.label.notna()]
    if d.empty:
        return {}
    base = d.label.value_counts(normalize=True)
    present: dict[str, list[str]] = {}
    for lab, shares in zip(d.label, d.other_areas, strict=True):
        for cat in shares:
            present.setdefault(cat, []).append(lab)
    out = {}
    for cat, labs in present.items():
        if len(labs) < min_n:
            continue
        p = pd.Series(labs).value_counts(normalize=True)
        top = str(p.index[0])
        if p.iloc[0] - base.get(top, 0.0) >= min_lift:
            out[cat] = top
    return out


def cooccurrence(df: pd.DataFrame, so: StatOptions) -> CooccurrenceEvidence:
    d = df[df.scored & df.label.notna()]
    if d.empty:
        return CooccurrenceEvidence()
    pairs = []
    for lab, g in d.groupby("label"):
        cats = sorted({c for s in g.other_areas for c in s})
        for cat in cats:
            has = g[[cat in s for s in g.other_areas]]
            mass = np.array([s.get(cat, np.nan) for s in has.other_shares], dtype=float)
            area = np.array([s.get(cat, np.nan) for s in has.other_areas], dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                lift = (mass - area) / (1 - area)
            pairs.append(CooccurrencePair(str(lab), cat, len(has), len(has) / len(g), so.mean(mass),
                                          float(np.nanmean(area)) if len(area) else float("nan"), so.mean(lift)))
    assoc = associations(d, so.min_support)
    ev = CooccurrenceEvidence(pairs=pairs, associations=assoc)
    if not assoc:
        return ev
    aligned = np.zeros(len(d), bool)
    conflicting = np.zeros(len(d), bool)
    own_mass = np.full(len(d), np.nan)
    own_lift = np.full(len(d), np.nan)
    for i, (lab, areas, shares) in enumerate(zip(d.label, d.other_areas, d.other_shares, strict=True)):
        signals = {assoc[c] for c in areas if c in assoc}
        own = [c for c in areas if assoc.get(c) == lab]
        if own and signals == {lab}:
            aligned[i] = True
            m = sum(float(shares.get(c) or 0.0) for c in own)
            a = sum(float(areas.get(c) or 0.0) for c in own)
            own_mass[i] = m
            own_lift[i] = (m - a) / (1 - a) if a < 1 else np.nan
        elif signals and lab not in signals:
            conflicting[i] = True
    right = d.correct.to_numpy(dtype=float)
    ev.n_aligned, ev.n_conflicting = int(aligned.sum()), int(conflicting.sum())
    ev.acc_aligned = so.rate(right[aligned])
    ev.acc_conflicting = so.rate(right[conflicting])
    ev.gap = so.rate_diff(right[aligned], right[conflicting])
    ev.cue_mass = so.mean(own_mass[aligned])
    ev.cue_lift = so.mean(own_lift[aligned])
    ev.examples = _examples(d[conflicting & (right < 0.5)], "pred_score", so.examples, ascending=False)
    return ev


def attribute_gaps(df: pd.DataFrame, so: StatOptions, attributes: list[str] | None = None,
                   max_values: int = 20) -> list[AttributeGap]:
    d = df[df.scored & df.correct.notna() & df.label.notna()]
    if d.empty:
        return []
    keys = sorted({k for a in d.attributes for k in a}) if attributes is None else list(attributes)
    out = []
    for key in keys:
        vals = pd.Series([a.get(key) for a in d.attributes], index=d.index)
        has = vals.notna()
        if vals[has].nunique() < 2 or vals[has].nunique() > max_values:
            continue
        sub = d[has].assign(_v=vals[has])
        groups = []
        for (lab, v), g in sub.groupby(["label", "_v"]):
            rest = sub[(sub.label == lab) & (sub._v != v)]
            k, n = int(g.correct.sum()), len(g)
            k_rest, n_rest = int(rest.correct.sum()), len(rest)
            groups.append(AttributeGroup(
                label=str(lab), value=str(v), n=n,
                accuracy=rate_from_counts(k, n, so.conf), rest=rate_from_counts(k_rest, n_rest, so.conf),
                gap=rate_diff_from_counts(k_rest, n_rest, k, n, so.conf),
                examples=_examples(g[g.correct < 0.5], "pred_score", so.examples, ascending=False),
            ))
        out.append(AttributeGap(key, groups))
    return out


def counterfactual(df: pd.DataFrame, so: StatOptions) -> CounterfactualEvidence:
    if "cf_rand_pred" not in df:
        return CounterfactualEvidence()
    d = df[df.scored & df.cf_rand_pred.notna() & df.cf_same_pred.notna()]
    if d.empty:
        return CounterfactualEvidence()
    pred = d.pred.to_numpy(dtype=object)
    flip = {k: (d[f"cf_{k}_pred"].to_numpy(dtype=object) != pred).astype(float) for k in ("fill", "rand", "same")}
    flip["fill"][d.cf_fill_pred.isna().to_numpy()] = np.nan
    labelled = d.label.notna().to_numpy()
    ev = CounterfactualEvidence(n=len(d), flip_fill=so.rate(flip["fill"]), flip_rand=so.rate(flip["rand"]),
                                flip_same=so.rate(flip["same"]))
    ev.drop_rand = so.mean(d.target_score - d.cf_rand_score)
    ev.drop_same = so.mean(d.target_score - d.cf_same_score)
    if labelled.mean() > 0.5:
        lab = d.label.to_numpy(dtype=object)
        acc = {k: (d[f"cf_{k}_pred"].to_numpy(dtype=object) == lab).astype(float) for k in ("fill", "rand", "same")}
        ev.acc_original = so.rate(d.correct)
        ev.acc_fill, ev.acc_rand, ev.acc_same = so.rate(acc["fill"]), so.rate(acc["rand"]), so.rate(acc["same"])
        ev.bg_gap = so.paired_rate_diff(acc["same"][labelled], acc["rand"][labelled])
        for c in sorted(set(lab[labelled])):
            m = lab == c
            ev.by_class[str(c)] = so.paired_rate_diff(acc["same"][m], acc["rand"][m])
    else:
        ev.bg_gap = so.paired_rate_diff(flip["rand"], flip["same"])
    bad = d[(flip["rand"] > 0.5) & (flip["same"] < 0.5)]
    ev.examples = _examples(bad, "pred_score", so.examples, ascending=False)
    return ev


def group_stats(key: str, d: pd.DataFrame, so: StatOptions) -> GroupStats:
    ok = d[d.scored]
    off = (ok.object_share < 0.5).astype(float).where(ok.object_share.notna())
    return GroupStats(
        key=key,
        n=len(d),
        scored=len(ok),
        accuracy=so.rate(ok.correct),
        object_share=so.mean(ok.object_share),
        object_share_median=median_ci(ok.object_share, so.conf, so.n_boot, so.seed),
        object_area=so.mean(ok.object_area),
        object_lift=so.mean(ok.object_lift),
        pointing=so.rate(ok.pointing_hit),
        off_object=so.rate(off),
        background_share=so.mean(ok.background_share),
        worst=[str(x) for x in ok[ok.object_share.notna()].nsmallest(so.examples, "object_share").image_id],
    )


def model_evidence(model: str, d: pd.DataFrame, so: StatOptions, attributes: list[str] | None = None) -> ModelEvidence:
    ok = d[d.scored]
    kinds = d.error_kind[d.error.notna()].fillna("error").value_counts().to_dict()
    layer = ok.feature_layer.dropna().iloc[0] if ok.feature_layer.notna().any() else None
    hw = None
    if ok.cam_h.notna().any():
        hw = (int(ok.cam_h.dropna().iloc[0]), int(ok.cam_w.dropna().iloc[0]))
    cells = ok.object_cells.dropna()
    cf = counterfactual(d, so)
    classes = []
    for lab, g in d[d.label.notna()].groupby("label"):
        gs = group_stats(str(lab), g, so)
        gs.cf_bg_gap = cf.by_class.get(str(lab), NAN)
        classes.append(gs)
    overall = group_stats(ALL, d, so)
    overall.cf_bg_gap = cf.bg_gap
    return ModelEvidence(
        model=model,
        images=len(d),
        errors=int(d.error.notna().sum()),
        errors_by_kind={str(k): int(v) for k, v in kinds.items()},
        feature_layer=layer,
        cam_hw=hw,
        median_object_cells=float(cells.median()) if len(cells) else float("nan"),
        overall=overall,
        classes=classes,
        bg_colour=background_colour(d, so),
        cooccurrence=cooccurrence(d, so),
        counterfactual=cf,
        attributes=attribute_gaps(d, so, attributes),
        run_ids=sorted(d.run_id.dropna().unique().tolist()),
        fine=fine_evidence(d, so, group_stats, cooccurrence, ALL),
    )


def analyse(df: pd.DataFrame, so: StatOptions | None = None, models: list[str] | None = None,
            attributes: list[str] | None = None) -> dict[str, ModelEvidence]:
    so = so or StatOptions()
    names = models or sorted(df.model.dropna().unique())
    return {m: model_evidence(m, df[df.model == m], so, attributes) for m in names}
