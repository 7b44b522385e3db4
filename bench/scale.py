"""Peak memory of ``cueaudit run`` at 2,000 and 20,000 images: the driver and the Ray workers.

Each audit runs in a child process (``python -m bench.scale --child``) so the driver's memory is the
audit's alone; the parent samples the child's whole process tree with psutil every ``interval``
seconds (the embedded Ray's GCS and raylet are the driver's children, the workers the raylet's).
Processes are grouped as *driver* (the child itself), *workers* (titled ``ray::...``: the prepare +
model actor, idle workers) and *Ray system* (gcs_server, raylet, agents). Memory is RSS, which counts
the shared-memory object-store pages a process has touched.

A streaming plan keeps memory flat in the number of images: the driver holds at most
``execution.flush_rows`` result rows before committing a part, and the workers a few batches. The
data are 64x64 synthetic JPEGs (cached under ``.cueaudit/bench/``), the model ``tiny_resnet``, so
20,000 images finish in minutes on two cores; the smaller run is the same manifest with ``limit``.

    python -m bench.scale --sizes 2000 20000     # prints markdown
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e import CACHE, CLASSES, audit_config, dataset

log = logging.getLogger(__name__)

SIZE = 64
MODEL = {"name": "tiny", "source": "python:workers.archs:tiny_resnet", "num_classes": len(CLASSES),
         "classes": list(CLASSES), "preprocess": {"size": SIZE, "resize": "resize"}}
FLAT_RATIO = 1.5  # driver peak at 10x the images must stay within this factor to count as flat


def _groups(root: Any) -> dict[str, int]:
    """RSS per group over ``root``'s process tree, and the largest single worker."""
    import psutil

    out = {"driver": 0, "workers": 0, "worker_max": 0, "system": 0, "processes": 0}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            rss = p.memory_info().rss
            title = " ".join(p.cmdline()[:1]) or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out["processes"] += 1
        if p.pid == root.pid:
            out["driver"] += rss
        elif title.startswith("ray::"):
            out["workers"] += rss
            out["worker_max"] = max(out["worker_max"], rss)
        else:
            out["system"] += rss
    return out


def measure(images: int, data: Path, interval: float = 0.2, num_cpus: int | None = None,
            batch_size: int = 64, cache: Path = CACHE) -> dict[str, Any]:
    """Run one audit of the first ``images`` images of ``data`` in a child process; sample its memory."""
    import psutil

    num_cpus = num_cpus or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=Path(cache).resolve()))
    cfg = audit_config(data, work / "results", MODEL, batch_size=batch_size, num_cpus=num_cpus, limit=images,
                       name="bench-scale")
    (work / "audit.json").write_text(json.dumps(cfg))
    peak = {"driver": 0, "workers": 0, "worker_max": 0, "system": 0, "total": 0, "processes": 0}
    samples = 0
    t0 = time.perf_counter()
    try:
        # Files, not pipes: Ray's worker logs could fill a pipe nobody reads until the end.
        with open(work / "stdout", "w") as out, open(work / "stderr", "w") as err:
            child = subprocess.Popen([sys.executable, "-m", "bench.scale", "--child", str(work / "audit.json")],
                                     stdout=out, stderr=err, text=True)
            root = psutil.Process(child.pid)
            while child.poll() is None:
                g = _groups(root)
                g["total"] = g["driver"] + g["workers"] + g["system"]
                peak = {k: max(v, g[k]) for k, v in peak.items()}
                samples += 1
                time.sleep(interval)
        if child.returncode != 0:
            tail = (work / "stderr").read_text()[-3000:]
            raise RuntimeError(f"bench.scale child for {images} images failed (exit {child.returncode}):\n{tail}")
        lines = [x for x in (work / "stdout").read_text().splitlines() if x.startswith("{")]
        result = json.loads(lines[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = {k: v / 2**20 for k, v in peak.items() if k != "processes"}
    return {"images": images, "seconds": time.perf_counter() - t0, "samples": samples,
            "processes": peak["processes"], **{f"{k}_mib": v for k, v in mib.items()}, **result}


def run_scale_bench(sizes: tuple[int, ...] = (2000, 20000), interval: float = 0.2, num_cpus: int | None = None,
                    cache: Path = CACHE) -> dict[str, Any]:
    t = time.perf_counter()
    data = dataset(max(sizes), size=SIZE, cache=cache)
    data_s = time.perf_counter() - t
    load = [os.getloadavg()[0]]
    runs = []
    for n in sizes:
        runs.append(measure(n, data, interval, num_cpus, cache=cache))
        load.append(os.getloadavg()[0])
    return {"runs": runs, "data_s": data_s, "interval": interval, "load_avg": max(load),
            "num_cpus": num_cpus or os.cpu_count()}


def render_markdown(res: dict[str, Any]) -> str:
    runs = res["runs"]
    head = ("| images | driver peak MiB | workers peak MiB (sum) | largest worker MiB | Ray system MiB | "
            "tree peak MiB | run s | images/s (model loop) | samples |")
    lines = [head, "|" + "---|" * 9]
    for r in runs:
        lines.append(f"| {r['images']:,} | {r['driver_mib']:.0f} | {r['workers_mib']:.0f} | "
                     f"{r['worker_max_mib']:.0f} | {r['system_mib']:.0f} | {r['total_mib']:.0f} | "
                     f"{r['seconds']:.0f} | {r['ips_wall']:.0f} | {r['samples']} |")
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        x = {k: b[f"{k}_mib"] / a[f"{k}_mib"] for k in ("driver", "workers", "worker_max", "system", "total")}
        lines.append(f"| **ratio {b['images'] // max(a['images'], 1)}x images** | **{x['driver']:.2f}x** | "
                     f"**{x['workers']:.2f}x** | {x['worker_max']:.2f}x | {x['system']:.2f}x | "
                     f"**{x['total']:.2f}x** | {b['seconds'] / a['seconds']:.1f}x | - | - |")
    lines.append("")
    lines.append(f"RSS sampled every {res['interval']} s over the child's process tree (peaks per group, taken "
                 f"separately); `tiny_resnet` at {SIZE}x{SIZE}, batch 64, Ray with {res['num_cpus']} CPUs, "
                 f"flush every 4096 rows; peak 1-min load average {res['load_avg']:.1f}.")
    return "\n".join(lines)


def _child(config: Path) -> None:
    """Run the audit of ``config`` (JSON) and print its timings as one JSON line."""
    from pipeline.config import parse_config
    from pipeline.run import run_audit
    from pipeline.schema import read_runs

    logging.basicConfig(level=logging.WARNING)
    loaded = parse_config(json.loads(config.read_text()), config)
    t = time.perf_counter()
    run_audit(loaded, progress=False)
    total = time.perf_counter() - t
    (record,) = read_runs(loaded.output)
    mr = record.models[MODEL["name"]]
    wall = mr.seconds.get("wall", float("nan"))
    print(json.dumps({"scored": mr.scored, "errors": mr.errors, "audit_s": total, "wall_s": wall,
                      "ips_wall": mr.scored / wall if wall > 0 else float("nan"), "stage_s": mr.seconds}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
    else:
        logging.basicConfig(level=logging.INFO)
        print(render_markdown(run_scale_bench(tuple(args.sizes), args.interval)))
