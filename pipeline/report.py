"""``cueaudit report``: the gate's evidence as readable terminal tables (rich). No torch, no Ray."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pipeline.analysis.checks import FAIL, PASS, SKIP, WARN
from pipeline.analysis.stats import Estimate, short
from pipeline.gate import Verdict, coverage_rows

STYLE = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim", "ERROR": "bold magenta", "INFO": "cyan",
         "complete": "green", "partial": "bold red", "unverified": "yellow"}


def _e(est: Estimate, pct: bool = False) -> str:
    return short(est, pct)


def _status(s: str) -> Text:
    return Text(s, style=STYLE.get(s, ""))


def verdict_table(v: Verdict) -> Table:
    checks = sorted({r.check for m in v.models for r in m.checks})
    t = Table(title="Verdicts", title_justify="left")
    t.add_column("model")
    t.add_column("verdict")
    for c in checks:
        t.add_column(c.replace("_", " "))
    for m in v.models:
        by = {r.check: r.status for r in m.checks}
        t.add_row(m.model, _status(m.status), *[_status(by.get(c, "")) for c in checks])
    return t


def model_panel(m) -> Panel:  # m: ModelVerdict
    ev = m.evidence
    hw = f"{ev.cam_hw[0]}x{ev.cam_hw[1]}" if ev.cam_hw else "-"
    head = Text.assemble(
        (f"{m.model}  ", "bold"), _status(m.status),
        f"   images {ev.images}, errors {ev.errors}, layer {ev.feature_layer} ({hw} map, "
        f"median object {ev.median_object_cells:.1f} cells)",
    )
    t = Table(show_edge=False, pad_edge=False)
    for col in ("class", "n", "accuracy", "object share", "object lift", "pointing", "off-object", "BG-gap"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for g in [ev.overall, *ev.classes]:
        t.add_row(g.key, str(g.scored), _e(g.accuracy, True), _e(g.object_share), _e(g.object_lift),
                  _e(g.pointing, True), _e(g.off_object, True), _e(g.cf_bg_gap, True))
    c = Table(show_edge=False, pad_edge=False)
    for col in ("check", "status", "finding"):
        c.add_column(col)
    for r in m.checks:
        c.add_row(r.check, _status(r.status), r.message)
        for f in r.inconclusive:  # the interval could not decide: say which finding, and why
            c.add_row("", Text("inconclusive", style="dim italic"), f"{f.scope} {f.statistic}: {f.reason}")
    parts: list = [head, t, c]
    if ev.errors_by_kind:
        parts.append(Text("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(ev.errors_by_kind.items())), style="yellow"))
    return Panel(Group(*parts), expand=True)


def coverage_table(v: Verdict) -> Table:
    t = Table(title="Coverage (what the judged results hold of each model's latest run)", title_justify="left")
    for col in ("model", "coverage", "latest run", "images", "missing", "errors", "why"):
        t.add_column(col)
    for row in coverage_rows(v):
        t.add_row(row[0], _status(row[1]), *row[2:])
    return t


def print_report(v: Verdict, console: Console | None = None, detail: bool = True) -> None:
    console = console or Console()
    console.print(verdict_table(v))
    if v.coverage:
        console.print(coverage_table(v))
    if detail:
        for m in v.models:
            console.print(model_panel(m))
    if v.baseline:
        console.print(f"baseline: {v.baseline}")
