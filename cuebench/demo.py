"""``cueaudit demo``: the whole product on the embedded default, in a few minutes on a laptop.

1. writes the three synthetic cue datasets (background colour, co-occurring object, watermark);
2. trains a *biased* model (the cue follows the label) and a *fair* one (it does not) per cue,
   cached under ``.cueaudit/`` so a second demo starts auditing at once;
3. writes real photos (scikit-image's samples with boxes shipped in the repo) for the pretrained
   ImageNet efficientnet-lite0;
4. audits everything on a local Ray with counterfactual backgrounds, into one results directory;
5. prints the verdicts and the gate result, and the command that opens the dashboard.

The biased models are the ground truth of the benchmark: the gate must fail each of them, naming
the check of its cue, and pass the fair ones and the real model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CUES = ("background", "cooccur", "watermark")
CLASSES = ("disk", "square", "triangle")
# The check each biased model must fail (others may fail too: cues leave several traces).
EXPECTED_CHECK = {
    "background": "background_colour_cue",
    "cooccur": "cooccurrence_cue",
    "watermark": "attribute_gap",
}
REAL_LABELS = ("tabby", "espresso", "missile", "moped", "tripod")


@dataclass(frozen=True)
class DemoSize:
    audit_n: int  # images per synthetic audit set (training uses cuebench.train's defaults)


FULL = DemoSize(audit_n=600)
QUICK = DemoSize(audit_n=300)


def _say(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg)
    else:
        log.info(msg)


def synthetic_config(cue: str, audit_dir: Path, model_dirs: dict[str, Path], out: Path, layer: str) -> dict[str, Any]:
    return {
        "name": f"demo-{cue}",
        "output": str(out),
        "dataset": {"format": "manifest", "path": str(audit_dir / "manifest.csv")},
        "models": [{"spec": str(model_dirs[v] / "model.yaml"), "name": f"{cue}-{v}", "layer": layer}
                   for v in ("biased", "fair")],
        "target": "predicted",
        "counterfactual": {"enabled": True},
        "execution": {"batch_size": 64},
    }


def real_config(coco: Path, out: Path) -> dict[str, Any]:
    return {
        "name": "demo-real-photos",
        "output": str(out),
        "dataset": {"format": "coco", "annotations": str(coco), "images": str(coco.parent),
                    "label_categories": list(REAL_LABELS)},
        "models": [{"name": "efficientnet-lite0", "source": "efficientnet-lite0"}],
        "target": "label",
        "counterfactual": {"enabled": True},
        "execution": {"batch_size": 16},
    }


def prepare(work: Path, size: DemoSize, console: Any = None,
            seed: int = 0) -> tuple[list[tuple[str, Path, dict[str, Path]]], Path]:
    """Datasets and trained models: per cue (name, audit set, {variant: model dir}), and the real photos' COCO file."""
    from cuebench.realphotos import write_real_dataset
    from cuebench.synth import AUDIT_CORRELATION, SynthConfig, generate
    from cuebench.train import train_cached

    work.mkdir(parents=True, exist_ok=True)
    configs = []
    for cue in CUES:
        t0 = time.time()
        audit_dir = generate(work / "data" / cue / "audit",
                             SynthConfig(cue=cue, n=size.audit_n, correlation=AUDIT_CORRELATION, seed=seed,
                                         split="audit", classes=CLASSES))
        model_dirs = {}
        for variant in ("biased", "fair"):
            model_dirs[variant] = train_cached(work / "models", cue, variant, seed=seed, classes=CLASSES)
        _say(console, f"[green]✓[/] {cue}: audit set of {size.audit_n} images, biased + fair models "
                      f"({time.time() - t0:.0f} s)")
        configs.append((cue, audit_dir, model_dirs))
    coco = write_real_dataset(work / "data" / "real")
    _say(console, f"[green]✓[/] real photos: {coco.parent}")
    return configs, coco


def run_demo(out: str | Path = "demo-results", work: str | Path = ".cueaudit/demo", quick: bool = False,
             address: str | None = None, console: Any = None, layer: str = "layer3", progress: bool = True) -> int:
    """Run the demo; returns the gate's exit code over all models (1: some model fails, as intended)."""
    from pipeline.config import parse_config
    from pipeline.gate import evaluate, write_json, write_junit, write_markdown
    from pipeline.run import ray_session, run_audit

    out, work = Path(out).resolve(), Path(work).resolve()
    size = QUICK if quick else FULL
    t0 = time.time()
    _say(console, "[bold]1/3[/] datasets and models (cached after the first run)")
    synthetic, coco = prepare(work, size, console)
    cfg_dir = work / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    raws = [(f"{cue}.yaml", synthetic_config(cue, a, m, out, layer)) for cue, a, m in synthetic]
    raws.append(("real-photos.yaml", real_config(coco, out)))
    _say(console, "[bold]2/3[/] audits on a local Ray (Grad-CAM + mass metrics + counterfactual backgrounds)")
    with ray_session(address, None):
        for fname, raw in raws:
            path = cfg_dir / fname
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            loaded = parse_config(raw, path)
            s = run_audit(loaded, progress=progress, console=console)
            done = ", ".join(f"{m} {r.scored} scored/{r.skipped} skipped" for m, r in s.models.items())
            _say(console, f"[green]✓[/] {raw['name']}: {done} ({s.seconds:.0f} s)  config: {path}")
    _say(console, "[bold]3/3[/] gate (default policy)")
    verdict = evaluate(out)
    write_json(verdict, out / "gate.json")
    write_junit(verdict, out / "gate-junit.xml")
    write_markdown(verdict, out / "gate.md")
    if console is not None:
        from pipeline.report import verdict_table

        console.print(verdict_table(verdict))
        for m in verdict.models:
            for r in m.checks:
                if r.status in ("FAIL", "WARN"):
                    style = "red" if r.status == "FAIL" else "yellow"
                    console.print(f"  [{style}]{r.status}[/] {m.model}: {r.check} — {r.message}", soft_wrap=True)
        console.print(f"\ngate: {'[green]passed' if verdict.passed else '[red]failed'}[/] "
                      f"(exit code {0 if verdict.passed else 1}; the biased models are meant to fail; WARN passes)")
        console.print(f"demo finished in {time.time() - t0:.0f} s; results in {out}")
        console.print(f"\nopen the dashboard:  [bold]cueaudit dashboard {out}[/]")
        console.print(f"CI-style gate:       cueaudit gate {out} --junit gate.xml --markdown gate.md")
    return 0 if verdict.passed else 1
