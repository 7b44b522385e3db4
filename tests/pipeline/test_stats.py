"""Score intervals, their inversion to p-values, and Holm: published values, statsmodels, brute force."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from pipeline.analysis.stats import (
    NAN,
    Estimate,
    holm,
    mean_ci,
    p_beyond,
    paired_newcombe_bounds,
    paired_rate_diff_ci,
    rate_ci,
    rate_diff_ci,
    rate_diff_from_counts,
    rate_from_counts,
    wilson_bounds,
    z_of,
)

# Newcombe (1998), Table II: the eight examples, method 10 (the brief's published (a); the others
# are checked against statsmodels below as well).
NEWCOMBE_1998 = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "want"), NEWCOMBE_1998)
def test_newcombe_hybrid_score_interval_matches_the_paper(counts, want):
    e = rate_diff_from_counts(*counts)
    assert (round(e.lo, 4), round(e.hi, 4)) == want
    assert e.value == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert e.n == min(counts[1], counts[3]) and e.method == "newcombe" and e.counts == counts


def test_rates_and_differences_agree_with_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.proportion")
    for k1, n1, k2, n2 in [*(c for c, _ in NEWCOMBE_1998), (0, 6, 96, 96), (96, 96, 0, 6), (3, 5, 7, 9),
                           (1, 1, 0, 1), (250, 1000, 2, 3)]:
        for conf in (0.9, 0.95, 0.99):
            e = rate_diff_from_counts(k1, n1, k2, n2, conf)
            lo, hi = sm.confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff", alpha=1 - conf)
            assert (e.lo, e.hi) == pytest.approx((lo, hi), abs=1e-12)
    for n in (1, 2, 6, 30, 1000):
        for k in sorted({0, 1, n // 3, n - 1, n} - {-1}):
            r = rate_from_counts(k, n)
            assert (r.lo, r.hi) == pytest.approx(sm.proportion_confint(k, n, method="wilson"), abs=1e-12)


def test_wilson_edges():
    assert rate_from_counts(0, 10).lo == 0.0 and rate_from_counts(0, 10).hi == pytest.approx(0.2775, abs=1e-4)
    assert rate_from_counts(10, 10).hi == 1.0 and rate_from_counts(10, 10).lo == pytest.approx(0.7225, abs=1e-4)
    assert rate_from_counts(0, 0) is NAN and rate_diff_from_counts(1, 2, 0, 0) is NAN
    lo, hi = wilson_bounds([0, 3], [5, 5], 0.0)  # zero width at z = 0: the point estimate
    assert lo.tolist() == [0.0, 0.6] and hi.tolist() == [0.0, 0.6]


def test_rates_from_values_drop_nan_and_refuse_non_binary():
    e = rate_ci([1, 0, np.nan, 1])
    assert (e.value, e.n, e.counts) == (2 / 3, 3, (2, 3))
    d = rate_diff_ci([1, 1, 1], [0, np.nan])
    assert d.counts == (3, 3, 0, 1) and d.n == 1
    with pytest.raises(ValueError, match="0/1 values"):
        rate_ci([0.5, 1.0])


def test_paired_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2017), ch. 8: complete response before and after consolidation
    # therapy (Cavo et al. 2012), Newcombe square-and-add: -0.0621 (95% CI -0.1186 to -0.0046).
    x = np.repeat([1, 1, 0, 0], [59, 6, 16, 80])
    y = np.repeat([1, 0, 1, 0], [59, 6, 16, 80])
    e = paired_rate_diff_ci(x, y)
    assert e.counts == (59, 6, 16, 80) and e.n == 161 and e.method == "newcombe_paired"
    assert (round(e.value, 4), round(e.lo, 4), round(e.hi, 4)) == (-0.0621, -0.1186, -0.0046)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_rate_diff_ci([1, 0], [1])
    assert paired_rate_diff_ci([1, np.nan], [np.nan, 1]) is NAN


def test_paired_interval_reduces_to_the_independent_one_without_correlation():
    # phi = 0 (|ad - bc| <= n/2 shrinks to 0): square-and-add of the two Wilson intervals, as Newcombe 1998.
    a, b, c, d = 10, 10, 10, 10
    lo, hi = paired_newcombe_bounds(a, b, c, d, z_of(0.95))
    ind = rate_diff_from_counts(a + b, 40, a + c, 40)
    assert (float(lo), float(hi)) == pytest.approx((ind.lo, ind.hi), abs=1e-12)


def test_paired_interval_covers_by_brute_force():
    """Coverage of the 95% paired interval over simulated tables: near nominal, also for 12 pairs."""
    rng = np.random.default_rng(0)
    for n, probs in ((12, (0.6, 0.15, 0.05, 0.2)), (40, (0.5, 0.2, 0.1, 0.2)), (200, (0.85, 0.08, 0.02, 0.05))):
        tables = rng.multinomial(n, probs, size=4000).T
        lo, hi = paired_newcombe_bounds(*tables, z_of(0.95))
        truth = probs[1] - probs[2]
        cover = float(((lo <= truth) & (truth <= hi)).mean())
        assert 0.93 <= cover <= 0.995, (n, cover)


def test_score_bounds_are_monotone_in_z():
    """Inverting an interval by bisection needs its bounds monotone in z; checked on every small table."""
    z = np.linspace(0, 12, 300)
    for t in itertools.product(range(6), repeat=4):
        if sum(t):
            lo, hi = paired_newcombe_bounds(*t, z)
            assert (np.diff(lo) <= 1e-12).all() and (np.diff(hi) >= -1e-12).all(), t


def test_p_beyond_inverts_the_interval():
    conf = 0.95
    alpha = (1 - conf) / 2
    rng = np.random.default_rng(1)
    ests = []
    for _ in range(150):
        n1, n2 = rng.integers(3, 60, 2)
        ests.append(rate_diff_from_counts(int(rng.integers(0, n1 + 1)), int(n1), int(rng.integers(0, n2 + 1)),
                                          int(n2), conf))
        ests.append(rate_from_counts(int(rng.integers(0, n1 + 1)), int(n1), conf))
        ests.append(paired_rate_diff_ci(rng.random(n1) < 0.6, rng.random(n1) < 0.4, conf))
        ests.append(mean_ci(rng.normal(0.1, 0.3, n2), conf, n_boot=200))
    for t in (-0.2, 0.0, 0.1, 0.2, 0.5):
        for direction in ("above", "below"):
            p = p_beyond(ests, t, direction, conf)
            beyond = np.array([e.lo > t if direction == "above" else e.hi < t for e in ests])
            near = np.array([min(abs(e.lo - t), abs(e.hi - t)) < 1e-9 for e in ests])
            assert ((p < alpha) == beyond)[~near].all()
    # Wilson: the inverted interval is the one-sided score test, in closed form.
    k, n, t = 30, 50, 0.45
    score = (k / n - t) / math.sqrt(t * (1 - t) / n)
    assert p_beyond([rate_from_counts(k, n)], t, "above", conf)[0] == pytest.approx(1 - NormalDist().cdf(score))
    assert p_beyond([rate_from_counts(k, n)], 0.6, "above", conf)[0] == 0.5  # on the threshold
    # The interval at level 1 - 2p has its bound exactly on the threshold.
    e = rate_diff_from_counts(96, 96, 0, 6)
    p = p_beyond([e], 0.2, "above", conf)[0]
    assert rate_diff_from_counts(96, 96, 0, 6, 1 - 2 * p).lo == pytest.approx(0.2, abs=1e-9)
    assert np.isnan(p_beyond([NAN, Estimate(0.1, math.nan, math.nan, 1)], 0.0, "above", conf)).all()


def test_holm_step_down():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    assert holm(p, 0.05).tolist() == [True, False, False, True, False]
    assert holm([0.01, 0.02], 0.05).tolist() == [True, True]  # 0.01 <= 0.025, then 0.02 <= 0.05
    assert holm([], 0.05).tolist() == []
    # The same decisions through Holm's adjusted p-values, max_{j<=i} (m - j + 1) p_(j) <= alpha.
    rng = np.random.default_rng(2)
    for _ in range(200):
        q = rng.random(12) ** 3
        order = np.argsort(q)
        adjusted = np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order])
        want = np.zeros(len(q), dtype=bool)
        want[order] = adjusted <= 0.025
        assert holm(q, 0.025).tolist() == want.tolist()
