"""The synthetic benchmark audited from where datasets live: an S3 bucket (a real S3-compatible
server on 127.0.0.1), a Hugging Face dataset and WebDataset shards (both in the bucket) give the
same numbers as the local folder; results written to the bucket pass the gate and the dashboard."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from common.storage import Location, as_path
from cuebench.synth import SynthConfig, generate
from pipeline.config import parse_config
from pipeline.gate import evaluate
from pipeline.run import run_audit
from pipeline.schema import read_results, read_runs

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CLASSES = ["disk", "square", "triangle"]
TINY = {"source": "python:tests.factories:tiny_cnn", "num_classes": 3, "classes": CLASSES,
        "preprocess": {"size": 64, "resize": "resize"}}
NUMBERS = ["label", "pred", "pred_index", "pred_score", "target", "target_score", "correct", "cam", "cam_h", "cam_w",
           "image_w", "image_h", "view_box", "object_share", "object_area", "object_cells", "pointing_hit",
           "background_share", "other_shares", "other_areas", "bg_color", "metric_note", "attributes",
           "error_kind", "feature_layer"]


@pytest.fixture(scope="module")
def world(s3, tmp_path_factory):
    """The synthetic set on disk and in a bucket (folder, Hugging Face save_to_disk, WebDataset shards),
    and a local Ray whose workers get the S3 endpoint and (dummy) credentials from the environment."""
    import ray

    work = tmp_path_factory.mktemp("storage-e2e")
    synth = generate(work / "synth", SynthConfig(cue="cooccur", n=48, correlation=0.6, seed=11))
    bucket = s3.make_bucket(f"e2e-{uuid.uuid4().hex[:8]}")
    s3.upload(synth, f"{bucket}/synth")
    rows = _manifest_rows(synth)
    s3.upload(_huggingface(rows, synth, work / "hf"), f"{bucket}/hf")
    s3.upload(_webdataset(rows, synth, work / "wds"), f"{bucket}/wds")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",  # never a stray cluster
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env}})
    yield {"synth": synth, "bucket": bucket, "work": work}
    ray.shutdown()


def _manifest_rows(synth: Path) -> list[dict]:
    import csv

    with open(synth / "manifest.csv") as f:
        return list(csv.DictReader(f))


def _huggingface(rows: list[dict], synth: Path, out: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    cats = [c["name"] for c in json.loads((synth / "coco.json").read_text())["categories"]]
    attrs = [json.loads(r["attributes"]) for r in rows]
    keys = sorted({k for a in attrs for k in a})  # one column per attribute (None where absent)
    f64 = datasets.Value("float64")  # polygons as the manifest has them (float32 would move edges)
    feats = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES), "image_id": datasets.Value("string"),
        "objects": {"category": datasets.List(datasets.ClassLabel(names=cats)),
                    "segmentation": datasets.List(datasets.List(datasets.List(f64)))},
        **{k: datasets.Value("string") for k in keys}})
    objs = [json.loads(r["objects"]) for r in rows]
    ds = datasets.Dataset.from_dict({
        "image": [{"bytes": (synth / r["image"]).read_bytes(), "path": r["image"]} for r in rows],
        "label": [CLASSES.index(r["label"]) for r in rows], "image_id": [r["image"] for r in rows],
        "objects": [{"category": [cats.index(o["category"]) for o in ob],
                     "segmentation": [o["polygons"] for o in ob]} for ob in objs],
        **{k: [a.get(k) for a in attrs] for k in keys}}, features=feats)
    ds.save_to_disk(str(out), max_shard_size="20KB")  # several .arrow shards
    return out


def _webdataset(rows: list[dict], synth: Path, out: Path) -> Path:
    wds = pytest.importorskip("webdataset")
    out.mkdir()
    for shard in range(3):
        with wds.TarWriter(str(out / f"part-{shard}.tar")) as w:
            for r in rows[shard::3]:
                w.write({"__key__": r["image"].removesuffix(".png"), "png": (synth / r["image"]).read_bytes(),
                         "json": {"label": r["label"], "objects": json.loads(r["objects"]),
                                  "attributes": json.loads(r["attributes"])}})
    return out


def _audit(world, dataset: dict, output: str, **extra) -> str:
    raw = {"name": "storage", "output": output, "dataset": dataset, "models": [{"name": "tiny", **TINY}],
           "execution": {"batch_size": 8}, "counterfactual": {"enabled": True}, **extra}
    loaded = parse_config(raw, world["work"] / "audit.yaml")
    summary = run_audit(loaded, progress=False)
    assert summary.models["tiny"].scored == 48 and not summary.errors
    return str(loaded.output)


def _numbers(root: str, ids=lambda s: s) -> dict[str, dict]:
    t = read_results(root, columns=["image_id", *NUMBERS])
    out = {}
    for r in t.to_pylist():
        r["other_shares"], r["other_areas"], r["attributes"] = (sorted(r[k] or []) for k in
                                                                  ("other_shares", "other_areas", "attributes"))
        out[ids(r.pop("image_id"))] = r
    return out


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        for col in NUMBERS:
            x, y = a[k][col], b[k][col]
            if isinstance(x, float):
                assert x == y or (np.isnan(x) and np.isnan(y)), (k, col, x, y)
            else:
                assert x == y, (k, col, x, y)


def test_bucket_huggingface_and_webdataset_audits_equal_the_folder(world):
    synth, bucket, work = world["synth"], world["bucket"], world["work"]
    local = _audit(world, {"format": "manifest", "path": str(synth / "manifest.csv")}, str(work / "local"))
    base = _numbers(local)
    assert len(base) == 48 and sum(r["object_share"] is not None for r in base.values()) > 40

    in_bucket = _audit(world, {"format": "manifest", "path": f"{bucket}/synth/manifest.csv"}, f"{bucket}/results")
    _same(base, _numbers(in_bucket))
    keys = sorted({k for r in base.values() for k, _ in r["attributes"]})
    hf = _audit(world, {"format": "huggingface", "path": f"{bucket}/hf", "id_column": "image_id",
                        "attributes": keys}, str(work / "hf-results"))
    _same(base, _numbers(hf))
    shards = _audit(world, {"format": "webdataset", "shards": f"{bucket}/wds/part-{{0..2}}.tar"},
                    str(work / "wds-results"))
    _same(base, _numbers(shards, ids=lambda s: s + ".png"))

    paths = read_results(hf, columns=["path"]).column("path").to_pylist()
    assert all(p.startswith("arrow://image/") and f"::{bucket}/hf/data-" in p for p in paths)
    paths = read_results(shards, columns=["path"]).column("path").to_pylist()
    assert all(p.startswith("tar://images/") and f"::{bucket}/wds/part-" in p for p in paths)
    # object-store writes: only finished parts, run records and the dataset's ids, no temp objects, and no
    # lock left behind; the record is last
    root = as_path(in_bucket)
    assert isinstance(root, Location)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert all(n.startswith(("model=tiny/part-", "_runs/", "_datasets/")) and not n.split("/")[-1].startswith(".")
               for n in names)
    (run,) = read_runs(in_bucket)
    assert [n for n in names if n.endswith(".parquet")] and f"_runs/{run.run_id}.json" in names
    assert run.status == "finished" and run.dataset_roots == [f"{bucket}/synth"]
    assert f"_datasets/{run.dataset_fingerprint}.parquet" in names and run.models["tiny"].coverage.missing == 0
    # a rerun resumes from the bucket: nothing left to score
    raw = {"name": "storage", "output": in_bucket, "models": [{"name": "tiny", **TINY}],
           "dataset": {"format": "manifest", "path": f"{bucket}/synth/manifest.csv"},
           "execution": {"batch_size": 8}, "counterfactual": {"enabled": True}}
    again = run_audit(parse_config(raw, work / "audit.yaml"), progress=False)
    assert (again.models["tiny"].scored, again.models["tiny"].skipped) == (0, 48)

    # the gate judges the bucket like the folder
    va, vb = evaluate(local), evaluate(in_bucket)
    assert vb.results == in_bucket
    assert [(m.model, m.status, [(c.check, c.status) for c in m.checks]) for m in va.models] == \
        [(m.model, m.status, [(c.check, c.status) for c in m.checks]) for m in vb.models]
    world["results"] = in_bucket


def test_the_dashboard_reads_bucket_results_and_serves_only_audited_images(world, monkeypatch):
    from dashboard import ENV_RESULTS, data
    from dashboard.images import figure

    root = world.get("results") or pytest.skip("needs the audit of the previous test")
    ver = data.version(root)
    assert ver != "missing" and ver.endswith("-2")  # two run records
    runs = data.read_runs(root)
    roots = data.run_roots(runs)
    frame = data.load_frame(root)
    from dashboard.explore import Filters, model_view, select

    worst = select(model_view(frame, "tiny"), Filters())  # the explorer's default: lowest object share first
    assert len(worst) == 48
    keys = [data.row_key(r) for _, r in frame.iloc[worst[:3]].iterrows()]
    details = data.fetch_details(root, "tiny", keys)
    assert len(details) == 3
    for row in details.values():
        fig = figure(row, roots, 96)
        assert fig.refused is None, fig.refused
        local = dict(row, path=str(world["synth"] / row["image_id"]))
        assert np.array_equal(fig.original, figure(local, [str(world["synth"])], 96).original)
    crafted = dict(next(iter(details.values())), path=f"{world['bucket']}/hf/state.json")
    assert "outside the audited dataset roots" in figure(crafted, roots, 96).refused

    from typer.testing import CliRunner

    from pipeline.cli import app as cli

    res = CliRunner().invoke(cli, ["gate", root, "--quiet"])
    assert res.exit_code in (0, 1) and "gate " in res.output, res.output  # judged, not a usage error (2)

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(ENV_RESULTS, root)
    app = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
    for page in ("Overview", "Image explorer"):
        at = AppTest.from_file(app, default_timeout=120)
        at.session_state["page"] = page
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert root in " ".join(str(c.value) for c in at.sidebar.caption)
