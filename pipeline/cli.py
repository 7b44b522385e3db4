"""The ``cueaudit`` command line (typer).

Heavy imports (torch, Ray, Streamlit) happen inside the commands that need them, so ``gate`` and
``report`` start fast in a slim image. Exit codes: 0 success, 1 a gate check failed, 2 a usage or
data error (the message names the file and the problem).
"""

from __future__ import annotations

import logging
import math
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
        if math.isnan(v):
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
    results: Annotated[str, typer.Argument(help="results directory (or s3://... prefix) written by `cueaudit run`")],
    policy: Annotated[Path | None, typer.Option(help="gate.yaml (default: the built-in policy)")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="only these models (repeatable)")] = None,
    baseline: Annotated[str | None, typer.Option(help="run id, 'previous', or another results directory")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the verdict and evidence as JSON")] = None,
    junit: Annotated[Path | None, typer.Option(help="write JUnit XML (one testcase per check)")] = None,
    markdown: Annotated[Path | None, typer.Option(help="write a Markdown summary (for pull requests)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the verdict table")] = False,
    review_db: Annotated[Path | None, typer.Option(
        help="reviewers' decisions to report (default: $CUEAUDIT_REVIEW_DB, else RESULTS/_review.sqlite)")] = None,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="judge results that are not a finished "
                                                "run covering its dataset (else exit 2)")] = False,
) -> None:
    """Judge RESULTS against the policy: exit 0 if every model passes, 1 if a check fails, 2 on bad input
    or when a model's latest run did not finish or its results miss images of that run's dataset."""
    from pipeline.config import ConfigError, load_policy
    from pipeline.gate import attach_review, evaluate, write_json, write_junit, write_markdown
    from pipeline.report import print_report
    from pipeline.schema import ResultsError
    from pipeline.triage import ReviewError

    try:
        pol = load_policy(policy)
        verdict = evaluate(results, pol, models=model or None, baseline=baseline, allow_partial=allow_partial)
    except (ConfigError, ResultsError) as e:
        _fail(str(e))
        return
    if review_db is not None and not review_db.is_file():
        _fail(f"review database {str(review_db)!r} does not exist")
    try:
        attach_review(verdict, results, review_db)
    except ReviewError as e:
        err_console.print(f"[yellow]warning:[/] {e}; the verdict is reported without review", highlight=False)
    print_report(verdict, console, detail=not quiet)
    for name, r in (verdict.review or {}).items():
        if not r.empty:
            console.print(f"review of {name}: {r.sentence()}", highlight=False)
    for path, write in ((json_out, write_json), (junit, write_junit), (markdown, write_markdown)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(verdict, path)
    if verdict.exit_code == EXIT_USAGE:
        _fail("the results are not a finished run covering its dataset, so the verdict above is about a partial "
              "state:\n  " + "\n  ".join(verdict.incomplete_reasons())
              + "\nRerun `cueaudit run` to complete it, or pass --allow-partial to judge it anyway.")
    partial = "" if verdict.complete else " (on partial results)"
    console.print(f"[bold green]gate passed{partial}[/]" if verdict.passed else f"[bold red]gate failed{partial}[/]")
    raise typer.Exit(verdict.exit_code)


@app.command()
def report(
    results: Annotated[str, typer.Argument(help="results directory (or s3://... prefix)")],
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


@app.command("dataset-report")
def dataset_report(
    config: Annotated[Path, typer.Argument(help="audit.yaml (only its dataset section is used)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    limit: Annotated[int | None, typer.Option(help="look at the first N images only")] = None,
) -> None:
    """The cues the DATASET offers before any model: colour/label association, co-occurrence, object layout."""
    from common.storage import configure
    from pipeline.config import ConfigError, load_config
    from pipeline.dataset_report import build_report, print_dataset_report, write_json
    from pipeline.readers import ReaderError, read_manifest

    try:
        loaded = load_config(config)
        configure(loaded.config.storage.to_options())
        manifest = read_manifest(loaded.config.dataset, loaded.base)
    except (ConfigError, ReaderError) as e:
        _fail(str(e))
        return
    if limit:
        manifest = manifest.slice(0, limit)
    try:
        models = {m.name: (m.label_map, m.class_names(loaded.base)) for m in loaded.config.models}
    except ConfigError as e:
        _fail(str(e))
        return
    r = build_report(manifest, models=models)
    print_dataset_report(r, console)
    if json_out:
        write_json(r, json_out)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="output directory")],
    cue: Annotated[str, typer.Option(help="background | cooccur | watermark")] = "background",
    n: Annotated[int, typer.Option(help="number of images")] = 600,
    correlation: Annotated[float, typer.Option(help="P(cue matches the label); 1/classes = independent")] = 0.6,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    split: Annotated[str, typer.Option(help="name prefix of the images (train, audit, ...)")] = "audit",
    image_format: Annotated[str, typer.Option("--format", help="png | jpg")] = "png",
) -> None:
    """Write a synthetic dataset with a known spurious cue and exact masks / COCO annotations."""
    from cuebench.synth import CUES, SynthConfig, SynthError, generate

    if cue not in CUES:
        _fail(f"unknown cue {cue!r}; valid: {', '.join(CUES.names())}")
    try:
        path = generate(out, SynthConfig(cue=cue, n=n, correlation=correlation, size=size, seed=seed, split=split,
                                         image_format=image_format))
    except (SynthError, ValueError) as e:
        _fail(str(e))
        return
    console.print(f"wrote {n} images with a {cue} cue (correlation {correlation}) to {path}: "
                  "images/, masks/, coco.json, manifest.csv")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="dataset directory with images/<class>/ (e.g. from `cueaudit synth`)")],
    out: Annotated[Path, typer.Argument(help="where model.pt, model.yaml and train.json go")],
    epochs: Annotated[int, typer.Option()] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    lr: Annotated[float, typer.Option()] = 3e-3,
    batch_size: Annotated[int, typer.Option()] = 64,
    size: Annotated[int, typer.Option(help="input side in pixels")] = 64,
    arch: Annotated[str, typer.Option(help="architecture of workers.archs: tiny_resnet or tiny_vit")] = "tiny_resnet",
) -> None:
    """Train a small benchmark model on DATA on the CPU; writes a model.yaml an audit config can use."""
    from cuebench.train import TrainError
    from cuebench.train import train as train_model

    try:
        res = train_model(data, out, arch=arch, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, size=size)
    except (TrainError, ValueError, OSError, KeyError) as e:
        _fail(str(e))
        return
    console.print(f"trained in {res.wall_s:.0f} s, train accuracy {res.train_acc:.1%}; spec: {res.spec_path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="results directory")] = Path("demo-results"),
    work: Annotated[Path, typer.Option(help="cache for datasets, trained models and configs")] = Path(".cueaudit/demo"),
    quick: Annotated[bool, typer.Option(help="smaller audit sets (for tests)")] = False,
    address: Annotated[str | None, typer.Option(help="Ray address (default: a local Ray)")] = None,
) -> None:
    """Synthetic cue datasets + real photos -> train biased/fair models -> audit on Ray -> verdicts.

    Exits with the gate's exit code: 1 when a model fails, which the biased models do on purpose.
    """
    from cuebench.demo import run_demo

    _setup_logging(False)
    code = run_demo(out=out, work=work, quick=quick, address=address, console=console)
    raise typer.Exit(code)


@app.command("list")
def list_(
    what: Annotated[str, typer.Argument(help="sources | cams | readers | checks | cues | all")] = "all",
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
    if what in ("all", "cues"):
        from cuebench.synth import CUES

        groups["synthetic cues"] = CUES.names()
    if not groups:
        _fail(f"unknown list {what!r}; choose sources, cams, readers, checks, cues, or all")
    for title, names in groups.items():
        console.print(f"[bold]{title}[/]: " + ", ".join(names))


@app.command()
def schema(
    readme: Annotated[Path | None, typer.Option(help="rewrite the table between the schema markers of this file")] = None,
) -> None:
    """Print the Parquet result schema as a Markdown table."""
    from pipeline.schema import describe_markdown, update_readme

    if readme is not None:
        try:
            update_readme(readme)
        except ValueError as e:
            _fail(str(e))
        return
    console.print(describe_markdown(), markup=False, highlight=False)


@app.command()
def dashboard(
    results: Annotated[str, typer.Argument(help="results directory (or s3://... prefix) written by `cueaudit run`")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to serve on")] = 8501,
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0: other machines too)")] = "127.0.0.1",
    policy: Annotated[Path | None, typer.Option(help="gate.yaml for the verdicts (default built-in)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="until RESULTS holds results, serve a 'waiting for "
                                                      "results' page instead of exiting (containers)")] = False,
    review_db: Annotated[Path | None, typer.Option(
        help="where reviewers' decisions are kept (default: $CUEAUDIT_REVIEW_DB, else RESULTS/_review.sqlite, or a per-URI file in ~/.cache/cueaudit/review for object-store results; "
             "set it for results on a read-only location)")] = None,
) -> None:
    """Browse RESULTS in the Streamlit dashboard (needs the `dashboard` extra); runs until interrupted."""
    import importlib.util

    from common.storage import as_path
    from pipeline.schema import is_results_dir

    root = as_path(results)
    if policy is not None and not policy.is_file():
        _fail(f"policy file {str(policy)!r} does not exist")
    dash = importlib.util.find_spec("dashboard")  # locates the app file without importing Streamlit
    if importlib.util.find_spec("streamlit") is None or dash is None or not dash.submodule_search_locations:
        _fail("the dashboard needs Streamlit: pip install 'cueaudit[dashboard]'")
        return
    if wait and not is_results_dir(root):
        from pipeline.waiting import wait_for_results

        console.print(f"cueaudit dashboard: waiting for results in {root.resolve()} "
                      f"(http://{host}:{port})")
        try:
            wait_for_results(root, host, port, is_results_dir)
        except OSError as e:
            _fail(f"cannot serve the waiting page on {host}:{port}: {e}")
    if not root.exists():
        _fail(f"results directory {str(results)!r} does not exist")
    if not is_results_dir(root):
        _fail(f"{str(results)!r} is not a cueaudit results directory (no model=*/ part files, no _runs/); "
              "write one with `cueaudit run audit.yaml` (or start the dashboard with --wait)")
    pkg = Path(next(iter(dash.submodule_search_locations)))
    app_path = pkg / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.port", str(port),
           "--server.address", host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", str(root.resolve())]
    if policy is not None:
        cmd += ["--policy", str(policy.resolve())]
    # Streamlit puts the app's own folder first on sys.path; make sure `dashboard` resolves to this package
    # (an editable install made before dashboard/__init__.py existed maps it as a namespace package).
    path = [str(pkg.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if review_db is not None:
        env["CUEAUDIT_REVIEW_DB"] = str(review_db.expanduser().resolve())
    console.print(f"cueaudit dashboard: http://{host}:{port}  (results {root.resolve()})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)  # Streamlit replaces this process: signals reach the server directly


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
