"""End-to-end runs on a local Ray (CPU): every reader, broken inputs, several models, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cuebench.synth import SynthConfig, generate
from pipeline.config import parse_config
from pipeline.run import run_audit
from pipeline.schema import RESULT_SCHEMA, part_files, read_results, read_runs
from tests.brokenfiles import EXPECTED, write_broken_folder

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
TINY = {"source": "python:tests.factories:tiny_cnn", "num_classes": 3, "classes": ["disk", "square", "triangle"],
        "preprocess": {"size": 64, "resize": "resize"}}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), SynthConfig(cue="cooccur", n=30, correlation=0.6, seed=3))


def _run(tmp_path: Path, dataset: dict, models: list[dict] | None = None, **extra) -> tuple:
    raw = {"name": "t", "output": str(tmp_path / "results"), "dataset": dataset,
           "models": models or [{"name": "tiny", **TINY}], "execution": {"batch_size": 8}, **extra}
    loaded = parse_config(raw, tmp_path / "audit.yaml")
    return run_audit(loaded, progress=False), loaded


@pytest.mark.parametrize("fmt", ["folder", "coco", "voc", "manifest"])
def test_every_reader_end_to_end(ray_local, synth, tmp_path, fmt):
    if fmt == "folder":
        ds = {"format": "folder", "root": str(synth / "images"), "masks": str(synth / "masks")}
    elif fmt == "coco":
        ds = {"format": "coco", "annotations": str(synth / "coco.json"), "images": str(synth),
              "label_categories": ["disk", "square", "triangle"]}
    elif fmt == "manifest":
        ds = {"format": "manifest", "path": str(synth / "manifest.csv")}
    else:
        ds = {"format": "voc", "annotations": str(_coco_to_voc(synth, tmp_path)), "images": str(synth),
              "label_categories": ["disk", "square", "triangle"]}
    summary, loaded = _run(tmp_path, ds)
    t = read_results(loaded.output)
    assert t.num_rows == 30 and t.column("error").null_count == 30
    assert set(t.column("image_id").to_pylist()).__len__() == 30
    for f in part_files(loaded.output):
        assert pq.read_schema(f).remove_metadata() == RESULT_SCHEMA.remove_metadata()
    rows = t.to_pylist()
    assert all(0 <= r["object_share"] <= 1 and r["cam_h"] * r["cam_w"] == len(r["cam"]) for r in rows)
    if fmt in ("coco", "manifest", "voc"):  # distractors are annotated: co-occurrence shares
        assert any(r["other_shares"] for r in rows)
    (run,) = read_runs(loaded.output)
    assert run.status == "finished" and run.models["tiny"].scored == 30 and run.models["tiny"].feature_layer == "features"
    # the folders of the mask files read (the folder layout's masks/<class>/; the others have none)
    assert run.mask_roots == ([str(d) for d in sorted((synth / "masks").iterdir())] if fmt == "folder" else [])
    # the real pipeline writes dataset_root (the dashboard's path guard relies on it), one per reader root
    assert set(t.column("dataset_root").to_pylist()) == set(run.dataset_roots) and None not in run.dataset_roots
    mr = run.models["tiny"]
    assert (mr.device, mr.precision, mr.decode) == ("cpu", "fp32", "cpu")  # resolved, as fingerprinted
    assert (mr.coverage.images, mr.coverage.ok, mr.coverage.missing) == (30, 30, 0) and run.dataset_fingerprint


def test_both_maps_reach_the_parquet_where_pred_and_label_differ(ray_local, synth, tmp_path):
    ds = {"format": "folder", "root": str(synth / "images"), "masks": str(synth / "masks")}
    _, loaded = _run(tmp_path, ds, both_maps_when_wrong=True)
    rows = read_results(loaded.output, columns=["pred", "label", "cam", "cam_other"]).to_pylist()
    wrong = [r for r in rows if r["pred"] != r["label"]]
    assert wrong, "the untrained tiny model gets some images wrong"
    assert all(r["cam_other"] is not None and len(r["cam_other"]) == len(r["cam"]) for r in wrong)
    assert all(r["cam_other"] is None for r in rows if r["pred"] == r["label"])


def _coco_to_voc(synth: Path, tmp_path: Path) -> Path:
    import json

    coco = json.loads((synth / "coco.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    out = tmp_path / "Annotations"
    out.mkdir()
    by = {}
    for a in coco["annotations"]:
        by.setdefault(a["image_id"], []).append(a)
    for img in coco["images"]:
        objs = "".join(
            f"<object><name>{cats[a['category_id']]}</name><bndbox><xmin>{a['bbox'][0] + 1:.0f}</xmin>"
            f"<ymin>{a['bbox'][1] + 1:.0f}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]:.0f}</xmax>"
            f"<ymax>{a['bbox'][1] + a['bbox'][3]:.0f}</ymax></bndbox></object>" for a in by.get(img["id"], []))
        (out / f"{img['id']}.xml").write_text(f"<annotation><filename>{img['file_name']}</filename>{objs}</annotation>")
    return out


def test_broken_inputs_become_error_rows_and_the_run_goes_on(ray_local, tmp_path):
    images, masks = write_broken_folder(tmp_path / "data")
    summary, loaded = _run(tmp_path, {"format": "folder", "root": str(images), "masks": str(masks)},
                           execution={"batch_size": 4, "max_pixels": 4_000_000})
    t = read_results(loaded.output, columns=["image_id", "error", "error_kind", "object_share", "metric_note",
                                              "pred", "image_w", "image_h"])
    rows = {r["image_id"]: r for r in t.to_pylist()}
    assert set(rows) == set(EXPECTED)
    for name, kind in EXPECTED.items():
        r = rows[name]
        assert r["error_kind"] == kind, (name, r["error"])
        if kind is None:
            assert r["pred"] is not None
        else:
            assert r["pred"] is None and Path(name).name in r["error"]
    assert rows["disk/empty_mask.png"]["metric_note"] == "empty_object_mask"
    (run,) = read_runs(loaded.output)
    assert run.models["tiny"].errors_by_kind == summary.errors["tiny"] == run.models["tiny"].coverage.errors
    assert (rows["disk/exif_rotated.jpg"]["image_w"], rows["disk/exif_rotated.jpg"]["image_h"]) == (48, 64)
    assert summary.errors["tiny"]["mask_missing"] == 1 and sum(summary.errors["tiny"].values()) == 8


def test_several_models_resume_and_no_rework(ray_local, synth, tmp_path):
    ds = {"format": "coco", "annotations": str(synth / "coco.json"), "images": str(synth),
          "label_categories": ["disk", "square", "triangle"]}
    models = [{"name": "a", **TINY}, {"name": "b", **TINY, "layer": "features.1"}]
    s1, loaded = _run(tmp_path, ds, models, counterfactual={"enabled": True})
    assert {m: r.scored for m, r in s1.models.items()} == {"a": 30, "b": 30}
    t = read_results(loaded.output, columns=["model", "image_id", "feature_layer", "cf_rand_pred", "cf_same_pred"])
    assert t.num_rows == 60
    assert sorted(set(t.column("feature_layer").to_pylist())) == ["features", "features.1"]
    assert t.column("cf_rand_pred").null_count < 60  # counterfactuals computed where masks exist
    assert sorted(p.parent.name for p in part_files(loaded.output))[0] == "model=a"
    s2, _ = _run(tmp_path, ds, models, counterfactual={"enabled": True})
    assert {m: (r.scored, r.skipped) for m, r in s2.models.items()} == {"a": (0, 30), "b": (0, 30)}
    # a changed audit option is a new fingerprint: the model is scored again
    s3, _ = _run(tmp_path, ds, [{"name": "a", **TINY, "layer": "features.1"}], counterfactual={"enabled": True})
    assert s3.models["a"].scored == 30


def test_an_incremental_run_draws_donors_from_earlier_images(ray_local, tmp_path):
    data = tmp_path / "data"
    cfg = SynthConfig(cue="cooccur", n=18, correlation=0.6, seed=4)
    generate(data, cfg)
    ds = {"format": "manifest", "path": str(data / "manifest.csv")}
    cf = {"enabled": True}
    _, loaded = _run(tmp_path, ds, counterfactual=cf)
    first = set(read_results(loaded.output, columns=["image_id"]).column("image_id").to_pylist())
    generate(data, SynthConfig(cue="cooccur", n=12, correlation=0.6, seed=4, start=18))  # the dataset grows
    s2, _ = _run(tmp_path, ds, counterfactual=cf)
    assert (s2.models["tiny"].scored, s2.models["tiny"].skipped) == (12, 18)
    t = read_results(loaded.output, columns=["image_id", "cf_rand_donor", "cf_same_donor", "cf_ctx_pred",
                                             "cf_ctrl_pred"]).to_pylist()
    new = [r for r in t if r["image_id"] not in first]
    donors = [r[k] for r in new for k in ("cf_rand_donor", "cf_same_donor") if r[k]]
    assert len(new) == 12 and len(donors) >= 20
    # 18 of the 30 images are earlier ones, so each draw from the whole dataset is an earlier image with
    # probability ~0.6; a run that drew only from the 12 new images would have none.
    assert sum(d in first for d in donors) >= 5
    assert any(r["cf_ctx_pred"] for r in new) and any(r["cf_ctrl_pred"] for r in new)  # distractors removed


def test_models_sharing_a_preprocessing_read_each_image_once(ray_local, synth, tmp_path):
    ds = {"format": "coco", "annotations": str(synth / "coco.json"), "images": str(synth),
          "label_categories": ["disk", "square", "triangle"]}
    cf = {"enabled": True}
    _, one = _run(tmp_path / "one", ds, [{"name": "a", **TINY}], counterfactual=cf)
    (g,) = read_runs(one.output)[0].groups
    assert (g.models, g.images) == (["a"], 30) and g.decodes > 30  # donors are decoded too
    both, two = _run(tmp_path / "two", ds, [{"name": "a", **TINY}, {"name": "b", **TINY, "layer": "features.1"}],
                     counterfactual=cf)
    (g2,) = read_runs(two.output)[0].groups
    assert (g2.models, g2.images, g2.decodes) == (["a", "b"], 30, g.decodes)  # two models, one decode each
    assert {m: r.scored for m, r in both.models.items()} == {"a": 30, "b": 30}
    cams = lambda out, m: dict(zip(*[read_results(out, columns=["image_id", "cam"], models=[m]).column(c).to_pylist()
                                     for c in ("image_id", "cam")], strict=True))
    assert cams(two.output, "a") == cams(one.output, "a")  # the same rows as a model scored alone
    # a third model with another preprocessing is a group of its own; a and b have nothing left to do
    models = [{"name": "a", **TINY}, {"name": "b", **TINY, "layer": "features.1"},
              {"name": "c", **TINY, "preprocess": {"size": 48, "resize": "resize"}}]
    third, _ = _run(tmp_path / "two", ds, models, counterfactual=cf)
    run = read_runs(two.output)[-1]
    assert [(x.models, x.images) for x in run.groups] == [(["c"], 30)]
    assert {m: (r.scored, r.skipped) for m, r in third.models.items()} == {"a": (0, 30), "b": (0, 30), "c": (30, 0)}


def _poisoned(tmp_path: Path) -> Path:
    """A folder of 10 noise images and 2 white ones (what tests.factories.raises_on_white raises on)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        cls = ("disk", "square", "triangle")[i % 3]
        (tmp_path / "poison" / cls).mkdir(parents=True, exist_ok=True)
        px = np.full((40, 40, 3), 255, np.uint8) if i in (4, 9) else rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(px).save(tmp_path / "poison" / cls / f"{i:02d}.png")
    return tmp_path / "poison"


def test_exceptions_on_single_images_are_error_rows_and_a_broken_model_stops_the_run(ray_local, tmp_path):
    from pipeline.run import RunError

    root = _poisoned(tmp_path)
    ds = {"format": "folder", "root": str(root)}
    model = {**TINY, "fine_layer": "none", "layer": "net.features"}
    summary, loaded = _run(tmp_path / "a", ds, [{"name": "poisoned", **model,
                                                 "source": "python:tests.factories:raises_on_white"}],
                           execution={"batch_size": 4})
    t = read_results(loaded.output, columns=["image_id", "error", "error_kind", "pred"]).to_pylist()
    bad = {r["image_id"]: r for r in t if r["error_kind"]}
    assert sorted(bad) == ["disk/09.png", "square/04.png"]
    assert all(r["error_kind"] == "internal" and "ValueError: white input" in r["error"]
               and r["image_id"].split("/")[1] in r["error"] for r in bad.values())
    assert sum(r["pred"] is not None for r in t) == 10 and summary.errors == {"poisoned": {"internal": 2}}
    with pytest.raises(RunError, match=r"RuntimeError: this model is broken") as e:
        _run(tmp_path / "b", ds, [{"name": "broken", **model, "source": "python:tests.factories:always_raises"}],
             execution={"batch_size": 4})
    assert "not of the images" in str(e.value)
    (run,) = read_runs(tmp_path / "b" / "results")
    assert run.status == "failed" and "this model is broken" in run.error
    assert not part_files(tmp_path / "b" / "results")  # no error row of a broken model is stored


def _config_file(tmp_path: Path, synth: Path) -> Path:
    cfg = {"name": "kill", "output": str(tmp_path / "results"),
           "dataset": {"format": "manifest", "path": str(synth / "manifest.csv")},
           "models": [{"name": "tiny", **TINY}], "execution": {"batch_size": 2, "num_cpus": 2, "flush_rows": 4}}
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path, tmp_path_factory):
    big = generate(tmp_path_factory.mktemp("big"), SynthConfig(cue="background", n=400, correlation=0.6, seed=5))
    cfg = _config_file(tmp_path, big)
    out = tmp_path / "results"
    proc = _cli(["run", str(cfg), "--no-progress"], start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(part_files(out)) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: " + (proc.stdout.read() if proc.stdout else "")
    os.kill(proc.pid, signal.SIGSTOP)  # freeze the driver: it holds the lock for as long as the next run needs
    second = _cli(["run", str(cfg), "--no-progress"])  # a second, overlapping run on the same output
    refused, _ = second.communicate(timeout=300)
    assert second.returncode == 2 and f"pid {proc.pid} on host" in refused, refused
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    partial = read_results(out, columns=["image_id"]).num_rows
    assert 0 < partial < 400
    judged = _cli(["gate", str(out), "-q"])
    glog, _ = judged.communicate(timeout=300)
    assert judged.returncode == 2 and "did not finish" in glog, glog  # a killed run is not judged silently
    judged = _cli(["gate", str(out), "-q", "--allow-partial"])
    glog, _ = judged.communicate(timeout=300)
    assert judged.returncode in (0, 1) and "partial" in glog, glog
    done = _cli(["run", str(cfg), "--no-progress", "--verbose"])
    log, _ = done.communicate(timeout=600)
    assert done.returncode == 0, log
    assert "taking over the stale lock" in log and "is gone" in log
    t = read_results(out, columns=["image_id", "run_id"], current_only=False)
    ids = t.column("image_id").to_pylist()
    assert len(ids) == 400 and len(set(ids)) == 400  # every image exactly once
    raw_rows = sum(pq.read_metadata(f).num_rows for f in part_files(out))
    assert raw_rows == 400  # not even a hidden duplicate on disk
    runs = read_runs(out)
    assert [r.status for r in runs] == ["running", "finished"]  # the killed run never finished
    assert runs[1].models["tiny"].skipped == partial


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_nothing_is_lost(tmp_path, tmp_path_factory):
    psutil = pytest.importorskip("psutil")
    big = generate(tmp_path_factory.mktemp("big2"), SynthConfig(cue="background", n=400, correlation=0.6, seed=6))
    cfg = _config_file(tmp_path, big)
    out = tmp_path / "results"
    proc = _cli(["run", str(cfg), "--no-progress"], start_new_session=True)
    killed = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and killed is None:
            if out.exists() and part_files(out):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        if "AuditActor" in " ".join(child.cmdline()):
                            child.kill()
                            killed = child.pid
                            break
                    except psutil.NoSuchProcess:
                        continue
            time.sleep(0.1)
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "no scoring worker was found to kill"
    assert proc.returncode == 0, log
    ids = read_results(out, columns=["image_id"]).column("image_id").to_pylist()
    assert len(ids) == 400 and len(set(ids)) == 400
    assert sum(pq.read_metadata(f).num_rows for f in part_files(out)) == 400
