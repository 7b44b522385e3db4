"""One read for many models: N models sharing a preprocessing in one ``cueaudit run``, side by side
with N separate runs and with a chain of actor stages (one per model).

The N models are one network at N different CAM layers (distinct fingerprints, the same input), over
the e2e benchmark's synthetic 224x224 JPEGs (:mod:`bench.e2e`), on an embedded local Ray, CPU
actors, into fresh results directories. Two networks: ``tiny_resnet`` (:mod:`workers.archs`, whose
forward is cheap next to decoding: the decode-bound case) and torchvision's ResNet-18 (the
model-bound case).

- **separate**: N ``cueaudit run``s of one model each (each reads and decodes every image);
- **one run**: one ``cueaudit run`` of the N models, one prepare stage and one actor pool hosting
  them all (:mod:`workers.multi`);
- **chained stages** (a prototype, here only): the prepare stage feeding N actor stages, each
  scoring one model and passing the prepared batch on with its result columns added; the driver
  only counts the rows (no Parquet), which favours it slightly.

Per plan: image files decoded (from the run records' prepare groups), worker seconds in prepare
and in scoring (summed over tasks and actors), the streaming loop's wall time (actor start and
model loading included) and the total with Ray's start. "One decode plus N model passes" predicts
the one run's worker time from the single-model run: ``prepare + N x score``. The one run is also
timed with as many CPU actors as CPUs (one torch thread each), the process-level parallelism a chain
of stages gets for free on a CPU.

    python -m bench.multimodel --images 512 --models 3
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e import CACHE, CLASSES, dataset, resnet18_weights

log = logging.getLogger(__name__)

NETWORKS = {
    "tiny_resnet": ({"source": "python:workers.archs:tiny_resnet"}, ("layer3", "layer2", "layer1", "stem")),
    "resnet18": ({"source": "torchvision:resnet18"}, ("layer4", "layer3", "layer2", "layer1")),
}


def _models(network: str, n: int, cache: Path) -> list[dict[str, Any]]:
    base, layers = NETWORKS[network]
    if n > len(layers):
        raise ValueError(f"{network}: at most {len(layers)} models (one per layer), asked for {n}")
    extra = {"weights": str(resnet18_weights(cache).resolve())} if network == "resnet18" else {}
    return [{"name": f"{network}-{layer}", **base, **extra, "num_classes": len(CLASSES), "classes": list(CLASSES),
             "preprocess": {"size": 224, "resize": "resize"}, "layer": layer, "fine_layer": "none"}
            for layer in layers[:n]]


def _config(data: Path, out: Path, models: list[dict[str, Any]], batch: int, num_cpus: int,
            workers: int | None = None) -> dict[str, Any]:
    exe: dict[str, Any] = {"batch_size": batch, "device": "cpu", "num_cpus": num_cpus}
    if workers:
        exe["workers"] = workers
    return {"name": "bench-multi", "output": str(out),
            "dataset": {"format": "manifest", "path": str(Path(data).resolve() / "manifest.csv")},
            "models": models, "execution": exe}


def _audit(data: Path, work: Path, models: list[dict[str, Any]], batch: int, num_cpus: int,
           workers: int | None = None) -> dict[str, Any]:
    """One ``run_audit`` of ``models`` into a fresh directory: its record's group numbers and times."""
    from pipeline.config import parse_config
    from pipeline.run import run_audit
    from pipeline.schema import read_runs

    out = Path(tempfile.mkdtemp(prefix="multi-", dir=work))
    loaded = parse_config(_config(data, out / "results", models, batch, num_cpus, workers), out / "audit.yaml")
    t = time.perf_counter()
    run_audit(loaded, progress=False)
    total = time.perf_counter() - t
    (record,) = read_runs(loaded.output)
    (group,) = record.groups
    rows = sum(m.scored for m in record.models.values())
    return {"decodes": group.decodes, "images": group.images, "prepare_s": group.seconds.get("prepare", 0.0),
            "score_s": sum(m.seconds.get("score", 0.0) for m in record.models.values()),
            "wall_s": group.seconds["wall"], "total_s": total, "rows": rows}


def _sum(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: sum(r[k] for r in runs) for k in runs[0]}


class ChainStage:
    """A prototype actor stage: scores one model and passes the batch on with its columns added."""

    def __init__(self, spec: Any, opts: Any, k: int, last: bool, threads: int) -> None:
        import torch

        from workers.score import Scorer

        torch.set_num_threads(threads)
        self.scorer, self.k, self.last = Scorer(spec, opts), k, last

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.scorer(batch)
        mine = {f"m{self.k}_{key}": v for key, v in out.items() if key in ("pred", "object_share", "cam", "_t_score")}
        kept = {key: v for key, v in batch.items() if key.startswith("m")} if self.last else dict(batch)
        return {**kept, **mine}


def _chained(data: Path, work: Path, models: list[dict[str, Any]], batch: int, num_cpus: int) -> dict[str, Any]:
    """The chain of actor stages over the same manifest, plans and prepare options as ``run_audit``."""
    import numpy as np
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.config import parse_config
    from pipeline.readers import read_manifest
    from pipeline.run import BLOCK_ROWS_PER_BATCH, _blocks, plan_models
    from workers.prepare import PrepareOptions, prepare_batch

    loaded = parse_config(_config(data, work / "chained", models, batch, num_cpus), work / "chained.yaml")
    manifest = read_manifest(loaded.config.dataset, loaded.base)
    plans = plan_models(loaded, manifest)
    t = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, address="local",
             _node_ip_address="127.0.0.1")
    try:
        DataContext.get_current().enable_progress_bars = False
        share = 1.0 / (len(plans) + 1)  # every stage and the prepare tasks fit the CPUs at once
        threads = max(1, round(num_cpus / len(plans)))
        ds = ray.data.from_blocks(_blocks(manifest, max(64, batch * BLOCK_ROWS_PER_BATCH)))
        ds = ds.map_batches(prepare_batch, fn_kwargs={"opts": PrepareOptions(plans[0].preprocess)},
                            batch_size=batch, batch_format="numpy", num_cpus=share)
        for k, p in enumerate(plans):
            ds = ds.map_batches(ChainStage, fn_constructor_kwargs={"spec": p.spec, "opts": p.opts, "k": k,
                                                                   "last": k == len(plans) - 1, "threads": threads},
                                batch_size=batch, batch_format="numpy", compute=ActorPoolStrategy(size=1),
                                num_cpus=share)
        t_stream = time.perf_counter()
        rows = score = 0.0
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(b["m0_pred"]) * len(plans)
            score += sum(float(np.sum(b[f"m{k}__t_score"])) for k in range(len(plans)))
        wall = time.perf_counter() - t_stream
    finally:
        ray.shutdown()
    return {"decodes": manifest.num_rows, "images": manifest.num_rows, "prepare_s": float("nan"), "score_s": score,
            "wall_s": wall, "total_s": time.perf_counter() - t, "rows": int(rows)}


def run_multimodel_bench(images: int = 512, n_models: int = 3, batch_size: int = 32, num_cpus: int | None = None,
                         networks: tuple[str, ...] = ("tiny_resnet", "resnet18"), cache: Path = CACHE,
                         chained: bool = True) -> dict[str, Any]:
    """Per network: one model alone, N separate runs, one run of N models, and (``chained``) the chain."""
    num_cpus = num_cpus or os.cpu_count() or 1
    data = dataset(images, cache=cache)
    work = Path(tempfile.mkdtemp(prefix="multimodel-", dir=Path(cache).resolve()))
    load0 = os.getloadavg()[0]
    out: dict[str, Any] = {"images": images, "n": n_models, "batch": batch_size, "num_cpus": num_cpus, "nets": {}}
    try:
        for net in networks:
            models = _models(net, n_models, cache)
            log.info("%s: %d separate runs", net, n_models)
            separate = [_audit(data, work, [m], batch_size, num_cpus) for m in models]
            log.info("%s: one run of %d models", net, n_models)
            one = _audit(data, work, models, batch_size, num_cpus)
            res = {"single": separate[0], "separate": _sum(separate), "one": one}
            if num_cpus > 1:
                log.info("%s: one run of %d models, %d CPU actors", net, n_models, num_cpus)
                res["one_actors"] = _audit(data, work, models, batch_size, num_cpus, workers=num_cpus)
            if chained:
                log.info("%s: chained stages", net)
                res["chained"] = _chained(data, work, models, batch_size, num_cpus)
            out["nets"][net] = res
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_avg"] = max(load0, os.getloadavg()[0])
    return out


PLANS = {
    "single": "1 model, 1 run",
    "separate": "{n} models, {n} separate runs",
    "one": "{n} models, one run (one actor pool hosts them)",
    "one_actors": "{n} models, one run, {cpus} CPU actors of 1 thread",
    "chained": "{n} models, chained actor stages (prototype, no Parquet)",
}


def render_markdown(r: dict[str, Any]) -> str:
    n = r["n"]
    head = ("| network | plan | image files decoded | prepare s (workers) | score s (workers) | stream wall s | "
            "total s (with Ray start) | image x model / s (stream) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for net, res in r["nets"].items():
        for key, row in res.items():
            prep = "-" if row["prepare_s"] != row["prepare_s"] else f"{row['prepare_s']:.1f}"
            lines.append(f"| {net} | {PLANS[key].format(n=n, cpus=r['num_cpus'])} | {row['decodes']:,} | {prep} | {row['score_s']:.1f} | "
                         f"{row['wall_s']:.1f} | {row['total_s']:.1f} | {row['rows'] / row['wall_s']:.1f} |")
    lines += ["", (f"{r['images']:,} JPEGs of 224x224, batch {r['batch']}, CPU actors on a local Ray with "
                   f"{r['num_cpus']} CPUs; {n} models = one network at {n} CAM layers. Peak 1-minute load "
                   f"average {r['load_avg']:.1f}.")]
    return "\n".join(lines)


def interpret(r: dict[str, Any]) -> str:
    n = r["n"]
    parts = []
    for net, res in r["nets"].items():
        sep, one, single = res["separate"], res["one"], res["single"]
        s = (f"**{net}**: one run of {n} models decoded {one['decodes']:,} image files against {sep['decodes']:,} for "
             f"{n} separate runs. Worker time: {one['prepare_s']:.1f} s preparing (one model alone: "
             f"{single['prepare_s']:.1f} s; {n} separate runs: {sep['prepare_s']:.1f} s) and {one['score_s']:.1f} s "
             f"scoring ({one['score_s'] / single['score_s']:.1f}x one model's {single['score_s']:.1f} s): one decode "
             f"plus {n} model passes predicts {single['prepare_s'] + n * single['score_s']:.1f} s, measured "
             f"{one['prepare_s'] + one['score_s']:.1f} s, against {sep['prepare_s'] + sep['score_s']:.1f} s for the "
             f"separate runs. Wall time: {one['wall_s']:.1f} s streaming against {sep['wall_s']:.1f} s "
             f"({sep['wall_s'] / one['wall_s']:.2f}x; {sep['total_s'] / one['total_s']:.2f}x with Ray's start per "
             f"run); of the {sep['wall_s'] - one['wall_s']:.1f} s saved, "
             f"{(sep['prepare_s'] + sep['score_s']) - (one['prepare_s'] + one['score_s']):.1f} s is worker time, the "
             f"rest the start of {n - 1} more streams (actors, model loading).")
        par = res.get("one_actors")
        if par:
            s += f" With {r['num_cpus']} CPU actors the one run streamed in {par['wall_s']:.1f} s."
        ch = res.get("chained")
        if ch:
            best = min(one["wall_s"], par["wall_s"]) if par else one["wall_s"]
            s += (f" The chain of {n} actor stages streamed in {ch['wall_s']:.1f} s ({ch['wall_s'] / best:.2f}x the "
                  "faster one-run plan, without writing Parquet).")
        parts.append(s)
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.multimodel", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-chained", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    r = run_multimodel_bench(args.images, args.models, args.batch, chained=not args.no_chained)
    print(render_markdown(r) + "\n\n" + interpret(r))


if __name__ == "__main__":
    main()
