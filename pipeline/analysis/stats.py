"""Estimates with uncertainty: score intervals for rates, bootstrap CIs for continuous statistics.

Every number the gate judges carries its sample size and a confidence interval, so a check flags
only when the evidence is statistically clear (the whole interval beyond the threshold).

- **Rates** (accuracy, flip and pointing rates: 0/1 per image) get Wilson score intervals (Wilson
  1927), which keep their coverage at 0/n, n/n and a handful of images where the bootstrap and the
  normal approximation collapse to a zero-width interval.
- **Differences of two rates** on independent groups (cue-aligned vs -conflicting images) get
  Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two Wilson intervals;
  0/6 against 96/96 gives [0.61, 1.00] where a bootstrap gives [1, 1].
- **Paired differences of rates** (the same images under two conditions: BG-Gap, the accuracy drop
  against a baseline) get Newcombe's paired interval (Newcombe 1998b, method 10), which adds the
  correlation of the pairs (the phi coefficient, shrunk towards 0 as Newcombe recommends).
- **Continuous statistics** (object lift, mass) keep the percentile bootstrap (Efron & Tibshirani
  1993); above :data:`BOOTSTRAP_MAX_N` rows the normal approximation of the mean is
  indistinguishable from it for these bounded statistics and keeps a million-row aggregation to
  seconds.

An :class:`Estimate` records how its interval was obtained (``method``) and, for the score
intervals, the counts it came from, so :func:`p_beyond` can invert the interval: the one-sided
p-value of "the true value lies beyond a threshold" is the level at which the interval's bound
reaches the threshold. Holm's procedure (:func:`holm`) uses these to correct families of findings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

BOOTSTRAP_MAX_N = 2000
_Z = {0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}
WILSON, NEWCOMBE, NEWCOMBE_PAIRED, BOOTSTRAP, NORMAL = "wilson", "newcombe", "newcombe_paired", "bootstrap", "normal"
SCORE_METHODS = (WILSON, NEWCOMBE, NEWCOMBE_PAIRED)


@dataclass(frozen=True)
class Estimate:
    """A statistic with its ``confidence`` interval ``[lo, hi]`` over ``n`` samples (NaN when n == 0).

    ``n`` is the smallest compared group for a difference of independent rates and the number of
    pairs for a paired one. ``method`` names how the interval was obtained (``wilson``,
    ``newcombe``, ``newcombe_paired``, ``bootstrap``, ``normal``; empty without an interval) and
    ``counts`` holds what a score interval was computed from: ``(k, n)`` for a rate,
    ``(k1, n1, k2, n2)`` for ``k1/n1 - k2/n2``, and ``(a, b, c, d)`` for a paired table (a: both
    conditions 1, b: first only, c: second only, d: neither).
    """

    value: float
    lo: float
    hi: float
    n: int
    method: str = ""
    counts: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.n > 0 and math.isfinite(self.value)

    @property
    def has_interval(self) -> bool:
        return self.ok and math.isfinite(self.lo) and math.isfinite(self.hi)

    def to_dict(self) -> dict[str, object]:
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        d["counts"] = list(self.counts)
        return d

    def fmt(self, pct: bool = False) -> str:
        if not self.ok:
            return "n/a"
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{f(self.value)} (n={self.n})"
        return f"{f(self.value)} [{f(self.lo)}, {f(self.hi)}] (n={self.n})"

    def sizes(self) -> str:
        """How much evidence the interval rests on, in words: ``96 vs 6 images``, ``120 paired images``."""
        if self.method == NEWCOMBE and len(self.counts) == 4:
            return f"{self.counts[1]} vs {self.counts[3]} images"
        if self.method == NEWCOMBE_PAIRED:
            return f"{self.n} paired images"
        return f"{self.n} images"


def short(est: Estimate, pct: bool = False) -> str:
    """Compact form for table cells: ``0.75 [0.63, 0.85]`` (the n is in its own column)."""
    if not est.ok:
        return "-"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.2f}")
    if not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return f(est.value)
    return f"{f(est.value)} [{f(est.lo)}, {f(est.hi)}]"


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


def z_of(conf: float) -> float:
    """The two-sided normal quantile of a confidence level (1.96 for 0.95)."""
    if conf in _Z:
        return _Z[conf]
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + conf / 2)


def _sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal, P(Z > z) (erfc keeps its precision far out in the tail)."""
    return np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in np.ravel(z)]).reshape(np.shape(z))


def _clean(x: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


# ---------------------------------------------------------------------------------------------
# Score intervals for rates and their differences


def wilson_bounds(k: np.ndarray | float, n: np.ndarray | float,
                  z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``k/n`` at normal quantile ``z`` (broadcast over all three; NaN at n = 0).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``: the rates a score test at level z does
    not reject, so 0/n still has a positive upper bound (Wilson 1927; Newcombe 1998, method 3).
    """
    k, n, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (k, n, z)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        z2 = z * z
        denom = 1 + z2 / n
        centre = (p + z2 / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0))
    bad = ~(n > 0)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def newcombe_bounds(k1: np.ndarray | float, n1: np.ndarray | float, k2: np.ndarray | float,
                    n2: np.ndarray | float, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for ``k1/n1 - k2/n2``, independent groups (Newcombe 1998, method 10).

    With Wilson intervals ``[l1, u1]``, ``[l2, u2]`` of the two rates and ``d = p1 - p2``:
    ``[d - sqrt((p1-l1)² + (u2-p2)²),  d + sqrt((u1-p1)² + (p2-l2)²)]``.
    """
    k1, n1, k2, n2 = (np.asarray(v, dtype=np.float64) for v in (k1, n1, k2, n2))
    l1, u1 = wilson_bounds(k1, n1, z)
    l2, u2 = wilson_bounds(k2, n2, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return np.clip(lo, -1.0, 1.0), np.clip(hi, -1.0, 1.0)


def paired_phi(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Newcombe's (1998b) correlation of a paired 2x2 table, ``C / sqrt((a+b)(c+d)(a+c)(b+d))``.

    ``C = ad - bc`` shrunk towards 0: ``ad - bc - n/2`` when that is positive, 0 when
    ``0 <= ad - bc <= n/2``, ``ad - bc`` when negative; 0 when a margin is empty.
    """
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (a, b, c, d))
    n = a + b + c + d
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    num = np.where(cross > n / 2, cross - n / 2, np.where(cross < 0, cross, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(margins > 0, num / np.sqrt(margins), 0.0)


def paired_newcombe_bounds(a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float,
                           d: np.ndarray | float, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's interval for ``p1 - p2 = (b - c) / n`` on paired data (Newcombe 1998b, method 10).

    ``a``: pairs with both outcomes 1, ``b``: the first only, ``c``: the second only, ``d``: neither.
    With Wilson intervals of ``p1 = (a+b)/n`` and ``p2 = (a+c)/n`` and phi from :func:`paired_phi`:
    ``L = θ - sqrt(dl1² - 2φ·dl1·du2 + du2²)``, ``U = θ + sqrt(du1² - 2φ·du1·dl2 + dl2²)`` where
    ``dl1 = p1 - l1``, ``du2 = u2 - p2``, ``du1 = u1 - p1``, ``dl2 = p2 - l2`` (the square-and-add
    interval of Fagerland, Lydersen & Laake 2017, ch. 8).
    """
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (a, b, c, d))
    n = a + b + c + d
    l1, u1 = wilson_bounds(a + b, n, z)
    l2, u2 = wilson_bounds(a + c, n, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2, theta = (a + b) / n, (a + c) / n, (b - c) / n
    phi = paired_phi(a, b, c, d)
    dl1, du2, du1, dl2 = p1 - l1, u2 - p2, u1 - p1, p2 - l2
    lo = theta - np.sqrt(np.maximum(dl1 ** 2 - 2 * phi * dl1 * du2 + du2 ** 2, 0.0))
    hi = theta + np.sqrt(np.maximum(du1 ** 2 - 2 * phi * du1 * dl2 + dl2 ** 2, 0.0))
    return np.clip(lo, -1.0, 1.0), np.clip(hi, -1.0, 1.0)


_BOUNDS = {WILSON: wilson_bounds, NEWCOMBE: newcombe_bounds, NEWCOMBE_PAIRED: paired_newcombe_bounds}


def _binary(x: np.ndarray | list[float], what: str) -> np.ndarray:
    a = _clean(x)
    if ((a != 0) & (a != 1)).any():
        raise ValueError(f"{what}: a rate needs 0/1 values, got {np.unique(a[(a != 0) & (a != 1)])[:5].tolist()}")
    return a


def rate_from_counts(k: int, n: int, conf: float = 0.95) -> Estimate:
    """``k/n`` with its Wilson score interval."""
    if n <= 0:
        return NAN
    lo, hi = wilson_bounds(k, n, z_of(conf))
    return Estimate(k / n, float(lo), float(hi), int(n), WILSON, (int(k), int(n)))


def rate_ci(x: np.ndarray | list[float], conf: float = 0.95) -> Estimate:
    """The mean of 0/1 values (NaN ignored) with its Wilson score interval."""
    a = _binary(x, "rate_ci")
    return rate_from_counts(int(a.sum()), len(a), conf)


def rate_diff_from_counts(k1: int, n1: int, k2: int, n2: int, conf: float = 0.95) -> Estimate:
    """``k1/n1 - k2/n2`` for independent groups with Newcombe's hybrid score interval; n = min(n1, n2)."""
    if n1 <= 0 or n2 <= 0:
        return NAN
    lo, hi = newcombe_bounds(k1, n1, k2, n2, z_of(conf))
    return Estimate(k1 / n1 - k2 / n2, float(lo), float(hi), int(min(n1, n2)), NEWCOMBE,
                    (int(k1), int(n1), int(k2), int(n2)))


def rate_diff_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], conf: float = 0.95) -> Estimate:
    """rate(a) - rate(b) for independent samples of 0/1 values (NaN ignored), Newcombe's interval."""
    x, y = _binary(a, "rate_diff_ci"), _binary(b, "rate_diff_ci")
    return rate_diff_from_counts(int(x.sum()), len(x), int(y.sum()), len(y), conf)


def paired_rate_diff_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], conf: float = 0.95) -> Estimate:
    """rate(a) - rate(b) over pairs of 0/1 values (the same images under two conditions; a pair with a
    NaN is dropped), with Newcombe's paired interval; n = the number of pairs."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = _binary(x[keep], "paired_rate_diff_ci").astype(bool), _binary(y[keep], "paired_rate_diff_ci").astype(bool)
    n = len(x)
    if n == 0:
        return NAN
    counts = (int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum()), int((~x & ~y).sum()))
    lo, hi = paired_newcombe_bounds(*counts, z_of(conf))
    return Estimate((counts[1] - counts[2]) / n, float(lo), float(hi), n, NEWCOMBE_PAIRED, counts)


# ---------------------------------------------------------------------------------------------
# Bootstrap (continuous statistics)


def mean_ci(x: np.ndarray | list[float], conf: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean with a percentile-bootstrap CI (normal approximation above BOOTSTRAP_MAX_N samples)."""
    a = _clean(x)
    n = len(a)
    if n == 0:
        return NAN
    m = float(a.mean())
    if n == 1:
        return Estimate(m, float("nan"), float("nan"), 1)
    if n > BOOTSTRAP_MAX_N:
        se = float(a.std(ddof=1)) / math.sqrt(n)
        z = z_of(conf)
        return Estimate(m, m - z * se, m + z * se, n, NORMAL)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = a[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return Estimate(m, float(lo), float(hi), n, BOOTSTRAP)


def median_ci(x: np.ndarray | list[float], conf: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Estimate:
    a = _clean(x)
    n = len(a)
    if n == 0:
        return NAN
    med = float(np.median(a))
    if n == 1:
        return Estimate(med, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    sample = a if n <= BOOTSTRAP_MAX_N else rng.choice(a, BOOTSTRAP_MAX_N, replace=False)
    idx = rng.integers(0, len(sample), size=(n_boot, len(sample)))
    boots = np.median(sample[idx], axis=1)
    # Subsampled medians are wider than the full sample's; rescale the spread by sqrt(m/n).
    scale = math.sqrt(len(sample) / n)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return Estimate(med, med - (med - float(lo)) * scale, med + (float(hi) - med) * scale, n, BOOTSTRAP)


def diff_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], conf: float = 0.95, n_boot: int = 1000,
            seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for independent samples, with a CI (bootstrap each group, or normal)."""
    x, y = _clean(a), _clean(b)
    if len(x) == 0 or len(y) == 0:
        return NAN
    d = float(x.mean() - y.mean())
    n = min(len(x), len(y))
    if len(x) < 2 or len(y) < 2:
        return Estimate(d, float("nan"), float("nan"), n)
    if max(len(x), len(y)) > BOOTSTRAP_MAX_N:
        se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
        z = z_of(conf)
        return Estimate(d, d - z * se, d + z * se, n, NORMAL)
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    by = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
    lo, hi = np.quantile(bx - by, [(1 - conf) / 2, (1 + conf) / 2])
    return Estimate(d, float(lo), float(hi), n, BOOTSTRAP)


def paired_diff_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], conf: float = 0.95,
                   n_boot: int = 1000, seed: int = 0) -> Estimate:
    """mean(a - b) over pairs (the same images under two conditions), with a CI."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
    return mean_ci(x - y, conf=conf, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------------------------
# p-values by inverting the intervals, and Holm's correction

Direction = Literal["above", "below"]
_Z_MAX = 40.0  # P(Z > 40) underflows to 0: the bisection's ceiling


def p_beyond(ests: Sequence[Estimate], thresholds: Sequence[float], direction: Sequence[Direction] | Direction,
             conf: float) -> np.ndarray:
    """One-sided p-values of "the true value lies beyond the threshold", one per estimate.

    For ``above`` the null hypothesis is ``θ <= t``; the p-value is ``P(Z > z*)`` where ``z*`` is the
    normal quantile at which the interval's lower bound reaches ``t`` (``1 - P(Z > z*)`` with the
    upper bound when the estimate itself is below ``t``); ``below`` mirrors it. So ``p < (1 - conf)/2``
    exactly when the interval printed at ``conf`` lies wholly beyond ``t``.

    Score intervals (``wilson``, ``newcombe``, ``newcombe_paired``) are inverted exactly, by bisection
    over ``z`` on their counts. Bootstrap and normal intervals are inverted on a normal
    approximation of the side facing ``t``: its half-width at ``conf`` scaled linearly in ``z``.
    NaN where an estimate has no interval.
    """
    m = len(ests)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (m,))
    dirs = np.broadcast_to(np.asarray(direction, dtype=object), (m,))
    value = np.array([e.value for e in ests], dtype=np.float64)
    has = np.array([e.has_interval for e in ests], dtype=bool)
    above = dirs == "above"
    beyond = np.where(above, value > t, value < t)
    use_lower = np.where(above, beyond, ~beyond)  # which bound moves towards t as z grows
    zstar = np.full(m, np.nan)
    z0 = z_of(conf)
    for i, e in enumerate(ests):
        if has[i] and e.method not in SCORE_METHODS:
            half = (e.value - e.lo) if use_lower[i] else (e.hi - e.value)
            gap = abs(e.value - t[i])
            zstar[i] = math.inf if half <= 0 and gap > 0 else (0.0 if gap == 0 else z0 * gap / half)
    for method in SCORE_METHODS:
        idx = np.flatnonzero(has & np.array([e.method == method for e in ests], dtype=bool))
        if len(idx):
            counts = np.array([ests[i].counts for i in idx], dtype=np.float64).T
            zstar[idx] = _invert(_BOUNDS[method], counts, t[idx], use_lower[idx])
    p_far = _sf(np.where(np.isfinite(zstar), zstar, _Z_MAX))
    p = np.where(beyond, p_far, 1 - p_far)
    return np.where(has, np.where(value == t, 0.5, p), np.nan)


def _invert(bounds, counts: np.ndarray, t: np.ndarray, use_lower: np.ndarray, steps: int = 60) -> np.ndarray:
    """The z at which the chosen bound reaches t (bisection on [0, _Z_MAX], all estimates at once).

    The lower bound of these score intervals falls and the upper rises as z grows, so
    ``g(z) = ±(bound(z) - t)`` starts at ``|value - t|`` and decreases through 0.
    """
    lo_z, hi_z = np.zeros(len(t)), np.full(len(t), _Z_MAX)
    sign = np.where(use_lower, 1.0, -1.0)
    for _ in range(steps):
        mid = (lo_z + hi_z) / 2
        lo_b, hi_b = bounds(*counts, mid)
        g = sign * (np.where(use_lower, lo_b, hi_b) - t)
        lo_z, hi_z = np.where(g > 0, mid, lo_z), np.where(g > 0, hi_z, mid)
    return (lo_z + hi_z) / 2


def holm(p: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """Holm's (1979) step-down procedure: which hypotheses to reject at family-wise error ``alpha``.

    Sort the m p-values; reject ``p_(1) .. p_(k)`` where ``k`` is the last i with
    ``p_(j) <= alpha / (m - j + 1)`` for every ``j <= i``. NaN p-values are untested: never
    rejected and not counted in m. Uniformly more powerful than Bonferroni, with the same
    family-wise guarantee and no assumption on the dependence between the tests.
    """
    p = np.asarray(p, dtype=np.float64)
    tested = np.flatnonzero(np.isfinite(p))
    reject = np.zeros(len(p), dtype=bool)
    m = len(tested)
    if m == 0:
        return reject
    order = tested[np.argsort(p[tested], kind="stable")]
    ok = p[order] <= alpha / (m - np.arange(m))
    k = m if ok.all() else int(np.argmin(ok))
    reject[order[:k]] = True
    return reject
