"""Images/s of ``cueaudit run`` with the dataset on local disk vs on an S3-compatible server.

The same synthetic JPEGs (:func:`bench.e2e.dataset`, 64x64 so decoding and I/O, not the model,
dominate) are audited from four places: a local folder (manifest), the same files as objects in a
bucket (manifest in the bucket, results written to the bucket too), WebDataset shards in the bucket
and a Hugging Face-layout Parquet file in the bucket. The S3 server is moto (``python -m
moto.server``) in its own process on 127.0.0.1: a pure-Python server on the same 2 cores, so the
remote rows measure cueaudit's object-store code path against a slow local server, not the
throughput of a real object store. The model is the tests' tiny CNN; Ray is started once and
warmed up by a 64-image run (neither is in the rows).

    python -m bench.storage --images 1024      # prints markdown
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLASSES = ("disk", "square", "triangle")
SIZE = 64
MODEL = {"name": "tiny", "source": "python:tests.factories:tiny_cnn", "num_classes": 3, "classes": list(CLASSES),
         "preprocess": {"size": SIZE, "resize": "resize"}}


def _shards(data: Path, out: Path, per_shard: int = 256) -> Path:
    """WebDataset shards (``<key>.jpg`` + ``<key>.json``) of the manifest's images, written with tarfile."""
    import csv
    import io
    import tarfile

    out.mkdir(parents=True, exist_ok=True)
    with open(data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    for s in range(0, len(rows), per_shard):
        with tarfile.open(out / f"part-{s // per_shard:04d}.tar", "w") as tf:
            for r in rows[s:s + per_shard]:
                key = r["image"].rsplit(".", 1)[0]
                meta = json.dumps({"label": r["label"], "objects": json.loads(r["objects"] or "[]"),
                                   "attributes": json.loads(r["attributes"] or "{}")}).encode()
                for name, blob in ((f"{key}.jpg", (data / r["image"]).read_bytes()), (f"{key}.json", meta)):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(blob)
                    tf.addfile(ti, io.BytesIO(blob))
    return out


def _parquet(data: Path, out: Path) -> Path:
    """The manifest as a Hugging Face-layout Parquet file: ``image`` {bytes, path}, ``label``, ``objects``."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    objs = [[{"category": o["category"], "segmentation": o["polygons"]} for o in json.loads(r["objects"] or "[]")]
            for r in rows]
    t = pa.table({"image": [{"bytes": (data / r["image"]).read_bytes(), "path": r["image"]} for r in rows],
                  "label": [r["label"] for r in rows], "image_id": [r["image"] for r in rows], "objects": objs})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out / "train-00000-of-00001.parquet", row_group_size=128)
    return out


def run_storage_bench(images: int = 1024, batch_size: int = 32, num_cpus: int | None = None,
                      cache: Path = Path(".cueaudit/bench")) -> dict[str, Any]:
    import ray

    from bench.e2e import dataset
    from common.storage import as_path
    from pipeline.config import parse_config
    from pipeline.readers import read_manifest
    from pipeline.run import run_audit
    from tests.objectstore import s3_server

    num_cpus = num_cpus or os.cpu_count() or 1
    data = dataset(images, size=SIZE, cache=cache).resolve()
    work = Path(tempfile.mkdtemp(prefix="storage-", dir=Path(cache).resolve()))
    rows: list[dict[str, Any]] = []
    try:
        shards, hf = _shards(data, work / "wds"), _parquet(data, work / "hf")
        with s3_server(own_process=True) as srv:
            bucket = srv.make_bucket("bench-storage")
            t = time.perf_counter()
            for local, name in ((data / "images", "images"), (data / "manifest.csv", "manifest.csv"),
                                (shards, "wds"), (hf, "hf")):
                srv.upload(local, f"{bucket}/{name}")
            upload_s = time.perf_counter() - t
            nbytes = sum(f.stat().st_size for f in (data / "images").rglob("*") if f.is_file())
            env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR,
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env}})
            try:
                n_shards = len(list(shards.glob("*.tar")))
                warm = {"name": "bench-storage", "output": str(work / "r-warm"), "models": [MODEL],
                        "dataset": {"format": "manifest", "path": str(data / "manifest.csv"), "limit": 64},
                        "execution": {"batch_size": batch_size, "device": "cpu"}}
                run_audit(parse_config(warm, work / "audit.yaml"), progress=False)  # worker processes, imports
                for where, ds, out in [
                    ("local files (manifest)", {"format": "manifest", "path": str(data / "manifest.csv")},
                     str(work / "r-local")),
                    ("S3 objects (manifest), results to S3", {"format": "manifest", "path": f"{bucket}/manifest.csv"},
                     f"{bucket}/results"),
                    (f"WebDataset shards on S3 ({n_shards} tar)",
                     {"format": "webdataset", "shards": f"{bucket}/wds"}, str(work / "r-wds")),
                    ("Hugging Face Parquet on S3 (row groups of 128)",
                     {"format": "huggingface", "path": f"{bucket}/hf", "id_column": "image_id"}, str(work / "r-hf")),
                ]:
                    raw = {"name": "bench-storage", "output": out, "dataset": ds, "models": [MODEL],
                           "execution": {"batch_size": batch_size, "device": "cpu"}}
                    loaded = parse_config(raw, work / "audit.yaml")
                    t = time.perf_counter()
                    n = read_manifest(loaded.config.dataset, loaded.base).num_rows
                    manifest_s = time.perf_counter() - t
                    t = time.perf_counter()
                    summary = run_audit(loaded, progress=False)
                    total = time.perf_counter() - t
                    mr = summary.models["tiny"]
                    secs = mr.seconds
                    rows.append({"where": where, "images": n, "scored": mr.scored, "errors": mr.errors,
                                 "manifest_s": manifest_s, "total_s": total, "wall_s": secs.get("wall", float("nan")),
                                 "prepare_s": secs.get("prepare", float("nan")), "write_s": secs.get("write", 0.0),
                                 "ips": mr.scored / total if total > 0 else float("nan"),
                                 "output": "S3" if str(out).startswith("s3://") else "local"})
                    log.info("%s: %.1f img/s", where, rows[-1]["ips"])
                assert as_path(f"{bucket}/results").is_dir()
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"images": images, "batch": batch_size, "num_cpus": num_cpus, "bytes": nbytes, "upload_s": upload_s,
            "rows": rows}


def render_markdown(r: dict[str, Any]) -> str:
    lines = [("| dataset | results | images | errors | manifest read (s) | prepare (worker s) | write (s) | "
             "run total (s) | images/s | vs local |"), "|---|---|---|---|---|---|---|---|---|---|"]
    base = r["rows"][0]["ips"] if r["rows"] else float("nan")
    for x in r["rows"]:
        lines.append(f"| {x['where']} | {x['output']} | {x['scored']} | {x['errors']} | {x['manifest_s']:.2f} | "
                     f"{x['prepare_s']:.1f} | {x['write_s']:.2f} | {x['total_s']:.1f} | {x['ips']:.1f} | "
                     f"{x['ips'] / base:.2f}x |")
    lines += ["", (f"{r['images']:,} JPEGs of {SIZE}x{SIZE} px ({r['bytes'] / 1e6:.1f} MB), tiny CNN, batch "
                   f"{r['batch']}, Ray with {r['num_cpus']} CPUs started once and warmed up; uploading everything to the "
                   f"server took {r['upload_s']:.1f} s. \"run total\" is `run_audit` (manifest, planning, "
                   "the model loop, the writes); \"prepare\" sums the CPU tasks that fetch and decode.")]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()
    print(render_markdown(run_storage_bench(args.images, args.batch, args.num_cpus)))
