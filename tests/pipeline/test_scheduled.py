"""Scheduled audits: a rerun on a grown dataset scores only the new images under a new run id, and
the gate's baseline comparison and the trend view work across the runs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cuebench.synth import SynthConfig, generate
from pipeline.cli import app
from pipeline.config import parse_config
from pipeline.gate import evaluate
from pipeline.run import run_audit
from pipeline.schema import read_results, read_runs

pytestmark = pytest.mark.ray
TINY = {"source": "python:tests.factories:tiny_cnn", "num_classes": 3, "classes": ["disk", "square", "triangle"],
        "preprocess": {"size": 64, "resize": "resize"}}


def test_rerun_on_a_grown_dataset_scores_only_new_images(tmp_path):
    data = tmp_path / "data"
    generate(data, SynthConfig(cue="background", n=60, correlation=0.6, seed=7))
    raw = {"name": "nightly", "output": str(tmp_path / "results"),
           "dataset": {"format": "manifest", "path": str(data / "manifest.csv")},
           "models": [{"name": "tiny", **TINY}], "execution": {"batch_size": 16, "num_cpus": 2}}
    first = run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    assert first.models["tiny"].scored == 60
    generate(data, SynthConfig(cue="background", n=30, correlation=0.6, seed=7, start=60))  # the dataset grows
    second = run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    assert (second.models["tiny"].scored, second.models["tiny"].skipped) == (30, 60)
    assert second.run_id > first.run_id
    third = run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    assert third.models["tiny"].scored == 0  # nothing new: no work
    out = tmp_path / "results"
    t = read_results(out, columns=["image_id", "run_id"])
    by_run = {}
    for r in t.to_pylist():
        by_run.setdefault(r["run_id"], set()).add(r["image_id"])
    assert {k: len(v) for k, v in by_run.items()} == {first.run_id: 60, second.run_id: 30}
    assert read_results(out, columns=["image_id"], as_of=first.run_id).num_rows == 60
    runs = read_runs(out)
    assert [r.run_id for r in runs] == [first.run_id, second.run_id, third.run_id]
    assert all(r.status == "finished" and r.updated_at for r in runs[:2])
    # the gate compares against the previous finished run, paired on the images both saw
    v = evaluate(out, baseline="previous")
    reg = [r for r in v.models[0].checks if r.check == "regression"][0]
    assert reg.status in ("PASS", "SKIP") and "no baseline" not in reg.message
    assert v.baseline == f"run {second.run_id}"
    r = CliRunner().invoke(app, ["gate", str(out), "--baseline", first.run_id, "-q"])
    assert r.exit_code in (0, 1) and f"run {first.run_id}" in r.output


def test_a_rerun_retries_a_file_that_was_truncated_then_fixed(tmp_path):
    """02:00: one JPEG is half uploaded (truncated) and one file is garbage (corrupt); 03:00: the upload
    is complete. The rerun scores the truncated image again, whose new row supersedes the error row;
    the corrupt file is not a transient error and is not retried."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.schema import part_files

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    full = {}
    for i in range(6):
        cls = ("disk", "square", "triangle")[i % 3]
        (data / cls).mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        full[f"{cls}/{i}.jpg"] = buf.getvalue()
        (data / cls / f"{i}.jpg").write_bytes(buf.getvalue())
    late = data / "square" / "1.jpg"
    late.write_bytes(full["square/1.jpg"][: len(full["square/1.jpg"]) // 2])
    (data / "disk" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    raw = {"name": "nightly", "output": str(tmp_path / "results"), "dataset": {"format": "folder", "root": str(data)},
           "models": [{"name": "tiny", **TINY}], "execution": {"batch_size": 8, "num_cpus": 2}}
    first = run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    assert first.errors == {"tiny": {"truncated": 1, "corrupt": 1}}
    out = tmp_path / "results"
    assert evaluate(out).coverage["tiny"].state == "complete"  # an error row is a row: the dataset is covered
    off = {**raw, "execution": {**raw["execution"], "retry_errors": []}}
    assert run_audit(parse_config(off, tmp_path / "audit.yaml"), progress=False).models["tiny"].to_score == 0
    late.write_bytes(full["square/1.jpg"])  # the upload completed
    second = run_audit(parse_config(raw, tmp_path / "audit.yaml"), progress=False)
    mr = second.models["tiny"]
    assert (mr.to_score, mr.retried, mr.scored, mr.skipped) == (1, 1, 1, 5)
    assert second.errors == {"tiny": {"corrupt": 1}}
    rows = {r["image_id"]: r for r in read_results(out, columns=["image_id", "error_kind", "pred"]).to_pylist()}
    assert rows["square/1.jpg"]["error_kind"] is None and rows["square/1.jpg"]["pred"] is not None
    assert rows["disk/3.jpg"]["error_kind"] == "corrupt"
    import pyarrow.parquet as pq

    stored = [r for f in part_files(out) for r in pq.read_table(f, columns=["image_id"]).column(0).to_pylist()]
    assert stored.count("square/1.jpg") == 2 and len(stored) == 7  # the error row stays on disk, superseded
