"""The ``cueaudit`` command line (typer).

Heavy imports (torch, Ray, Streamlit) happen inside the commands that need them, so ``gate`` and
``report`` start fast in a slim image. Exit codes: 0 success, 1 a gate check failed, 2 a usage or
data error (the message names the file and the problem).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="cueaudit",
    help="Audit image models for spurious cues with Grad-CAM at dataset scale.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Wide output when piped (CI logs): rich would otherwise wrap tables at 80 columns.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("CUEAUDIT_LOG_LEVEL", logging.getLevelName(level))


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return str(v)


def print_run_summary(summary: Any, rows: list[dict[str, Any]]) -> None:
    t = Table(title=f"run {summary.run_id}: {summary.images} images, {summary.seconds:.1f} s", title_justify="left")
    for col in ("model", "scored now", "skipped", "images", "errors", "accuracy", "object share", "object area",
                "pointing", "layer (map)"):
        t.add_column(col, justify="left" if col in ("model", "layer (map)") else "right")
    for r in rows:
        mr = summary.models.get(r["model"])
        t.add_row(r["model"], str(mr.scored if mr else 0), str(mr.skipped if mr else 0), str(r["images"]),
                  str(r["errors"]), _fmt(r["accuracy"], True), _fmt(r["object_share"]), _fmt(r["object_area"]),
                  _fmt(r["pointing"], True), f"{r['layer']} ({r['map']})" if r["layer"] else "-")
    console.print(t)
    for model, counts in summary.errors.items():
        if counts:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            console.print(f"[yellow]{model}[/]: error rows by reason: {reasons}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="audit.yaml")],
    address: Annotated[str | None, typer.Option(help="Ray address to join (default: RAY_ADDRESS, else a local Ray)")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Audit the models of CONFIG over its dataset; resumes where an earlier run stopped."""
    _setup_logging(verbose)
    from pipeline.config import ConfigError, load_config
    from pipeline.readers import ReaderError
    from pipeline.run import RunError, headline, run_audit

    try:
        loaded = load_config(config)
        summary = run_audit(loaded, address=address, progress=not no_progress, console=console)
    except (ConfigError, ReaderError, RunError) as e:
        _fail(str(e))
        return
    print_run_summary(summary, headline(summary.output, list(summary.models)))
    console.print(f"results: {summary.output}")


@app.command()
def gate(
    results: Annotated[Path, typer.Argument(help="results directory written by `cueaudit run`")],
    policy: Annotated[Path | None, typer.Option(help="gate.yaml (default: the built-in policy)")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="only these models (repeatable)")] = None,
    baseline: Annotated[str | None, typer.Option(help="run id, 'previous', or another results directory")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the verdict and evidence as JSON")] = None,
    junit: Annotated[Path | None, typer.Option(help="write JUnit XML (one testcase per check)")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write a Markdown summary (for pull requests)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the verdict table")] = False,
) -> None:
    """Judge RESULTS against the policy: exit 0 if every model passes, 1 if a check fails, 2 on bad input."""
    from pipeline.config import ConfigError, load_policy
    from pipeline.gate import evaluate, write_json, write_junit, write_markdown
    from pipeline.report import print_report
    from pipeline.schema import ResultsError

    try:
        pol = load_policy(policy)
        verdict = evaluate(results, pol, models=model or None, baseline=baseline)
    except (ConfigError, ResultsError) as e:
        _fail(str(e))
        return
    print_report(verdict, console, detail=not quiet)
    for path, write in ((json_out, write_json), (junit, write_junit), (markdown, write_markdown)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(verdict, path)
    console.print("[bold green]gate passed[/]" if verdict.passed else "[bold red]gate failed[/]")
    raise typer.Exit(EXIT_OK if verdict.passed else EXIT_FAIL)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results directory")],
    policy: Annotated[Path | None, typer.Option(help="gate.yaml for the check columns")] = None,
    model: Annotated[list[str] | None, typer.Option("--model")] = None,
    baseline: Annotated[str | None, typer.Option()] = None,
) -> None:
    """The evidence behind the gate as terminal tables (always exits 0 unless the input is bad)."""
    from pipeline.config import ConfigError, load_policy
    from pipeline.gate import evaluate
    from pipeline.report import print_report
    from pipeline.schema import ResultsError

    try:
        verdict = evaluate(results, load_policy(policy), models=model or None, baseline=baseline)
    except (ConfigError, ResultsError) as e:
        _fail(str(e))
        return
    print_report(verdict, console)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="sources | cams | readers | checks | cues")] = "all",
) -> None:
    """List the registered extensions (model sources, CAM methods, dataset readers, checks)."""
    groups: dict[str, Any] = {}
    if what in ("all", "sources"):
        from workers.models import SOURCES

        groups["model sources"] = SOURCES.names()
    if what in ("all", "cams"):
        from workers.cam import CAM_METHODS

        groups["CAM methods"] = CAM_METHODS.names()
    if what in ("all", "readers"):
        from pipeline.readers import READERS

        groups["dataset formats"] = READERS.names()
    if what in ("all", "checks"):
        from pipeline.analysis.checks import CHECKS

        groups["checks"] = CHECKS.names()
    if not groups:
        _fail(f"unknown list {what!r}; choose sources, cams, readers, or all")
    for title, names in groups.items():
        console.print(f"[bold]{title}[/]: " + ", ".join(names))


@app.command()
def schema() -> None:
    """Print the Parquet result schema as a Markdown table."""
    from pipeline.schema import describe_markdown

    console.print(describe_markdown(), markup=False, highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
