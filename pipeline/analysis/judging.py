"""The policy's condition: findings -> PASS / WARN / FAIL / SKIP, with no cliff at a sample size.

A finding is judged on its confidence interval (at the policy's ``confidence``) against the warn
and fail thresholds of its statistic, for "above is bad" (``direction="above"``):

- **FAIL** when the interval lies wholly above ``fail`` (``lo > fail``), **WARN** when wholly above
  ``warn``;
- **PASS** when the interval rules the fail threshold out (``hi <= fail``);
- otherwise **inconclusive**: SKIP, with a reason that names the interval, the threshold it spans
  and the images it rests on. ``below`` mirrors all of it.

So 0/6 correct on cue-conflicting images against 96/96 on aligned ones (gap interval [0.61, 1.00])
fails, while 2/6 against 5/6 (interval [-0.04, 0.77]) is inconclusive. ``min_n`` is only a floor:
a finding with fewer images in a compared group than that is not judged at all, because one image
then moves a rate by more than the default fail gap (1/5 = 0.2). Continuous statistics judged on a
percentile-bootstrap interval need ``min_n_bootstrap`` (20) images: below that the bootstrap's
interval is too narrow (Hesterberg 2015, "What teachers should know about the bootstrap").

**Families.** Findings that share a ``family`` (the per-class findings of a check, the
(label, attribute value) groups of ``attribute_gap``) are many tests of one question, so FAIL and
WARN are decided by Holm's step-down procedure at ``alpha = (1 - confidence) / 2`` (the one-sided
level of the two-sided interval) over their one-sided p-values (:func:`~pipeline.analysis.stats.p_beyond`,
obtained by inverting the intervals), once at the fail and once at the warn threshold. A finding
without a family is the check's primary test (the model-level statistic) and is judged on its
interval alone. PASS needs no correction: it claims every finding is below the fail threshold,
an intersection-union test, which holds at level alpha when each of them does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.analysis.stats import BOOTSTRAP, Direction, Estimate, holm, p_beyond

PASS, WARN, FAIL, SKIP, ERROR, INFO = "PASS", "WARN", "FAIL", "SKIP", "ERROR", "INFO"
RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3, ERROR: 4}


@dataclass
class Finding:
    """One judged number: ``scope`` is ``model``, ``class:<label>`` or ``attribute:<key>=<value>|class:<label>``.

    ``family``: findings sharing one are corrected together (Holm); None is a primary test.
    ``warn``/``fail``/``direction``: this statistic's own condition (None: the check's). After
    judging, ``status``, ``reason`` (why that status: inconclusive, not corrected, too few images),
    ``tested`` (whether it had an interval and enough images to be judged) and the one-sided
    p-values ``p_warn``/``p_fail`` of lying beyond each threshold are filled in.
    """

    scope: str
    statistic: str
    estimate: Estimate
    status: str = SKIP
    note: str = ""
    examples: list[str] = field(default_factory=list)
    judged: bool = True  # False: context only, never changes the verdict
    cap: str | None = None  # the most this finding may say (e.g. WARN for weak evidence)
    family: str | None = None
    warn: float | None = None
    fail: float | None = None
    direction: Direction | None = None
    summarises: str | None = None  # the scope of the family member this summary copies
    tested: bool = False
    p_warn: float = float("nan")
    p_fail: float = float("nan")
    reason: str = ""

    @property
    def inconclusive(self) -> bool:
        return self.tested and self.status == SKIP


@dataclass(frozen=True)
class Condition:
    """A check's default condition; a finding's own ``warn``/``fail``/``direction`` override it."""

    warn: float
    fail: float
    direction: Direction
    conf: float = 0.95
    min_n: int = 5
    min_n_bootstrap: int = 20

    def floor(self, est: Estimate) -> int:
        """Images a finding needs: percentile-bootstrap intervals are too narrow on small samples
        (Hesterberg 2015), score intervals keep their coverage down to a handful of images."""
        return self.min_n_bootstrap if est.method == BOOTSTRAP else self.min_n

    def of(self, f: Finding) -> tuple[float, float, Direction]:
        return (self.warn if f.warn is None else f.warn, self.fail if f.fail is None else f.fail,
                self.direction if f.direction is None else f.direction)


def beyond(est: Estimate, t: float, direction: Direction) -> bool:
    """The whole interval lies beyond ``t`` on the bad side."""
    return est.lo > t if direction == "above" else est.hi < t


def rules_out(est: Estimate, t: float, direction: Direction) -> bool:
    """The interval excludes every value beyond ``t`` on the bad side."""
    return est.hi <= t if direction == "above" else est.lo >= t


def judge(findings: Sequence[Finding], cond: Condition) -> None:
    """Judge ``findings`` in place (see the module docstring); context findings become INFO."""
    alpha = (1 - cond.conf) / 2
    judged = [f for f in findings if f.judged]
    for f in findings:
        if not f.judged:
            f.status = INFO
    for f in judged:
        f.status, f.reason, f.tested = SKIP, "", False
        if not f.estimate.ok:
            f.reason = "nothing measured"
        elif f.estimate.n < cond.floor(f.estimate):
            kind = "for a bootstrap interval" if f.estimate.method == BOOTSTRAP else "per compared group"
            f.reason = f"needs >= {cond.floor(f.estimate)} images {kind} (has {f.estimate.n})"
        elif not f.estimate.has_interval:
            f.reason = f"no confidence interval ({f.estimate.sizes()})"
        else:
            f.tested = True
    tested = [f for f in judged if f.tested]
    if tested:
        thr = np.array([cond.of(f)[:2] for f in tested], dtype=np.float64)
        dirs = [cond.of(f)[2] for f in tested]
        est = [f.estimate for f in tested]
        p_warn, p_fail = p_beyond(est, thr[:, 0], dirs, cond.conf), p_beyond(est, thr[:, 1], dirs, cond.conf)
        for f, pw, pf in zip(tested, p_warn.tolist(), p_fail.tolist(), strict=True):
            f.p_warn, f.p_fail = pw, pf
    families: dict[str | None, list[Finding]] = {}
    for f in tested:
        families.setdefault(f.family, []).append(f)
    for fam, members in families.items():
        if fam is None:
            for f in members:
                _primary(f, cond)
        else:
            _family(members, cond, alpha)
    for f in judged:
        if f.cap and RANK[f.status] > RANK[f.cap]:
            f.reason = _join(f.reason, f"capped at {f.cap} (was {f.status})")
            f.status = f.cap


def _primary(f: Finding, cond: Condition) -> None:
    warn, fail, d = cond.of(f)
    if beyond(f.estimate, fail, d):
        f.status = FAIL
    elif beyond(f.estimate, warn, d):
        f.status = WARN
    elif rules_out(f.estimate, fail, d):
        f.status = PASS
    else:
        f.status, f.reason = SKIP, _spans(f, cond)


def _family(members: list[Finding], cond: Condition, alpha: float) -> None:
    m = len(members)
    fails = holm([f.p_fail for f in members], alpha)
    warns = holm([f.p_warn for f in members], alpha)
    for f, is_fail, is_warn in zip(members, fails.tolist(), warns.tolist(), strict=True):
        warn, fail, d = cond.of(f)
        if is_fail:
            f.status, f.reason = FAIL, f"beyond {fail:g} after Holm's correction over {m} findings (p = {f.p_fail:.2g})"
        elif is_warn:
            f.status, f.reason = WARN, f"beyond {warn:g} after Holm's correction over {m} findings (p = {f.p_warn:.2g})"
        else:
            lost = fail if beyond(f.estimate, fail, d) else warn if beyond(f.estimate, warn, d) else None
            lost_note = (f"beyond {lost:g} uncorrected but not after Holm's correction over {m} findings "
                         f"(p = {f.p_fail if lost == fail else f.p_warn:.2g})") if lost is not None else ""
            if rules_out(f.estimate, fail, d):
                f.status, f.reason = PASS, lost_note
            elif lost == fail:
                f.status, f.reason = SKIP, f"inconclusive: {lost_note}"
            else:
                f.status, f.reason = SKIP, _join(_spans(f, cond), lost_note)


def _spans(f: Finding, cond: Condition) -> str:
    e = f.estimate
    fail = cond.of(f)[1]
    return (f"inconclusive: the {cond.conf:.0%} interval [{e.lo:.3f}, {e.hi:.3f}] spans the fail threshold "
            f"{fail:g} ({e.sizes()})")


def _join(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)
