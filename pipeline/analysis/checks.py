"""Named checks: each *computes* findings (a statistic with its CI, sample size and examples); the
policy's condition *judges* them (deepchecks' checks/conditions split; the rules are in
:mod:`pipeline.analysis.judging`).

A check is a short class filling in :meth:`Check.findings`; judging, severity, the evidence floor
and error handling live in :meth:`Check.evaluate`. Statuses: PASS, WARN, FAIL, SKIP (nothing to
measure, too few images, or an *inconclusive* interval that spans the fail threshold) and ERROR
(the check itself broke). A check FAILs or WARNs when any of its findings does; it PASSes when its
primary (model-level) findings pass, and is inconclusive (SKIP) when one of them is. Only FAIL and
ERROR fail the gate (SKIP too when the policy says ``require_evidence``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from common.registry import Registry
from pipeline.analysis.cues import StatOptions
from pipeline.analysis.evidence import ModelEvidence
from pipeline.analysis.judging import ERROR, FAIL, INFO, PASS, RANK, SKIP, WARN, Condition, Finding, judge
from pipeline.config import CheckPolicy, GatePolicy

log = logging.getLogger(__name__)

__all__ = ["CHECKS", "ERROR", "FAIL", "INFO", "PASS", "RANK", "SKIP", "WARN", "Check", "CheckContext",
           "CheckResult", "Finding", "model_status", "run_checks"]


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

    @property
    def inconclusive(self) -> list[Finding]:
        """Findings whose interval could not decide (they carry the reason); a summary's member, not its copy."""
        return [f for f in self.findings if f.inconclusive and f.summarises is None]


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

    def summary(self, judged: list[Finding]) -> Finding | None:
        """Optionally a model-level finding summarising a judged family (it keeps the member's status)."""
        return None

    def condition(self, pol: CheckPolicy, ctx: CheckContext) -> Condition:
        return Condition(pol.warn, pol.fail, self.direction, ctx.stats.conf, pol.min_n or ctx.policy.min_n,
                         ctx.policy.min_n_bootstrap)

    def evaluate(self, ev: ModelEvidence, ctx: CheckContext) -> CheckResult:
        pol = getattr(ctx.policy.checks, self.name)
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
        cond = self.condition(pol, ctx)
        judge(found, cond)
        top = self.summary(found)
        if top is not None:
            found.insert(0, top)
        res.findings = found
        judged = [f for f in found if f.judged]
        flagged = [f for f in judged if f.status in (WARN, FAIL) and f.summarises is None]
        primary = [f for f in judged if f.family is None and f.tested]
        if flagged:
            worst = max((f.status for f in flagged), key=RANK.__getitem__)
        elif any(f.inconclusive for f in primary):
            worst = SKIP
        else:
            worst = PASS if primary else SKIP
        if worst == FAIL and pol.severity == "warn":
            worst = WARN
        capped = self.cap(ev, ctx, pol)
        note = ""
        if capped and RANK[worst] > RANK[capped[0]]:
            worst, note = capped[0], capped[1]
        elif capped:
            note = capped[1]
        res.status = worst
        res.message = self._message(judged, flagged, primary, cond)
        if note:
            res.message = f"{res.message}. {note}" if res.message else note
        shown = flagged or judged
        res.examples = list(dict.fromkeys(x for f in shown for x in f.examples))[: ctx.stats.examples]
        return res

    def _message(self, judged: list[Finding], flagged: list[Finding], primary: list[Finding],
                 cond: Condition) -> str:
        tops = [f for f in judged if f.summarises is not None and f.status in (WARN, FAIL)]
        worst_first = sorted(flagged, key=lambda f: -RANK[f.status])
        lead = (tops or worst_first or [f for f in primary if f.inconclusive] or primary or judged or [None])[0]
        if lead is None:
            return ""
        warn, fail, d = cond.of(lead)
        head = f"{lead.scope}: {lead.statistic} = {lead.estimate.fmt()}"
        if lead.status in (WARN, FAIL):
            msg = f"{head} is clearly {d} {fail if lead.status == FAIL else warn:g}"
            if lead.family is not None or lead.summarises is not None:
                msg += f" ({lead.reason})"
        elif lead.inconclusive:
            msg = f"{head}: {lead.reason}"
        elif lead.tested:
            msg = f"{head} is not clearly {d} the thresholds"
        else:
            msg = f"{head}: {lead.reason}"
        if lead.note:
            msg += f"; {lead.note}"
        extra = [f for f in flagged if f is not lead and f.scope != lead.summarises]
        if extra:
            msg += f" (+{len(extra)} more flagged)"
        unsure = [f for f in judged if f.inconclusive and f is not lead and f.summarises is None
                  and f.scope != lead.summarises]
        if unsure:
            msg += f" ({len(unsure)} inconclusive: {', '.join(f'{f.scope} {f.statistic}' for f in unsure[:3])}"
            msg += ", ...)" if len(unsure) > 3 else ")"
        return msg


CHECKS: Registry[type[Check]] = Registry("check")


def register(cls: type[Check]) -> type[Check]:
    CHECKS.add(cls.name, cls)
    return cls


@dataclass(frozen=True)
class SaliencyLayer:
    """Where saliency is judged: the finer layer when the audit computed one because the feature
    layer's map was too coarse for the objects (``fine_*`` columns), else the feature layer."""

    layer: str | None
    cam_hw: tuple[int, int] | None
    cells: float  # median feature cells covered by the labelled object
    overall: Any  # GroupStats
    classes: list[Any]
    cue_mass: Any  # Estimate: co-occurrence saliency on cue-aligned images
    cue_lift: Any
    fine: bool

    @property
    def where(self) -> str:
        hw = f" ({self.cam_hw[0]}x{self.cam_hw[1]})" if self.cam_hw else ""
        return f"at {'the finer layer ' if self.fine else ''}{self.layer}{hw}"


def saliency_layer(ev: ModelEvidence) -> SaliencyLayer:
    f, c = ev.fine, ev.cooccurrence
    if f is not None:
        return SaliencyLayer(f.layer, f.cam_hw, f.median_object_cells, f.overall, f.classes, f.cue_mass, f.cue_lift,
                             True)
    return SaliencyLayer(ev.feature_layer, ev.cam_hw, ev.median_object_cells, ev.overall, ev.classes, c.cue_mass,
                         c.cue_lift, False)


def resolution_limited(sal: SaliencyLayer, min_cells: float) -> str:
    """Why saliency at ``sal`` cannot support a FAIL ("" when it can): too few cells per object."""
    if not (math.isfinite(sal.cells) and sal.cells < min_cells and sal.cam_hw):
        return ""
    h, w = sal.cam_hw
    return (f"resolution-limited: the {h}x{w} map at {sal.layer} gives the median object {sal.cells:.1f} feature "
            f"cells (< {min_cells:g}); object and context cannot be told apart at this layer"
            + ("" if sal.fine else ", audit a finer one (fine_layer)"))


@register
class BackgroundReliance(Check):
    """Grad-CAM mass on the labelled object, corrected for chance (object_lift, Arras et al. 2022)."""

    name = "background_reliance"
    title = "Background reliance (CAM mass off the object)"
    statistic = "object_lift"
    direction = "below"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        sal = saliency_layer(ev)
        if not sal.overall.object_lift.ok:
            return "no image has an object annotation for its label, so mass on the object cannot be measured"
        o = sal.overall
        out = [Finding("model", "object_lift", o.object_lift, examples=o.worst,
                       note=f"{sal.where}: object share {o.object_share.fmt()} vs area {o.object_area.fmt()}")]
        # A class can be recognised by the *absence* of other classes' features (the disk among
        # polygons: "no corners anywhere"), which Grad-CAM cannot localise on the object. Saliency of
        # one class alone therefore only warns; a model-level shortfall fails (CALIBRATION.md).
        for c in sal.classes:
            out.append(Finding(f"class:{c.key}", "object_lift", c.object_lift, examples=c.worst, cap=WARN,
                               family="class", note="class-level saliency only warns"))
        if sal.fine:
            out.append(Finding("model", "object_lift", ev.overall.object_lift, judged=False,
                               note=f"at the coarse feature layer {ev.feature_layer} (context: too coarse to judge)"))
        return out

    def cap(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> tuple[str, str] | None:
        why = resolution_limited(saliency_layer(ev), pol.min_object_cells)
        return (WARN, why) if why else None


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
                f"{c.acc_conflicting.fmt(True)}")
        sal = saliency_layer(ev)
        coarse = resolution_limited(sal, pol.min_object_cells)
        saliency = (f"{sal.where}: CAM mass on the signalling object {sal.cue_mass.fmt()} on cue-aligned images, "
                    "chance-corrected for its area")
        if coarse:
            saliency += f"; {coarse}: only warns"
        out = [
            Finding("model", "accuracy_gap", c.gap, note=note, examples=c.examples),
            Finding("model", "cue_object_lift", sal.cue_lift, warn=pol.saliency.warn, fail=pol.saliency.fail,
                    cap=WARN if coarse else None, note=saliency),
        ]
        if sal.fine:
            out.append(Finding("model", "cue_object_lift", c.cue_lift, judged=False,
                               note=f"at the coarse feature layer {ev.feature_layer} (context: too coarse to judge)"))
        if c.context.n:  # the causal test: remove the co-occurring objects vs same-size background patches
            x = c.context
            out.append(Finding("model", "context_gap", x.context_gap, examples=x.examples,
                               warn=pol.ablation.warn, fail=pol.ablation.fail,
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
            # Per-class gaps locate the cue; the thresholds are calibrated on the model-level BG-Gap,
            # and a class's own background can be legitimate context (a missile in the sky): only warn.
            out.append(Finding(f"class:{lab}", "bg_gap", est, family="class", cap=WARN,
                               note="class-level BG-Gap only warns"))
        return out


@register
class AttributeGapCheck(Check):
    """Worst-group accuracy over the dataset's per-image attributes, within each label (Sagawa et al. 2020).

    Each (label, attribute value) group is compared with the same label's other values, so a class
    that is merely harder does not flag; all groups form one Holm family, and the model-level
    finding is the most extreme group (the smallest p-value of lying beyond the fail threshold).
    """

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
            for grp in g.groups:
                if not grp.gap.ok:
                    continue
                note = (f"{g.attribute}={grp.value} in {grp.label}: {grp.accuracy.fmt(True)} vs the label's other "
                        f"values {grp.rest.fmt(True)}")
                out.append(Finding(f"attribute:{g.attribute}={grp.value}|class:{grp.label}", "accuracy_gap",
                                   grp.gap, note=note, examples=grp.examples, family="attribute"))
        if not out:
            return "no label has two values of an attribute to compare"
        return out

    def summary(self, judged: list[Finding]) -> Finding | None:
        return most_extreme(judged, "(label, value) groups")


def most_extreme(judged: list[Finding], what: str) -> Finding | None:
    """A model-level copy of a family's most extreme tested member (flagged first, then the smallest
    p-value of lying beyond the fail threshold); it keeps the member's status."""
    tested = [f for f in judged if f.tested and f.family is not None]
    if not tested:
        return None
    top = min(tested, key=lambda f: (-RANK[f.status] if f.status in (WARN, FAIL) else 0, f.p_fail,
                                     -f.estimate.value))
    return dataclasses.replace(top, scope="model", family=None, summarises=top.scope,
                               note=f"most extreme of {len(tested)} {what}: {top.note}")


@register
class SliceGap(Check):
    """Slices nobody annotated: per class, clusters of the model's own embeddings whose held-out accuracy
    falls far below the rest of their class (Domino, Eyuboglu et al. 2022; :mod:`.slices`).

    Every reported slice of every class is one Holm family; the model-level finding is the most
    extreme slice. The spuriosity gaps (Moayeri et al. 2023) come along as context (INFO).
    """

    name = "slice_gap"
    title = "Underperforming slices of the model's embeddings (no annotation needed)"
    statistic = "accuracy_gap"
    direction = "above"

    def findings(self, ev: ModelEvidence, ctx: CheckContext, pol: Any) -> list[Finding] | str:
        s = ev.slices
        if s.error:
            raise RuntimeError(f"slice discovery failed: {s.error}")
        if s.n == 0:
            return s.note or "no embeddings in these results (audit with `embedding: {enabled: true}`)"
        if not s.slices:
            return (f"no cluster of the {s.n} images' {s.column} is less accurate than the rest of its class on "
                    "the fit half: no slice to test")
        out = []
        for sl in s.slices:
            note = (f"{sl.size} images ({sl.held_out} held out): accuracy {sl.accuracy.fmt(True)} vs the rest of "
                    f"{sl.label} {sl.rest.fmt(True)}" + (f"; {'; '.join(sl.description[:3])}" if sl.description else ""))
            out.append(Finding(sl.scope, "accuracy_gap", sl.gap, note=note, examples=sl.examples, family="slice"))
        for sp in s.spuriosity:
            out.append(Finding(f"class:{sp.label}", f"spuriosity_gap[{sp.by}]", sp.gap, judged=False,
                               note=f"top {sp.n} by {sp.by}: accuracy {sp.top.fmt(True)} vs bottom {sp.n} "
                                    f"{sp.bottom.fmt(True)}"))
        return out

    def summary(self, judged: list[Finding]) -> Finding | None:
        return most_extreme(judged, "slices")


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
            Finding("model", "accuracy_drop", so.paired_rate_diff(m.correct_base, m.correct)),
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

