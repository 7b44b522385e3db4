"""Estimates with uncertainty: percentile-bootstrap CIs, normal approximation for large samples.

Every number the gate judges carries its sample size and a confidence interval, so a check flags
only when the evidence is statistically clear (the whole interval beyond the threshold). The
bootstrap (Efron & Tibshirani 1993) is exact-enough and assumption-light for the small per-class
samples where it matters; above :data:`BOOTSTRAP_MAX_N` rows the normal approximation of the
mean is indistinguishable from it for these bounded statistics and keeps a million-row
aggregation to seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_MAX_N = 2000
_Z = {0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


@dataclass(frozen=True)
class Estimate:
    """A statistic with its ``confidence`` interval ``[lo, hi]`` over ``n`` samples (NaN when n == 0)."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def ok(self) -> bool:
        return self.n > 0 and math.isfinite(self.value)

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def fmt(self, pct: bool = False) -> str:
        if not self.ok:
            return "n/a"
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{f(self.value)} (n={self.n})"
        return f"{f(self.value)} [{f(self.lo)}, {f(self.hi)}] (n={self.n})"


def short(est: Estimate, pct: bool = False) -> str:
    """Compact form for table cells: ``0.75 [0.63, 0.85]`` (the n is in its own column)."""
    if not est.ok:
        return "-"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.2f}")
    if not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return f(est.value)
    return f"{f(est.value)} [{f(est.lo)}, {f(est.hi)}]"


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _z(conf: float) -> float:
    if conf in _Z:
        return _Z[conf]
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + conf / 2)


def _clean(x: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


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
        z = _z(conf)
        return Estimate(m, m - z * se, m + z * se, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = a[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return Estimate(m, float(lo), float(hi), n)


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
    return Estimate(med, med - (med - float(lo)) * scale, med + (float(hi) - med) * scale, n)


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
        z = _z(conf)
        return Estimate(d, d - z * se, d + z * se, n)
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    by = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
    lo, hi = np.quantile(bx - by, [(1 - conf) / 2, (1 + conf) / 2])
    return Estimate(d, float(lo), float(hi), n)


def paired_diff_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], conf: float = 0.95,
                   n_boot: int = 1000, seed: int = 0) -> Estimate:
    """mean(a - b) over pairs (the same images under two conditions), with a CI."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
    return mean_ci(x - y, conf=conf, n_boot=n_boot, seed=seed)
