"""Slice discovery on the synthetic benchmark with the cue *not annotated*, scored as dcbench scores it.

For every cue and seed: the synthetic audit split (40% of each class cue-conflicting), rewritten as a
manifest with no ``attributes`` and only the labelled object's annotation (the co-occurring
distractor's annotation removed), so nothing in the audit names the cue; the biased and the fair model
of that seed, audited at ``layer3`` with embeddings (no counterfactuals); the gate's default policy.

The ground truth, each image's ``cue_aligned`` attribute from the synth, is kept aside and only
scores what the analysis found. A planted slice is one class's cue-conflicting images (the disks
that carry another class's watermark). As in dcbench (Eyuboglu et al. 2022), each planted slice is
matched to the discovered slice of its class with the highest average precision of its membership
probability, and reported with

- **precision at 10**: the share of planted-slice images among the matched slice's 10 most typical
  members (highest membership probability);
- **recall**: the share of the planted slice's images that the matched slice holds;
- **found**: the matched slice is flagged (WARN or FAIL) by ``slice_gap``.

Fair models must flag nothing: the table counts their flagged slices.

    python -m bench.slices --out bench/out/slices.md [--seeds 101 102] [--cues watermark background cooccur]
    python -m bench.slices --from-json docs/slices-benchmark.json --into CALIBRATION.md README.md  # no audits

The rows are saved to ``docs/slices-benchmark.json`` (README's table is compared with them by a
test). ``--into FILE`` replaces this section in FILE (or appends it; in README the block between the
``slices`` markers), leaving the rest of the file as it is. CALIBRATION.md is also rendered by
:mod:`bench.calibration_doc`, which takes this section from the saved rows, so ``python -m
bench.calibrate`` and ``python -m bench.verdicts`` keep it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cuebench.demo import CLASSES
from cuebench.synth import AUDIT_CORRELATION, SynthConfig, generate
from cuebench.train import train_cached

log = logging.getLogger(__name__)

CUES = ("watermark", "background", "cooccur")
SEEDS = (101, 102)
LAYER = "layer3"


def unannotated_manifest(audit: Path, out: Path) -> dict[str, dict[str, str]]:
    """Write ``out``: the audit split with no attributes and only the labelled object's annotation.
    Returns the ground truth kept aside: image_id -> {label, cue_class, cue_aligned}."""
    truth: dict[str, dict[str, str]] = {}
    rows = []
    with open(audit / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            image_id = Path(r["image"]).stem
            attrs = json.loads(r["attributes"])
            truth[image_id] = {"label": r["label"], "cue_class": attrs["cue_class"], "cue_aligned": attrs["cue_aligned"]}
            target = [o for o in json.loads(r["objects"]) if o["category"] == r["label"]]
            rows.append((image_id, str((audit / r["image"]).resolve()), r["label"], json.dumps(target)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("image_id", "image", "label", "objects"))
        w.writerows(rows)
    return truth


def audit(work: Path, cue: str, seed: int, audit_n: int) -> tuple[Path, dict[str, dict[str, str]]]:
    """Audit the seed's biased and fair models on the unannotated split; returns (results, truth)."""
    from pipeline.config import parse_config
    from pipeline.run import run_audit

    data = generate(work / "data" / f"{cue}-{seed}",
                    SynthConfig(cue=cue, n=audit_n, correlation=AUDIT_CORRELATION, seed=seed, split="audit",
                                classes=CLASSES))
    manifest = work / "data" / f"{cue}-{seed}-unannotated.csv"
    truth = unannotated_manifest(data, manifest)
    results = work / "results" / f"{cue}-{seed}"
    models = [{"spec": str(train_cached(work / "models", cue, v, seed=seed, classes=CLASSES) / "model.yaml"),
               "name": f"{cue}-{v}", "layer": LAYER} for v in ("biased", "fair")]
    raw = {"name": f"slices-{cue}-{seed}", "output": str(results), "dataset": {"format": "manifest", "path": str(manifest)},
           "models": models, "execution": {"batch_size": 64}}
    run_audit(parse_config(raw, work / f"{cue}-{seed}.yaml"), progress=False)
    return results, truth


def score(results: Path, truth: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """dcbench's numbers per (model, planted slice), and the gate's statuses."""
    from pipeline.analysis.frame import load_frame
    from pipeline.analysis.slices import discover, load_embeddings
    from pipeline.config import GatePolicy
    from pipeline.gate import evaluate, slice_options, stat_options

    policy = GatePolicy()
    verdict = evaluate(results, policy)
    frame = load_frame(results)
    gt = pd.DataFrame.from_dict(truth, orient="index").rename_axis("image_id").reset_index()
    rows = []
    for m in verdict.models:
        by = {r.check: r for r in m.checks}
        sg = by["slice_gap"]
        status = {f.scope: f.status for f in sg.findings}
        t = time.perf_counter()
        opts = slice_options(policy)
        ev, members = discover(frame[frame.model == m.model], load_embeddings(results, m.model, opts.column),
                               stat_options(policy), opts)
        seconds = time.perf_counter() - t
        mem = members.merge(gt, on=["image_id", "label"])
        planted = mem[mem.cue_aligned == "no"].groupby("label").size()
        flagged = [s for s in ev.slices if status.get(s.scope) in ("WARN", "FAIL")]
        base = {"model": m.model, "variant": m.model.rsplit("-", 1)[1], "status": m.status,
                "slice_gap": sg.status, "attribute_gap": by["attribute_gap"].status if "attribute_gap" in by else "-",
                "slices": len(ev.slices), "flagged": len(flagged), "seconds": seconds,
                "flagged_conflicting": int(mem[mem.slice.isin([s.scope for s in flagged])].cue_aligned.eq("no").sum()),
                "flagged_members": int(mem.slice.isin([s.scope for s in flagged]).sum()),
                "conflicting": int((mem.cue_aligned == "no").sum())}
        for label, size in planted.items():
            mine = mem[mem.label == label]
            target = mine.cue_aligned == "no"
            best = None
            for s in (s for s in ev.slices if s.label == label):
                inside = (mine.cluster == s.cluster).to_numpy()
                ap = _average_precision(target.to_numpy(), np.where(inside, mine.prob.to_numpy(), 0.0))
                if best is None or ap > best[0]:
                    best = (ap, s, inside)
            row = {**base, "label": label, "planted": int(size)}
            if best is None:
                rows.append({**row, "ap": 0.0, "p_at_10": 0.0, "recall": 0.0, "precision": 0.0, "found": False})
                continue
            ap, s, inside = best
            top = mine[inside].sort_values("prob", ascending=False, kind="stable").head(10)
            top_target = top.cue_aligned == "no"
            rows.append({**row, "ap": ap, "p_at_10": float(top_target.mean()) if len(top) else 0.0,
                         "recall": float((target & inside).sum() / size), "precision": float(target[inside].mean()),
                         "found": status.get(s.scope) in ("WARN", "FAIL"), "matched": s.scope,
                         "matched_status": status.get(s.scope), "gap": s.gap.fmt()})
    return rows


def _average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """Average precision of ranking by ``score`` (ties broken by position, as scikit-learn's is not)."""
    if not truth.any():
        return 0.0
    order = np.argsort(-score, kind="stable")
    hits = truth[order]
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(prec[hits].mean())


def collect(work: Path, cues: tuple[str, ...], seeds: tuple[int, ...], audit_n: int) -> list[dict[str, Any]]:
    from pipeline.run import ray_session

    rows = []
    with ray_session(None, None):
        for seed in seeds:
            for cue in cues:
                results, truth = audit(work, cue, seed, audit_n)
                for r in score(results, truth):
                    rows.append({"cue": cue, "seed": seed, **r})
    return rows


TITLE = "## Slice discovery with the cue not annotated"
BEGIN, END = "<!-- slices:begin -->", "<!-- slices:end -->"
SAVED = Path("docs/slices-benchmark.json")


def render(saved: dict[str, Any]) -> str:
    """The CALIBRATION.md section: what was run, then :func:`table`."""
    seeds, audit_n = saved["seeds"], saved["audit_n"]
    return "\n".join([
        TITLE,
        "",
        (f"Generated by `python -m bench.slices` on {saved['date']}, seeds {', '.join(map(str, seeds))} "
         f"({audit_n} audit images per cue and seed, {int(100 * (1 - AUDIT_CORRELATION))}% cue-conflicting; models "
         f"audited at `{LAYER}`; the gate's default policy). The audit manifests carry no attributes and no "
         "annotation but the labelled object's; the synth's `cue_aligned` only scores the result. A planted slice is "
         "one class's cue-conflicting images; it is matched to the discovered slice of its class with the highest "
         "average precision (dcbench). Precision at 10: planted images among that slice's 10 most typical members; "
         "recall: the planted images it holds; found: that slice is flagged (WARN/FAIL) by `slice_gap`."),
        "",
        table(saved["rows"]),
    ])


def table(rows: list[dict[str, Any]]) -> str:
    """The measurement as a Markdown table and the sentence read off it (README shows the same)."""
    df = pd.DataFrame(rows)
    out = [
        ("| cue | variant | planted slices | found | precision at 10 | recall | precision | flagged slices | "
         "`slice_gap` | `attribute_gap` | seconds (analysis) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (cue, variant), g in df.groupby(["cue", "variant"], sort=False):
        per_model = g.drop_duplicates(["seed", "model"])
        out.append(
            f"| {cue} | {variant} | {len(g)} | {int(g.found.sum())} | {_span(g.p_at_10)} | {_span(g.recall)} | "
            f"{_span(g.precision)} | {int(per_model.flagged.sum())} | {_statuses(per_model.slice_gap)} | "
            f"{_statuses(per_model.attribute_gap)} | {per_model.seconds.max():.2f} |")
    biased, fair = df[df.variant == "biased"], df[df.variant == "fair"]
    fm = fair.drop_duplicates(["seed", "model"])
    bm = biased.drop_duplicates(["seed", "model"])
    out += [
        "",
        "Cells with a range give mean (min .. max) over the planted slices of all seeds.",
        "",
        (f"Biased models: {int(biased.found.sum())} of {len(biased)} planted slices found by a flagged slice, "
         f"precision at 10 {biased.p_at_10.mean():.2f}, recall {biased.recall.mean():.2f} on average; their "
         f"flagged slices hold {bm.flagged_conflicting.sum()} of the {bm.conflicting.sum()} cue-conflicting images "
         f"({bm.flagged_conflicting.sum() / max(bm.conflicting.sum(), 1):.0%}), and "
         f"{bm.flagged_conflicting.sum() / max(bm.flagged_members.sum(), 1):.0%} of their members are "
         "cue-conflicting. "
         f"Fair models: {int(fm.flagged.sum())} flagged slices over {len(fm)} audits "
         f"(`slice_gap` {_statuses(fm.slice_gap)})."),
    ]
    return "\n".join(out) + "\n"


def into(path: Path, section: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Put the measurement into ``path``: between the ``slices`` markers when it has them (README:
    :func:`table` of ``rows``), else replace the section titled :data:`TITLE` (up to the next
    ``## ``) with ``section``, or append it."""
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text and rows is not None:
        head, rest = text.split(BEGIN, 1)
        path.write_text(f"{head}{BEGIN}\n{table(rows)}{END}{rest.split(END, 1)[1]}")
        return
    if TITLE in text:
        head, rest = text.split(TITLE, 1)
        tail = rest.split("\n## ", 1)
        text = head + section.rstrip() + ("\n\n## " + tail[1] if len(tail) > 1 else "\n")
    else:
        text = text.rstrip() + ("\n\n" if text else "") + section.rstrip() + "\n"
    path.write_text(text)


def _span(x: pd.Series) -> str:
    return f"{x.mean():.2f} ({x.min():.2f} .. {x.max():.2f})"


def _statuses(x: pd.Series) -> str:
    return ", ".join(f"{k} {v}" for k, v in x.value_counts().sort_index().items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slices", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/out/slices.md"))
    p.add_argument("--work", type=Path, default=Path(".cueaudit/slices"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--cues", nargs="+", default=list(CUES), choices=CUES)
    p.add_argument("--audit-n", type=int, default=600)
    p.add_argument("--from-json", type=Path, default=None, help="re-render the rows a previous run saved")
    p.add_argument("--save", type=Path, default=SAVED, help="where the rows are saved (JSON)")
    p.add_argument("--into", type=Path, nargs="*", default=[],
                   help="also put the result into these Markdown files (CALIBRATION.md, README.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
    else:
        rows = collect(args.work.resolve(), tuple(args.cues), tuple(args.seeds), args.audit_n)
        saved = {"date": dt.date.today().isoformat(), "seeds": list(args.seeds), "audit_n": args.audit_n,
                 "rows": rows}
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    section = render(saved)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(section)
    for f in args.into:
        into(f, section, saved["rows"])
    log.info("wrote %s%s", args.out, "".join(f" and {f}" for f in args.into))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
