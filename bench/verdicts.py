"""``python -m bench.verdicts``: the gate measured as a classifier of models, on held-out seeds.

A grid of planted-cue scenarios (:data:`FAMILIES` × :data:`STRENGTHS` × seeds), each with a
*biased* model (trained with the cue following the label) and a *fair* one (cue independent of the
label). Ground truth is verified, not assumed: each model is evaluated on cue-aligned and
cue-reversed images of its scenario (:func:`truth`). Then every model is audited as a user would
audit it — through ``manifest-public.csv`` (object annotations, co-occurring objects included, and
the watermark a picture carries; no oracle attributes), counterfactuals on, the automatic layer —
and judged by the gate with the default policy (or ``--policy``). TPR is the share of
verified-biased models that FAIL a check naming their cue (:attr:`Family.checks`); FPR the share of
verified-fair models that FAIL at all.

The rows go to ``CALIBRATION.json`` (key ``verdicts``); CALIBRATION.md and README's table are
rendered from it by :mod:`bench.calibration_doc`. Thresholds may only be tuned on the calibration
seeds (:mod:`bench.calibrate`, 201-203); this reports on 301-303. Datasets and models are cached
under ``--work``; audits and the gate run afresh every time (they are what is measured).

    python -m bench.verdicts                    # full grid, writes CALIBRATION.json/.md and README's table
    python -m bench.verdicts --quick --json x.json   # 4 families x 1 strength x 1 seed, small sets
    python -m bench.verdicts --render           # redraw CALIBRATION.md and README from the JSON
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import calibration_doc as doc_mod

log = logging.getLogger("bench.verdicts")

CLASSES = ("disk", "square", "triangle")
STRENGTHS = ("weak", "medium", "strong")
CALIBRATION_SEEDS = (201, 202, 203)
REPORT_SEEDS = (301, 302, 303)
BIASED_DROP = 0.30  # accuracy lost on cue-reversed images: at least this -> biased
FAIR_DROP = 0.05  # at most this (and accurate) -> fair
MIN_ACCURACY = 0.80  # on cue-aligned images; a model below it is broken, not fair


@dataclass(frozen=True)
class Family:
    """A cue family: the synthetic cue, its salience per strength, and the checks that name it."""

    name: str
    cue: str
    checks: tuple[str, ...]
    salience: dict[str, float]
    why: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("background", "background", ("background_colour_cue", "counterfactual_flip"),
           {"weak": 0.25, "medium": 0.5, "strong": 1.0},
           "The cue is the background's colour: the colour check names it, and swapping the background for "
           "another class's (BG-Gap) moves it with the background."),
    Family("texture", "texture", ("counterfactual_flip",),
           {"weak": 0.3, "medium": 0.6, "strong": 1.0},
           "The stripes live in the background and share every class's colour statistics, so the background "
           "swap is the one check that can expose them (the colour check must not, and cannot)."),
    Family("cooccur", "keyboard", ("cooccurrence_cue",),
           {"weak": 0.4, "medium": 0.7, "strong": 1.0},
           "The co-occurring object is annotated, as the keyboard beside a mouse would be, and "
           "`cooccurrence_cue` names it; a background swap carries the donor's object along but blames "
           "'the background', not the object, so it does not count."),
    # A watermark only wins over shape near full salience: trained at 0.99 correlation (seed 901, a
    # development seed outside every reported set), the model read shape at salience 0.5 (accuracy
    # drop 0.01 on reversed cues) and 0.8 (0.13), and the mark at 0.9 (0.96) and 0.95 (0.99).
    Family("watermark", "watermark", ("attribute_gap", "counterfactual_flip"),
           {"weak": 0.9, "medium": 0.95, "strong": 1.0},
           "The manifest records which mark an image carries (as a stock-photo dataset does), so "
           "`attribute_gap` names it; the mark sits in the background, so the background swap moves it too."),
)}


@dataclass(frozen=True)
class Grid:
    """What to build and audit; :data:`FULL` and :data:`QUICK` are the two sizes."""

    families: tuple[str, ...] = tuple(FAMILIES)
    strengths: tuple[str, ...] = STRENGTHS
    seeds: tuple[int, ...] = REPORT_SEEDS
    audit_n: int = 180  # 60 per class; at correlation 0.8 about 12 per class conflict with the cue
    audit_correlation: float = 0.8
    verify_n: int = 300  # per split (cue-aligned, cue-reversed): the SD of a fair model's drop is ~0.015
    train_n: int = 2100
    epochs: int = 6
    backdrop: str = "mixed"
    edge_blur: float = 1.0
    size: int = 64
    classes: tuple[str, ...] = CLASSES
    quick: bool = False

    def scenarios(self) -> list[Scenario]:
        return [Scenario(f, s, seed) for seed in self.seeds for f in self.families for s in self.strengths]


FULL = Grid()
# The quick grid's models are the full grid's (same scenarios, same training: with 1,200 images and 5 epochs
# the fair keyboard and texture models did not learn shape, aligned accuracy 0.49 and 0.64), so the two share
# a cache; only its audit and verification sets are smaller.
QUICK = Grid(strengths=("medium",), seeds=REPORT_SEEDS[:1], audit_n=120, verify_n=150, quick=True)


@dataclass(frozen=True)
class Scenario:
    family: str
    strength: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.strength}-s{self.seed}"

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def salience(self) -> float:
        return self.spec.salience[self.strength]


def truth(acc_aligned: float, acc_reversed: float) -> str:
    """Verified ground truth from the cue-reversal test: ``biased``, ``fair`` or ``ambiguous``."""
    drop = acc_aligned - acc_reversed
    if drop >= BIASED_DROP:
        return "biased"
    if drop <= FAIR_DROP and acc_aligned >= MIN_ACCURACY:
        return "fair"
    return "ambiguous"


@dataclass
class Built:
    """One scenario's trained models, their reversal accuracies and its audit set."""

    scenario: Scenario
    models: dict[str, Path]
    accuracy: dict[str, dict[str, float]]  # variant -> {aligned, reversed}
    audit_dir: Path
    conflicting: dict[str, int]  # label -> cue-conflicting images in the audit set
    timing: dict[str, float] = field(default_factory=dict)


def _render_opts(grid: Grid, sc: Scenario) -> dict[str, Any]:
    return {"salience": sc.salience, "backdrop": grid.backdrop, "edge_blur": grid.edge_blur}


def build(grid: Grid, sc: Scenario, work: Path) -> Built:
    """Train (cached) both models, evaluate them on cue-aligned/reversed images, write the audit set."""
    from cuebench.synth import SynthConfig, generate
    from cuebench.train import evaluate, train_cached

    opts = _render_opts(grid, sc)
    cue = sc.spec.cue
    t0 = time.perf_counter()
    models = {v: train_cached(work / "models", cue, v, seed=sc.seed, train_n=grid.train_n, epochs=grid.epochs,
                              size=grid.size, classes=grid.classes, **opts)  # type: ignore[arg-type]
              for v in ("biased", "fair")}
    t1 = time.perf_counter()
    base = SynthConfig(cue=cue, n=grid.verify_n, correlation=1.0, size=grid.size, seed=sc.seed, classes=grid.classes,
                       split="aligned", **opts)
    data = work / "data" / sc.name
    splits = {"aligned": generate(data / f"aligned-{grid.verify_n}", base),
              "reversed": generate(data / f"reversed-{grid.verify_n}", replace(base, correlation=0.0, split="cue_reversed"))}
    accuracy = {v: {s: evaluate(m, d) for s, d in splits.items()} for v, m in models.items()}
    t2 = time.perf_counter()
    audit = generate(data / f"audit-{grid.audit_n}", replace(base, n=grid.audit_n, correlation=grid.audit_correlation,
                                                             split="audit"))
    with open(audit / "manifest.csv", newline="") as f:  # the oracle, for the report only; the audit never sees it
        conflicting = Counter(r["label"] for r in csv.DictReader(f) if json.loads(r["attributes"])["cue_aligned"] == "no")
    t3 = time.perf_counter()
    return Built(sc, models, accuracy, audit, {c: conflicting.get(c, 0) for c in grid.classes},
                 {"train_s": t1 - t0, "verify_s": t2 - t1 + time.perf_counter() - t3, "audit_data_s": t3 - t2})


def audit_config(b: Built, results: Path) -> dict[str, Any]:
    """What a user would write: the public manifest, both models, counterfactuals on, defaults otherwise."""
    from cuebench.synth import PUBLIC_MANIFEST

    return {
        "name": f"verdicts-{b.scenario.name}",
        "output": str(results),
        "dataset": {"format": "manifest", "path": str(b.audit_dir / PUBLIC_MANIFEST)},
        "models": [{"spec": str(m / "model.yaml"), "name": f"{b.scenario.name}-{v}"} for v, m in b.models.items()],
        "counterfactual": {"enabled": True},
        "execution": {"batch_size": 64},
    }


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_record(r: Any) -> dict[str, Any]:
    """One CheckResult as JSON: status, message, thresholds and every finding's estimate."""
    return {
        "status": r.status, "message": r.message, "direction": r.direction, "warn": r.warn, "fail": r.fail,
        "findings": [{"scope": f.scope, "statistic": f.statistic, "value": _num(f.estimate.value),
                      "lo": _num(f.estimate.lo), "hi": _num(f.estimate.hi), "n": int(f.estimate.n),
                      "status": f.status, "judged": bool(f.judged)} for f in r.findings],
    }


def model_rows(built: Sequence[Built], verdict: Any) -> list[dict[str, Any]]:
    by_name = {m.model: m for m in verdict.models}
    rows = []
    for b in built:
        sc = b.scenario
        for v in b.models:
            name = f"{sc.name}-{v}"
            acc = b.accuracy[v]
            mv = by_name.get(name)
            rows.append({
                "model": name, "family": sc.family, "strength": sc.strength, "seed": sc.seed, "variant": v,
                "cue": sc.spec.cue, "salience": sc.salience, "cue_checks": list(sc.spec.checks),
                "acc_aligned": acc["aligned"], "acc_reversed": acc["reversed"],
                "drop": acc["aligned"] - acc["reversed"], "truth": truth(acc["aligned"], acc["reversed"]),
                "status": mv.status if mv else "ERROR",
                "checks": {r.check: check_record(r) for r in mv.checks} if mv else {},
            })
    return rows


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def _build_in_worker(grid: Grid, sc: Scenario, work: Path, threads: int) -> Built:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("%s: train, verify, audit set", sc.name)
    return build(grid, sc, work)


def build_all(grid: Grid, work: Path, jobs: int = 2, threads: int = 1) -> list[Built]:
    """:func:`build` every scenario in ``jobs`` processes of ``threads`` torch threads each.

    Small models train fastest one thread per process: on a shared 2-core machine two threads
    contending with other processes were 10x slower per step than one (bench notes in CALIBRATION.md).
    """
    scenarios = grid.scenarios()
    if jobs <= 1:
        return [_build_in_worker(grid, sc, work, threads) for sc in scenarios]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_build_in_worker, grid, sc, work, threads) for sc in scenarios]
        return [f.result() for f in futures]


def run_grid(grid: Grid, work: Path, policy_path: str | None = None, threads: int = 1, jobs: int = 2,
             kind: str = "verdicts") -> dict[str, Any]:
    """Build every scenario, audit all models on a local Ray, judge them: one collection of rows."""
    from pipeline.config import load_policy, parse_config
    from pipeline.gate import evaluate
    from pipeline.run import ray_session, run_audit

    policy = load_policy(policy_path)
    work = work.resolve()
    started = time.perf_counter()
    built = build_all(grid, work, jobs, threads)
    t_built = time.perf_counter()
    results = work / f"results-{kind}"
    shutil.rmtree(results, ignore_errors=True)  # audits are what is measured: never reuse them
    t_audit = time.perf_counter()
    # "local", not None: Ray's default joins the cluster recorded in /tmp/ray/ray_current_cluster, which
    # on a shared machine may be someone else's (or a dead one, and ray.init then retries forever).
    with ray_session("local", None):
        for b in built:
            raw = audit_config(b, results)
            cfg_path = work / "configs" / f"{raw['name']}.yaml"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(raw, indent=1))  # JSON is YAML: a user can rerun any audit
            log.info("audit %s", raw["name"])
            run_audit(parse_config(raw, cfg_path), progress=False)
    t_gate = time.perf_counter()
    verdict = evaluate(results, policy)
    t_end = time.perf_counter()
    rows = model_rows(built, verdict)
    return {
        "kind": kind,
        "version": 1,
        "date": dt.date.today().isoformat(),
        "git": _git(),
        "policy": "default" if policy_path is None else f"`{policy_path}`",
        "seeds": list(grid.seeds),
        "grid": {**{k: v for k, v in grid.__dict__.items()}, "families": list(grid.families),
                 "strengths": list(grid.strengths), "seeds": list(grid.seeds), "classes": list(grid.classes),
                 "biased_correlation": _biased_correlation()},
        "families": {f: {"cue": FAMILIES[f].cue, "checks": list(FAMILIES[f].checks),
                         "salience": {s: FAMILIES[f].salience[s] for s in grid.strengths},
                         "salience_note": _salience_note(FAMILIES[f].cue), "why": FAMILIES[f].why}
                     for f in grid.families},
        "truth_rule": {"biased_drop": BIASED_DROP, "fair_drop": FAIR_DROP, "min_accuracy": MIN_ACCURACY},
        "audits": {b.scenario.name: {"n": grid.audit_n, "conflicting_per_class": b.conflicting} for b in built},
        "models": rows,
        "summary": doc_mod.summary_json(rows),
        "timing": {"build_s": t_built - started,  # wall time, ``jobs`` processes
                   **{k: sum(b.timing[k] for b in built) for k in ("train_s", "verify_s", "audit_data_s")},
                   "audit_s": t_gate - t_audit, "gate_s": t_end - t_gate, "total_s": t_end - started},
        "machine": {"cpus": os.cpu_count(), "build_jobs": jobs, "torch_threads": threads,
                    "load_avg": list(os.getloadavg())},
    }


def _biased_correlation() -> float:
    from cuebench.synth import BIASED_CORRELATION

    return BIASED_CORRELATION


def _salience_note(cue: str) -> str:
    from cuebench.synth import CUES

    return CUES.get(cue).salience_note


def _print_summary(c: dict[str, Any]) -> None:
    s = doc_mod.summarise(c["models"])
    print(f"{c['kind']}: {s['models']} models ({s['biased']} biased, {s['fair']} fair, {s['ambiguous']} ambiguous); "
          f"TPR {s['tpr'].fmt()}, FPR {s['fpr'].fmt()}; {c['timing']['total_s'] / 60:.1f} min")
    for r in c["models"]:
        flagged = ", ".join(f"{k}={v['status']}" for k, v in r["checks"].items() if v["status"] in ("FAIL", "WARN", "ERROR"))
        print(f"  {r['model']:32} {r['truth']:9} drop {r['drop']:+.2f}  {r['status']:5} {flagged}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options :mod:`bench.verdicts` and :mod:`bench.calibrate` share."""
    ap.add_argument("--quick", action="store_true", help="4 families x 1 strength x 1 seed with small sets")
    ap.add_argument("--seeds", type=int, nargs="+", help="scenario seeds")
    ap.add_argument("--policy", help="a gate.yaml (default: the default policy)")
    ap.add_argument("--work", type=Path, default=Path(".cueaudit/verdicts"), help="cache of datasets and models")
    ap.add_argument("--json", type=Path, help=f"results JSON to update (default {doc_mod.JSON_NAME}; none with --quick)")
    ap.add_argument("--markdown", type=Path, help="CALIBRATION.md to render (default: with the full grid)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes that train models and write data (default: 2, or 1 on one CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process (default 1)")


def grid_from_args(a: argparse.Namespace, seeds: tuple[int, ...]) -> Grid:
    grid = QUICK if a.quick else FULL
    return replace(grid, seeds=tuple(a.seeds) if a.seeds else seeds)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verdicts", description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--readme", type=Path, help="README.md whose verdict table to render (default: with the full grid)")
    ap.add_argument("--render", action="store_true", help="only redraw CALIBRATION.md and README's table from the JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    full = not a.quick
    json_path = a.json or (Path(doc_mod.JSON_NAME) if full or a.render else None)
    markdown = a.markdown or (Path("CALIBRATION.md") if full or a.render else None)
    readme = a.readme or (Path("README.md") if full or a.render else None)
    if a.render:
        doc = doc_mod.load(json_path)
        if not doc:
            ap.error(f"--render: {json_path} does not exist or is empty")
        doc_mod.write_documents(doc, json_path, markdown, readme)
        return 0
    grid = grid_from_args(a, QUICK.seeds if a.quick else REPORT_SEEDS)
    if set(grid.seeds) & set(CALIBRATION_SEEDS):
        log.warning("seeds %s overlap the calibration seeds %s: these rates are not held out",
                    sorted(set(grid.seeds) & set(CALIBRATION_SEEDS)), CALIBRATION_SEEDS)
    collection = run_grid(grid, a.work, a.policy, a.threads, a.jobs)
    _print_summary(collection)
    if json_path is not None:
        doc_mod.store("verdicts", collection, json_path, markdown, readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
