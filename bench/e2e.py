"""Images/s of ``cueaudit run`` from JPEG files on disk to Parquet, and where the time goes.

The data are synthetic 224x224 JPEGs with polygon annotations (:mod:`cuebench.synth`, the
background-colour cue), generated once and cached under ``.cueaudit/bench/``; the model is a
torchvision ResNet-18 with random weights saved to a local state_dict (3 classes). The audit runs
through the real machinery: :func:`pipeline.config.parse_config` -> :func:`pipeline.run.run_audit`
on an embedded local Ray, into a fresh results directory (a reused one would resume and do nothing).

The per-stage seconds come from the run record (``models[m].seconds``): ``prepare`` and ``score`` are
summed over the CPU tasks and the actor (worker time, so they can exceed the wall time when stages
overlap), ``write`` is the driver's Parquet commits, ``wall`` the model's streaming loop. Ray's own
start-up is timed apart (``ray.init`` + ``ray.shutdown`` of the same local cluster).

    python -m bench.e2e --images 2048      # prints markdown
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE = Path(".cueaudit/bench")
CLASSES = ("disk", "square", "triangle")
MODEL = "resnet18"
TARGET_GPU_IPS = 3000.0  # one GPU with 16 CPU cores, from JPEG


def dataset(n: int, size: int = 224, cache: Path = CACHE) -> Path:
    """``n`` synthetic JPEGs (background-colour cue, 60% aligned) with a manifest; cached by (n, size)."""
    from cuebench.synth import SYNTH_VERSION, SynthConfig, generate

    out = Path(cache) / f"jpg{size}-n{n}-v{SYNTH_VERSION}"
    if not (out / "manifest.csv").is_file():
        generate(out, SynthConfig(cue="background", n=n, correlation=0.6, size=size, classes=CLASSES,
                                  image_format="jpg"))
    return out


def resnet18_weights(cache: Path = CACHE, arch: str = "resnet18") -> Path:
    """A seeded random-weight ResNet-18 (or another torchvision ``arch``, 3 classes) as a local
    state_dict: cueaudit never downloads."""
    import torch
    import torchvision

    path = Path(cache) / f"{arch}-3cls-seed0.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = torchvision.models.get_model(arch, weights=None, num_classes=len(CLASSES))
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def audit_config(data: Path, out: Path, model: dict[str, Any], *, batch_size: int, num_cpus: int,
                 limit: int | None = None, name: str = "bench", embedding: bool = True) -> dict[str, Any]:
    ds: dict[str, Any] = {"format": "manifest", "path": str(Path(data).resolve() / "manifest.csv")}
    if limit:
        ds["limit"] = limit
    return {"name": name, "output": str(out), "dataset": ds, "models": [model], "embedding": {"enabled": embedding},
            "execution": {"batch_size": batch_size, "device": "cpu", "num_cpus": num_cpus}}


class TreeSampler(threading.Thread):
    """Samples this process's descendants (Ray's raylet, GCS and workers) every ``interval`` seconds:
    the titles of the Ray workers seen and the CPU seconds each descendant used."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.titles: set[str] = set()
        self.cpu: dict[int, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.is_set():
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline()[:1])
                    t = p.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if title.startswith("ray::"):  # "ray::Actor(...).method" while a task runs: keep the actor
                    self.titles.add(title[:title.rindex(")") + 1] if ")" in title else title.split(".")[0])
                self.cpu[p.pid] = t.user + t.system
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def ray_startup(num_cpus: int) -> float:
    """Seconds to start and stop an embedded local Ray like ``run_audit`` does."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("bench.e2e needs a process without a running Ray (it times Ray's start-up)")
    t = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR)
    ray.shutdown()
    return time.perf_counter() - t


def run_e2e_bench(images: int = 2048, batch_size: int = 32, num_cpus: int | None = None,
                  cache: Path = CACHE, keep: bool = False, embedding: bool = True) -> dict[str, Any]:
    """One timed ``cueaudit run`` of ResNet-18 over ``images`` 224x224 JPEGs (CPU); ``embedding``
    switches the per-image embeddings (``parquet_bytes``: the parts' size on disk)."""
    import torch

    from pipeline.config import parse_config
    from pipeline.run import run_audit
    from pipeline.schema import read_results, read_runs

    num_cpus = num_cpus or os.cpu_count() or 1
    t = time.perf_counter()
    data = dataset(images, cache=cache)
    weights = resnet18_weights(cache)
    prep_s = time.perf_counter() - t
    model = {"name": MODEL, "source": "torchvision:resnet18", "weights": str(weights.resolve()),
             "num_classes": len(CLASSES), "classes": list(CLASSES), "preprocess": {"size": 224, "resize": "resize"}}
    ray_s = ray_startup(num_cpus)
    out = Path(tempfile.mkdtemp(prefix="e2e-", dir=Path(cache).resolve()))
    try:
        loaded = parse_config(audit_config(data, out / "results", model, batch_size=batch_size, num_cpus=num_cpus,
                                           embedding=embedding), out / "audit.yaml")
        load0 = os.getloadavg()[0]
        sampler = TreeSampler()
        sampler.start()
        cpu0 = sum(os.times()[:2])
        t = time.perf_counter()
        try:
            summary = run_audit(loaded, progress=False)
        finally:
            total = time.perf_counter() - t
            driver_cpu = sum(os.times()[:2]) - cpu0
            sampler.stop()
        load1 = os.getloadavg()[0]
        (record,) = read_runs(loaded.output)
        mr = record.models[MODEL]
        rows = read_results(loaded.output, columns=["image_id", "error"]).num_rows
        parquet_bytes = sum(p.stat().st_size for p in Path(loaded.output).glob("model=*/part-*.parquet"))
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    secs = dict(mr.seconds)
    wall = secs.get("wall", float("nan"))
    return {
        "images": images, "rows": rows, "scored": mr.scored, "errors": mr.errors, "batch": batch_size,
        "num_cpus": num_cpus, "torch_threads": torch.get_num_threads(), "data_s": prep_s,
        "ray_start_s": ray_s, "total_s": total, "wall_s": wall,
        "prepare_s": secs.get("prepare", float("nan")), "score_s": secs.get("score", float("nan")),
        "write_s": secs.get("write", float("nan")), "outside_s": total - wall,
        "ips_wall": mr.scored / wall if wall > 0 else float("nan"), "ips_total": mr.scored / total,
        "run_id": summary.run_id, "load_avg": max(load0, load1, os.getloadavg()[0]),
        "driver_cpu_s": driver_cpu, "ray_cpu_s": sum(sampler.cpu.values()),
        "workers": sorted(sampler.titles),
        "fused": any("prepare_batch" in x and "AuditActor" in x for x in sampler.titles),
        "embedding": embedding, "parquet_bytes": parquet_bytes,
    }


def render_markdown(r: dict[str, Any]) -> str:
    n = max(r["scored"], 1)

    cpu = r["driver_cpu_s"] + r["ray_cpu_s"]

    def ms(s: float) -> str:
        return f"{1000 * s / n:.1f}"

    lines = [
        "| stage | seconds | ms / image | share of the model's wall time |",
        "|---|---|---|---|",
        (f"| prepare: read + decode JPEG + resize + rasterise masks (CPU tasks, summed) | {r['prepare_s']:.1f} | "
         f"{ms(r['prepare_s'])} | {r['prepare_s'] / r['wall_s']:.0%} |"),
        (f"| score: to tensor + forward + Grad-CAM + metrics (actor, summed) | {r['score_s']:.1f} | "
         f"{ms(r['score_s'])} | {r['score_s'] / r['wall_s']:.0%} |"),
        (f"| write: Parquet parts + run record (driver) | {r['write_s']:.2f} | {ms(r['write_s'])} | "
         f"{r['write_s'] / r['wall_s']:.0%} |"),
        (f"| **wall** (model loop: actor start, model load, streaming) | {r['wall_s']:.1f} | {ms(r['wall_s'])} "
         "| 100% |"),
        f"| outside the loop (Ray start/stop, manifest, planning) | {r['outside_s']:.1f} | - | - |",
        f"| Ray start + stop alone (`ray.init(num_cpus={r['num_cpus']})`) | {r['ray_start_s']:.1f} | - | - |",
        (f"| CPU used during the audit: driver {r['driver_cpu_s']:.0f} s + Ray processes {r['ray_cpu_s']:.0f} s | "
         f"{cpu:.0f} | - | {cpu / r['total_s']:.2f} of {r['num_cpus']} cores over the whole run |"),
        "",
        (f"**{r['ips_wall']:.1f} images/s** over the model loop, {r['ips_total']:.1f} images/s including Ray's "
         f"start-up ({r['scored']} images, {r['errors']} errors, {r['rows']} Parquet rows; batch {r['batch']}, "
         f"Ray with {r['num_cpus']} CPUs, peak 1-min load average {r['load_avg']:.1f}). Ray workers seen: "
         + ", ".join(f"`{w}`" for w in r["workers"]) + "."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()
    print(render_markdown(run_e2e_bench(args.images, args.batch, args.num_cpus)))
