"""The quality gate: results + policy -> per-model verdicts -> exit code, JSON, JUnit XML, Markdown.

``Verdict.passed`` (the checks) and ``Verdict.complete`` (the coverage: every judged model's latest
run finished and its results hold every image of that run's dataset, :mod:`pipeline.coverage`) are
what the CLI turns into an exit code: 2 when incomplete (unless ``--allow-partial``), else 0 pass,
1 a check failed. Imports neither torch nor Ray: it runs in a slim CI image over a results directory.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from common.storage import AnyPath, as_path
from pipeline.analysis.checks import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckContext,
    CheckResult,
    model_status,
    run_checks,
)
from pipeline.analysis.cues import StatOptions
from pipeline.analysis.evidence import ModelEvidence, analyse, to_jsonable
from pipeline.analysis.frame import load_frame
from pipeline.analysis.slices import SliceOptions, markdown_lines, model_slices
from pipeline.config import GatePolicy
from pipeline.coverage import COMPLETE, PARTIAL, ModelCoverage, judge_coverage, rows_of_frame
from pipeline.schema import ResultsError, is_results_dir, part_files, read_runs
from pipeline.triage import ModelReview, current_fingerprints, open_for_reading, summarise

ICON = {PASS: "✅", WARN: "⚠️", FAIL: "❌", SKIP: "➖", "ERROR": "💥"}


@dataclass
class ModelVerdict:
    model: str
    status: str
    checks: list[CheckResult]
    evidence: ModelEvidence


@dataclass
class Verdict:
    results: str
    policy: dict[str, Any]
    models: list[ModelVerdict]
    baseline: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    review: dict[str, ModelReview] | None = None  # reviewers' decisions (see attach_review); never judged
    coverage: dict[str, ModelCoverage] = field(default_factory=dict)
    allow_partial: bool = False

    @property
    def passed(self) -> bool:
        return all(m.status not in (FAIL, "ERROR") for m in self.models)

    @property
    def complete(self) -> bool:
        """No judged model is partial (an unverifiable one is reported, not refused)."""
        return all(c.state != PARTIAL for c in self.coverage.values())

    def incomplete_reasons(self) -> list[str]:
        return [f"{m}: {c.reason}" for m, c in self.coverage.items() if c.state == PARTIAL]

    @property
    def exit_code(self) -> int:
        """2: a partial state judged without ``allow_partial``; else 0 passed, 1 failed."""
        if not self.complete and not self.allow_partial:
            return 2
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": self.results, "baseline": self.baseline, "created_at": self.created_at,
            "passed": self.passed, "complete": self.complete, "allow_partial": self.allow_partial,
            "policy": self.policy,
            "coverage": {m: c.to_dict() for m, c in self.coverage.items()},
            "models": [{"model": m.model, "status": m.status, "checks": to_jsonable(m.checks),
                        "evidence": m.evidence.to_dict()} for m in self.models],
            "review": None if self.review is None else {k: r.to_dict() for k, r in self.review.items()},
        }


def stat_options(policy: GatePolicy) -> StatOptions:
    return StatOptions(conf=policy.confidence, n_boot=policy.bootstrap, seed=policy.seed)


def slice_options(policy: GatePolicy) -> SliceOptions:
    """How the ``slice_gap`` policy searches: its embedding pool, components and slices per class."""
    p = policy.checks.slice_gap
    return SliceOptions(column=p.embedding, components=p.components, max_slices=p.max_slices,
                        correctness_weight=p.correctness_weight, min_held_out=p.min_n or policy.min_n,
                        seed=policy.seed)


def resolve_baseline(root: AnyPath, baseline: str) -> tuple[AnyPath, str | None, str]:
    """``--baseline``: a run id of ``root``, ``previous`` (the run before the latest), or another
    results directory (its latest state). Returns (directory, as_of run id, description)."""
    if baseline == "previous":
        runs = [r.run_id for r in read_runs(root) if r.status == "finished"]
        if len(runs) < 2:
            raise ResultsError(f"--baseline previous: {root} has {len(runs)} finished run(s), need 2")
        return root, runs[-2], f"run {runs[-2]}"
    if is_results_dir(baseline):
        return as_path(baseline), None, f"results {baseline}"
    ids = [r.run_id for r in read_runs(root)]
    if baseline in ids:
        return root, baseline, f"run {baseline}"
    raise ResultsError(
        f"--baseline {baseline!r} is neither a run of {root} (runs: {', '.join(ids[-5:]) or 'none'}) "
        "nor a results directory"
    )


def evaluate(root: str | os.PathLike[str], policy: GatePolicy | None = None, models: list[str] | None = None,
             baseline: str | None = None, frame: pd.DataFrame | None = None, allow_partial: bool = False) -> Verdict:
    """Analyse the results and run every enabled check for every (selected) model, and say what the
    judged results cover (:func:`pipeline.coverage.judge_coverage`): the models judged, plus those
    of the latest run that have no result row yet."""
    policy = policy or GatePolicy()
    root = as_path(root)  # a directory, or an object-store prefix (s3://bucket/results)
    if not is_results_dir(root):
        raise ResultsError(f"{root} is not a cueaudit results directory (no model=*/ parts, no _runs/)")
    if not part_files(root, models):
        which = f" for model(s) {', '.join(models)}" if models else ""
        raise ResultsError(f"{root} holds no result files{which}")
    so = stat_options(policy)
    df = frame if frame is not None else load_frame(root, models)
    if models:
        unknown = sorted(set(models) - set(df.model.unique()))
        if unknown:
            raise ResultsError(f"no results for model(s) {unknown} in {root}; present: {sorted(df.model.unique())}")
    attrs = list(policy.checks.attribute_gap.attributes) if policy.checks.attribute_gap.attributes else None
    evidence = analyse(df, so, models, attributes=attrs)
    base_frame = base_ev = None
    desc = None
    if baseline:
        broot, as_of, desc = resolve_baseline(root, baseline)
        base_frame = load_frame(broot, as_of=as_of)
        base_ev = analyse(base_frame, so)
    verdicts = []
    for name, ev in evidence.items():
        mine = df[df.model == name]
        if policy.checks.slice_gap.enabled:  # embeddings are read per model, only when the check runs
            ev.slices = model_slices(root, name, mine, so, slice_options(policy))
        ctx = CheckContext(policy, so, frame=mine,
                           baseline=(base_ev or {}).get(name),
                           baseline_frame=None if base_frame is None else base_frame[base_frame.model == name])
        results = run_checks(ev, ctx)
        # A model with no scorable image has no evidence at all: a data error, never a pass.
        status = "ERROR" if ev.overall.scored == 0 else model_status(results, policy.require_evidence)
        verdicts.append(ModelVerdict(name, status, results, ev))
    runs = read_runs(root)
    covered = list(evidence)
    if runs and not models:
        covered += [m for m in runs[-1].models if m not in evidence]
    coverage = judge_coverage(root, rows_of_frame(df), covered, runs)
    return Verdict(str(root), json.loads(policy.model_dump_json()), verdicts, desc, coverage=coverage,
                   allow_partial=allow_partial)


def attach_review(v: Verdict, root: str | os.PathLike[str], db: str | os.PathLike[str] | None = None) -> Path | None:
    """Add the reviewers' decisions on ``root`` (``db``, ``$CUEAUDIT_REVIEW_DB`` or ``<root>/_review.sqlite``,
    read-only) to the verdict's reports. They never change a status. Returns the database read, if any."""
    store = open_for_reading(root, db)
    if store is None:
        return None
    fps = current_fingerprints(root)
    v.review = summarise(store.current(), {m.model: fps.get(m.model, "") for m in v.models})
    return store.path


# ---------------------------------------------------------------------------------------------
# Report files


def write_json(v: Verdict, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(v.to_dict(), indent=2))


def write_junit(v: Verdict, path: str | os.PathLike[str]) -> None:
    """One <testsuite> per model, one <testcase> per check: FAIL/ERROR -> <failure>, SKIP -> <skipped>;
    plus a ``coverage`` testcase: partial -> <failure> (<skipped> under ``--allow-partial``)."""
    suites = ET.Element("testsuites", name="cueaudit gate")
    total = failures = skipped = 0
    by_model = {m.model: m for m in v.models}
    for name in dict.fromkeys([*by_model, *v.coverage]):
        m = by_model.get(name)
        checks = m.checks if m else []
        s = ET.SubElement(suites, "testsuite", name=f"cueaudit.{name}")
        nf = ns = 0
        for r in checks:
            tc = ET.SubElement(s, "testcase", classname=f"cueaudit.{name}", name=r.check)
            if r.status in (FAIL, "ERROR"):
                nf += 1
                el = ET.SubElement(tc, "failure", message=f"{r.status}: {r.message}", type=r.status)
                el.text = _detail(r)
            elif r.status == SKIP:
                ns += 1
                ET.SubElement(tc, "skipped", message=r.message)
            ET.SubElement(tc, "system-out").text = f"{r.status}: {r.message}\n{_detail(r)}"
        n = len(checks)
        c = v.coverage.get(name)
        if c is not None:
            n += 1
            tc = ET.SubElement(s, "testcase", classname=f"cueaudit.{name}", name="coverage")
            text = f"{c.state}: {c.reason}; {c.counts_text()}"
            if c.state == PARTIAL and not v.allow_partial:
                nf += 1
                ET.SubElement(tc, "failure", message=text, type="PARTIAL").text = text
            elif c.state != COMPLETE:
                ns += 1
                ET.SubElement(tc, "skipped", message=text)
            ET.SubElement(tc, "system-out").text = text
        s.set("tests", str(n))
        s.set("failures", str(nf))
        s.set("skipped", str(ns))
        total, failures, skipped = total + n, failures + nf, skipped + ns
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("skipped", str(skipped))
    ET.indent(suites)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _detail(r: CheckResult) -> str:
    lines = []
    for f in r.findings:
        line = f"{f.status:5} {f.scope}: {f.statistic} = {f.estimate.fmt()}"
        line += "".join(f" — {x}" for x in (f.note, f.reason) if x)
        lines.append(line)
    if r.examples:
        lines.append("examples: " + ", ".join(r.examples))
    return "\n".join(lines)


def status_cell(r: CheckResult) -> str:
    """``➖ SKIP (inconclusive)`` for a check whose interval could not decide, else the status."""
    label = f"{r.status} (inconclusive)" if r.status == SKIP and r.inconclusive else r.status
    return f"{ICON.get(r.status, '')} {label}"


COVERAGE_ICON = {COMPLETE: "✅", PARTIAL: "⛔", "unverified": "❔"}


def coverage_rows(v: Verdict) -> list[list[str]]:
    """One row per model: model, state, latest run (status), images covered, missing, errors by kind, reason."""
    rows = []
    for m, c in v.coverage.items():
        errs = ", ".join(f"{k} {n}" for k, n in sorted(c.errors.items())) or "-"
        run = f"{c.run_id} ({c.run_status})" if c.run_id else "-"
        rows.append([m, c.state, run, c.counts_text(), "-" if c.missing is None else str(c.missing), errs, c.reason])
    return rows


def markdown(v: Verdict) -> str:
    checks = sorted({r.check for m in v.models for r in m.checks})
    if not v.complete and not v.allow_partial:
        head = "⛔ **cueaudit gate: results incomplete** (exit 2; `--allow-partial` judges them anyway)"
    else:
        head = "✅ **cueaudit gate passed**" if v.passed else "❌ **cueaudit gate failed**"
        if not v.complete:
            head += " (on partial results: `--allow-partial`)"
    out = [f"## {head}", "", f"Results: `{v.results}`" + (f", baseline: {v.baseline}" if v.baseline else ""), ""]
    out.append("| model | verdict | " + " | ".join(checks) + " |")
    out.append("|---|---|" + "---|" * len(checks))
    for m in v.models:
        by = {r.check: r for r in m.checks}
        cells = [status_cell(by[c]) if c in by else "" for c in checks]
        out.append(f"| `{m.model}` | {ICON.get(m.status, '')} **{m.status}** | " + " | ".join(cells) + " |")
    out.append("")
    for m in v.models:
        shown = [r for r in m.checks if r.status in (FAIL, WARN, "ERROR") or r.inconclusive]
        review = (v.review or {}).get(m.model)
        if not shown and (review is None or review.empty):
            continue
        out.append(f"### `{m.model}`")
        for r in shown:
            confirmed = review.confirmed_checks.get(r.check, 0) if review else 0
            seen = f" — confirmed by review ({confirmed} finding{'s' if confirmed != 1 else ''})" if confirmed else ""
            out.append(f"- {ICON.get(r.status, '')} **{r.title}** ({r.check}, {r.status}): {r.message}{seen}")
            if r.examples and r.status != SKIP:
                out.append(f"  - example images: {', '.join(f'`{x}`' for x in r.examples[:5])}")
            for f in r.inconclusive:
                out.append(f"  - inconclusive `{f.scope}` {f.statistic} = {f.estimate.fmt()}: {f.reason}")
            if r.check == "slice_gap":
                out.extend(markdown_lines(m.evidence.slices, {f.scope: f.status for f in r.findings}))
        if review is not None and not review.empty:
            out.append(f"- 🔎 Review: {review.sentence()}.")
        out.append("")
    if v.coverage:
        out += ["### Coverage", "", "| model | coverage | latest run | images | missing | errors | why |",
                "|---|---|---|---|---|---|---|"]
        for row in coverage_rows(v):
            row[0], row[1] = f"`{row[0]}`", f"{COVERAGE_ICON.get(row[1], '')} {row[1]}"
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def write_markdown(v: Verdict, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(markdown(v))
