"""Named checks: each *computes* findings (a statistic with its CI, sample size and examples); the
policy's condition *judges* them (deepchecks' checks/conditions split).

A check is a short class filling in :meth:`Check.findings`; judging, severity, minimum evidence
and error handling live in :meth:`Check.evaluate`. Statuses: PASS, WARN, FAIL, SKIP (not enough
evidence, or nothing to measure) and ERROR (the check itself broke). Only FAIL and ERROR fail the
gate (SKIP too when the policy says ``require_evidence``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from pipeline.analysis.cues import StatOptions
from pipeline.analysis.evidence import ModelEvidence
from pipeline.analysis.stats import Estimate
from pipeline.config import CheckPolicy, GatePolicy
from common.registry import Registry

log = logging.getLogger(__name__)

PASS, WARN, FAIL, SKIP, ERROR = "PASS", "WARN", "FAIL", "SKIP", "ERROR"
RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3, ERROR: 4}


@dataclass
class Finding:
    """One judged number: ``scope`` is ``model``, ``class:<label>`` or ``attribute:<key>``."""

    scope: str
    statistic: str
    estimate: Estimate
    status: str = SKIP
    note: str = ""
    examples: list[str] = field(default_factory=list)
    judged: bool = True  # False: context only, never changes the verdict
    cap: str | None = None  # the most this finding may say (e.g. WARN for weak evidence)


@dataclass
class CheckResult:
    check: str
    title: str
    model: str
    status: str
    severity: str
    statistic: str
    direction: str  # "above" or "below": which side of the thresholds is bad
    warn: float
    fail: float
    message: str
    findings: list[Finding] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, ERROR)


@dataclass
class CheckContext:
    policy: GatePolicy
    stats: StatOptions
    frame: pd.DataFrame | None = None  # the model's rows
    baseline: ModelEvidence | None = None
    baseline_frame: pd.DataFrame | None = None


class Check:
    """Base: subclasses set the class attributes and implement :meth:`findings`."""

    name: ClassVar[str]
    title: ClassVar[str]
    statistic: ClassVar[str]
    direction: ClassVar[Literal["above", "below"]]

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        """Findings to judge, or a string saying why there is nothing to measure (-> SKIP)."""
        raise NotImplementedError

    def cap(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> tuple[str, str] | None:
        """Optionally cap the verdict (status, why); e.g. coarse maps cannot support a FAIL."""
        return None

    def judge(self, est: Estimate, pol: CheckPolicy, min_n: int) -> str:
        if not est.ok or est.n < min_n or not (math.isfinite(est.lo) and math.isfinite(est.hi)):
            return SKIP
        if self.direction == "above":
            return FAIL if est.lo > pol.fail else WARN if est.lo > pol.warn else PASS
        return FAIL if est.hi < pol.fail else WARN if est.hi < pol.warn else PASS

    def evaluate(self, ev: ModelEvidence, ctx: CheckContext) -> CheckResult:
        pol = getattr(ctx.policy.checks, self.name)
        min_n = pol.min_n or ctx.policy.min_n
        res = CheckResult(self.name, self.title, ev.model, SKIP, pol.severity, self.statistic, self.direction,
                          pol.warn, pol.fail, "")
        try:
            found = self.findings(ev, ctx, pol)
        except Exception as e:  # a broken check is reported as ERROR, never hidden
            log.exception("check %s failed on model %s", self.name, ev.model)
            res.status, res.message = ERROR, f"check raised {type(e).__name__}: {e}"
            return res
        if isinstance(found, str):
            res.message = found
            return res
        for f in found:
            if f.judged:
                f.status = self.judge(f.estimate, pol, min_n)
                if f.status == SKIP and not f.note:
                    f.note = f"needs >= {min_n} images with a confidence interval (has {f.estimate.n})"
                if f.cap and RANK[f.status] > RANK[f.cap]:
                    f.status = f.cap
            else:
                f.status = "INFO"
        res.findings = found
        judged = [f for f in found if f.judged]
        worst = max((f.status for f in judged), key=RANK.__getitem__, default=SKIP)
        if worst == FAIL and pol.severity == "warn":
            worst = WARN
        capped = self.cap(ev, ctx, pol)
        note = ""
        if capped and RANK[worst] > RANK[capped[0]]:
            worst, note = capped[0], capped[1]
        elif capped:
            note = capped[1]
        res.status = worst
        flagged = [f for f in judged if f.status in (WARN, FAIL)]
        lead = flagged[0] if flagged else (judged[0] if judged else None)
        if lead:
            side = "above" if self.direction == "above" else "below"
            thr = pol.fail if lead.status == FAIL else pol.warn
            verb = f"is clearly {side} {thr:g}" if flagged else f"is not clearly {side} the thresholds"
            res.message = f"{lead.scope}: {lead.statistic} = {lead.estimate.fmt()} {verb}"
            if lead.note:
                res.message += f"; {lead.note}"
            if len(flagged) > 1:
                res.message += f" (+{len(flagged) - 1} more flagged)"
        if note:
            res.message = f"{res.message}. {note}" if res.message else note
        res.examples = list(dict.fromkeys(x for f in (flagged or judged) for x in f.examples))[: ctx.stats.examples]
        return res


CHECKS: Registry[type[Check]] = Registry("check")


def register(cls: type[Check]) -> type[Check]:
    CHECKS.add(cls.name, cls)
    return cls


@register
class BackgroundReliance(Check):
    """Grad-CAM mass on the labelled object, corrected for chance (object_lift, Arras et al. 2022)."""

    name = "background_reliance"
    title = "Background reliance (CAM mass off the object)"
    statistic = "object_lift"
    direction = "below"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        if not ev.overall.object_lift.ok:
            return "no image has an object annotation for its label, so mass on the object cannot be measured"
        out = [Finding("model", "object_lift", ev.overall.object_lift, examples=ev.overall.worst,
                       note=f"object share {ev.overall.object_share.fmt()} vs area {ev.overall.object_area.fmt()}")]
        # A class can be recognised by the *absence* of other classes' features (the disk among
        # polygons: "no corners anywhere"), which Grad-CAM cannot localise on the object. Saliency of
        # one class alone therefore only warns; a model-level shortfall fails (CALIBRATION.md).
        for c in ev.classes:
            out.append(Finding(f"class:{c.key}", "object_lift", c.object_lift, examples=c.worst, cap=WARN,
                               note="class-level saliency only warns"))
        return out

    def cap(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> tuple[str, str] | None:
        cells = ev.median_object_cells
        if math.isfinite(cells) and cells < pol.min_object_cells and ev.cam_hw:
            h, w = ev.cam_hw
            return WARN, (f"resolution-limited: the {h}x{w} map at {ev.feature_layer} gives the median object "
                          f"{cells:.1f} feature cells (< {pol.min_object_cells:g}); object and context cannot be "
                          "told apart at this layer, audit a finer one")
        return None


@register
class BackgroundColourCue(Check):
    """Accuracy on images whose background colour points to another class vs to their own."""

    name = "background_colour_cue"
    title = "Background-colour cue (worst-group accuracy)"
    statistic = "accuracy_gap"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        b = ev.bg_colour
        if b.n == 0 or not math.isfinite(b.predictiveness):
            return "no background colours measured (needs labelled images with object annotations)"
        if b.strength < pol.min_cue_strength:
            return (f"background colour barely predicts the label in this dataset (leave-one-out accuracy "
                    f"{b.predictiveness:.1%} vs chance {b.chance:.1%}, {b.null95:.1%} with shuffled labels): "
                    "no colour cue to rely on")
        note = (f"aligned {b.acc_aligned.fmt(True)} vs conflicting {b.acc_conflicting.fmt(True)}; "
                f"{b.follow_rate.fmt(True)} of conflicting images predicted as the colour's class; "
                f"colour predicts the label at {b.predictiveness:.0%} (chance {b.chance:.0%})")
        return [Finding("model", "accuracy_gap", b.gap, note=note, examples=b.examples)]


@register
class CooccurrenceCue(Check):
    """Accuracy when co-occurring objects signal another class vs the label's own (the keyboard)."""

    name = "cooccurrence_cue"
    title = "Co-occurring-object cue (worst-group accuracy)"
    statistic = "accuracy_gap"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        c = ev.cooccurrence
        if not c.associations:
            return "no annotated category is associated with a class strongly enough to act as a cue"
        assoc = ", ".join(f"{k} -> {v}" for k, v in sorted(c.associations.items()))
        note = (f"associations {assoc}; aligned {c.acc_aligned.fmt(True)} vs conflicting "
                f"{c.acc_conflicting.fmt(True)}; CAM mass on the associated object {c.cue_mass.fmt()}")
        out = [
            Finding("model", "accuracy_gap", c.gap, note=note, examples=c.examples),
            Finding("model", "cue_object_lift", c.cue_lift, judged=False,
                    note="chance-corrected CAM mass on the co-occurring object (context)"),
        ]
        if c.context.n:  # the causal test: remove the co-occurring objects vs same-size background patches
            x = c.context
            out.append(Finding("model", "context_gap", x.context_gap, examples=x.examples,
                               note=(f"cue-aligned images flip {x.flip_context.fmt(True)} with the co-occurring objects "
                                     f"removed vs {x.flip_control.fmt(True)} with same-size background patches removed")))
        return out


@register
class CounterfactualFlip(Check):
    """BG-Gap (Xiao et al. 2020): accuracy over a same-class background minus over another class's."""

    name = "counterfactual_flip"
    title = "Counterfactual background swap (BG-Gap)"
    statistic = "bg_gap"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        cf = ev.counterfactual
        if cf.n == 0:
            return "no counterfactuals in these results (enable `counterfactual: {enabled: true}` in the audit config)"
        note = (f"flip rate: Mixed-Rand {cf.flip_rand.fmt(True)}, Mixed-Same {cf.flip_same.fmt(True)}, "
                f"neutral fill {cf.flip_fill.fmt(True)} (context only: out of distribution)")
        out = [Finding("model", "bg_gap", cf.bg_gap, note=note, examples=cf.examples)]
        for lab, est in cf.by_class.items():
            out.append(Finding(f"class:{lab}", "bg_gap", est))
        return out


@register
class AttributeGapCheck(Check):
    """Worst-group accuracy over the dataset's per-image attributes (Sagawa et al. 2020)."""

    name = "attribute_gap"
    title = "Worst-group accuracy over dataset attributes"
    statistic = "accuracy_gap"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        gaps = [g for g in ev.attributes if pol.attributes is None or g.attribute in pol.attributes]
        if not gaps:
            return "the dataset has no per-image attributes with 2-20 values"
        out = []
        for g in gaps:
            w = g.worst
            note = f"worst group {w['label']}/{g.attribute}={w['value']}: {g.worst_acc.fmt(True)}" if w else ""
            out.append(Finding(f"attribute:{g.attribute}", "accuracy_gap", g.gap, note=note, examples=g.examples))
        return out


@register
class Regression(Check):
    """Drops against a baseline run, paired on the images both scored."""

    name = "regression"
    title = "Regression against the baseline"
    statistic = "drop"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        if ctx.baseline_frame is None:
            return "no baseline given (use --baseline RUN_ID or a results directory)"
        cur, base = ctx.frame, ctx.baseline_frame
        if cur is None or base is None or base.empty:
            return f"the baseline has no results for model {ev.model!r}"
        m = cur[cur.scored].merge(base[base.scored], on="image_id", suffixes=("", "_base"))
        if m.empty:
            return "the baseline and the current results share no scored images"
        so = ctx.stats
        out = [
            Finding("model", "object_lift_drop", so.paired(m.object_lift_base, m.object_lift),
                    examples=[str(x) for x in m.assign(d=m.object_lift_base - m.object_lift)
                              .nlargest(so.examples, "d").image_id]),
            Finding("model", "accuracy_drop", so.paired(m.correct_base, m.correct)),
        ]
        return out


def run_checks(ev: ModelEvidence, ctx: CheckContext) -> list[CheckResult]:
    results = []
    for name in CHECKS.names():
        pol = getattr(ctx.policy.checks, name)
        if pol.enabled:
            results.append(CHECKS.get(name)().evaluate(ev, ctx))
    return results


def model_status(results: list[CheckResult], require_evidence: bool = False) -> str:
    """FAIL if a check failed or errored (or, with require_evidence, was skipped); WARN; else PASS."""
    if any(r.status in (FAIL, ERROR) for r in results):
        return FAIL
    if require_evidence and any(r.status == SKIP and r.check != "regression" for r in results):
        return FAIL
    if any(r.status == WARN for r in results):
        return WARN
    return PASS

