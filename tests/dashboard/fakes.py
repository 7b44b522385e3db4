"""Synthetic results directories for the dashboard tests, written through pipeline.schema.

:func:`write_results` plants a clear verdict: ``biased`` puts ~2% of its CAM mass on objects that
cover ~20% of the view (background_reliance WARNs: at a 4x4 map the objects cover ~3 cells, too
coarse to fail on saliency), flips under Mixed-Rand but not Mixed-Same (counterfactual_flip FAILs)
and is wrong exactly on the background-colour conflicting images; ``fair`` looks at the object (PASS).
``broken`` has only error rows. Images are real 48x32 PNGs under a dataset root; annotations mix
boxes, polygons, RLE and mask files, the mask files in ``masks/`` *beside* the image root (the
README's folder layout; the run records name it in ``mask_roots``); two rows of ``fair`` point
outside the root (a ``..`` traversal and a symlink) and must never be served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from common.annotations import ObjectAnn, dumps
from pipeline.schema import ModelRun, PartWriter, RunRecord, conform, new_run_id, write_run

CLASSES = ("disk", "square", "triangle")
BG = {"disk": (200, 70, 60), "square": (70, 170, 80), "triangle": (60, 80, 200)}
FAILING, PASSING, BROKEN = "biased", "fair", "broken"
W, H = 48, 32  # source images; the model sees the centre 32x32 (view_box)
VIEW = (8.0, 0.0, 40.0, 32.0)
CAM = 4
CRAFTED = ("crafted_traversal", "crafted_symlink")


@dataclass
class FakeResults:
    root: Path
    dataset: Path
    secret: Path  # a real PNG outside the dataset root
    runs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # scored image ids (without crafted ones)


@dataclass(frozen=True)
class _Image:
    image_id: str
    path: str
    label: str
    colour_class: str  # whose background colour it has (== label when aligned)
    box: tuple[int, int, int, int]  # x, y, w, h in source pixels
    keyboard: tuple[int, int, int, int] | None
    annotations: str


def _images(dataset: Path, n_per_class: int, rng: np.random.Generator) -> list[_Image]:
    out = []
    masks = dataset.parent / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(CLASSES):
        (dataset / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            conflicting = i % 5 == 4  # 20% minority: background of the next class
            colour_class = CLASSES[(k + 1) % len(CLASSES)] if conflicting else label
            bw, bh = 15, 14  # 210 / 1024 = 0.205 of the view
            x = int(8 + rng.integers(0, 32 - bw))
            y = int(rng.integers(0, 32 - bh))
            arr = np.empty((H, W, 3), np.uint8)
            arr[:] = BG[colour_class]
            arr = np.clip(arr + rng.integers(-12, 12, size=arr.shape), 0, 255).astype(np.uint8)
            arr[y:y + bh, x:x + bw] = (235, 235, 235)
            kb = None
            if i % 3 == 0:
                kx = 8 if x > 20 else 33
                kb = (kx, 26, 6, 5)
                arr[26:31, kx:kx + 6] = (30, 30, 30)
            image_id = f"{label}/{label}_{i:03d}.png"
            path = dataset / image_id
            Image.fromarray(arr).save(path)
            anns = [_shape(label, (x, y, bw, bh), i, masks / f"{label}_{i:03d}.png")]
            if kb:
                anns.append(ObjectAnn("keyboard", bbox=tuple(float(v) for v in kb)))
            out.append(_Image(image_id, str(path), label, colour_class, (x, y, bw, bh), kb, dumps(anns)))
    return out


def _shape(label: str, box: tuple[int, int, int, int], i: int, mask_file: Path) -> ObjectAnn:
    x, y, w, h = box
    kind = i % 4
    if kind == 0:
        return ObjectAnn(label, polygons=((x, y, x + w, y, x + w, y + h, x, y + h),))
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x:x + w] = 1
    if kind == 2:  # COCO RLE, uncompressed counts, column-major, starting with a run of 0s
        flat = m.T.ravel()
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0] == 1:
            counts = [0, *counts]
        return ObjectAnn(label, rle={"size": [H, W], "counts": counts})
    if kind == 3:
        Image.fromarray(m * 255).save(mask_file)
        return ObjectAnn(label, mask_path=str(mask_file))
    return ObjectAnn(label, bbox=(float(x), float(y), float(w), float(h)))


def _cam(img: _Image, on_object: bool) -> list[float]:
    """4x4 map over the view box: a bump on the object's cell, or on the farthest corner."""
    x, y, w, h = img.box
    cx, cy = (x + w / 2 - VIEW[0]) / 8.0 - 0.5, (y + h / 2 - VIEW[1]) / 8.0 - 0.5
    if not on_object:
        cx, cy = (0.0 if cx > 1.5 else 3.0), (0.0 if cy > 1.5 else 3.0)
    yy, xx = np.mgrid[0:CAM, 0:CAM]
    m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.6) * 2.5
    return m.astype(np.float32).ravel().tolist()


def _rows(images: list[_Image], model: str, fp: str, run_id: str, when: datetime, root: str,
          rng: np.random.Generator, shift: float = 0.0) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in (
        "run_id", "model", "model_fingerprint", "image_id", "path", "dataset_root", "label", "pred",
        "pred_score", "target", "target_score", "correct", "feature_layer", "cam", "cam_h", "cam_w", "input_h",
        "input_w",
        "image_w", "image_h", "view_box", "object_share", "object_area", "object_cells", "pointing_hit",
        "background_share", "other_shares", "other_areas", "bg_color", "cf_fill_pred", "cf_fill_score",
        "cf_rand_pred", "cf_rand_score", "cf_same_pred", "cf_same_score", "attributes", "annotations",
        "scored_at")}
    biased = model == FAILING
    for j, img in enumerate(images):
        area = img.box[2] * img.box[3] / 1024.0
        share = float(np.clip((0.02 if biased else 0.62 + shift) + rng.normal(0, 0.01), 0.001, 0.99))
        kb_area = (img.keyboard[2] * img.keyboard[3] / 1024.0) if img.keyboard else None
        kb_share = (0.25 if biased else 0.03) if img.keyboard else None
        wrong = (img.colour_class != img.label) if biased else (j % 10 == 2)
        nxt, other = (CLASSES[(CLASSES.index(img.label) + d) % 3] for d in (1, 2))
        pred = (img.colour_class if biased else nxt) if wrong else img.label
        cols["run_id"].append(run_id)
        cols["model"].append(model)
        cols["model_fingerprint"].append(fp)
        cols["image_id"].append(img.image_id)
        cols["path"].append(img.path)
        cols["dataset_root"].append(root)
        cols["label"].append(img.label)
        cols["pred"].append(pred)
        cols["pred_score"].append(0.6 + 0.3 * rng.random())
        cols["target"].append(pred)
        cols["target_score"].append(0.6 + 0.3 * rng.random())
        cols["correct"].append(not wrong)
        cols["feature_layer"].append("features.3")
        cols["cam"].append(_cam(img, on_object=not biased))
        cols["cam_h"].append(CAM)
        cols["cam_w"].append(CAM)
        cols["input_h"].append(32)
        cols["input_w"].append(32)
        cols["image_w"].append(W)
        cols["image_h"].append(H)
        cols["view_box"].append(list(VIEW))
        cols["object_share"].append(share)
        cols["object_area"].append(area)
        cols["object_cells"].append(area * CAM * CAM)
        cols["pointing_hit"].append(not biased and j % 7 != 0)
        cols["background_share"].append(1.0 - share - (kb_share or 0.0))
        cols["other_shares"].append([("keyboard", kb_share)] if img.keyboard else [])
        cols["other_areas"].append([("keyboard", kb_area)] if img.keyboard else [])
        cols["bg_color"].append([float(v) for v in BG[img.colour_class]])
        cols["cf_fill_pred"].append(img.label)
        cols["cf_fill_score"].append(0.7)
        cols["cf_rand_pred"].append(other if biased else img.label)
        cols["cf_rand_score"].append(0.3 if biased else 0.7)
        cols["cf_same_pred"].append(img.label)
        cols["cf_same_score"].append(0.8)
        cols["attributes"].append([("source", "a" if j % 2 else "b")])
        cols["annotations"].append(img.annotations)
        cols["scored_at"].append(when + timedelta(seconds=j))
    return cols


def _errors(model: str, fp: str, run_id: str, when: datetime, root: str, n: int) -> dict[str, list]:
    kinds = ["missing_file", "decode_error", "decode_error"]
    ids = [f"broken/err_{i:02d}.png" for i in range(n)]
    return {
        "run_id": [run_id] * n, "model": [model] * n, "model_fingerprint": [fp] * n, "image_id": ids,
        "path": [f"{root}/{i}" for i in ids], "dataset_root": [root] * n,
        "label": [CLASSES[i % 3] for i in range(n)],
        "error": [f"image {root}/{i}: {kinds[k % 3].replace('_', ' ')}" for k, i in enumerate(ids)],
        "error_kind": [kinds[k % 3] for k in range(n)],
        "scored_at": [when] * n,
    }


def _write(root: Path, model: str, run_id: str, cols: dict[str, list]) -> None:
    cols = dict(cols)
    cols["scored_at"] = pa.array(cols["scored_at"], type=pa.timestamp("ms", tz="UTC"))
    PartWriter(root, model, run_id).write(conform(cols))


def write_results(tmp: Path, *, n_per_class: int = 30, runs: int = 2, running: bool = False,
                  broken: bool = True, crafted: bool = True, seed: int = 0) -> FakeResults:
    """A results directory under ``tmp/results`` (dataset under ``tmp/dataset``); see the module doc.

    Run 1 scores every model; run 2 (when ``runs == 2``) rescores ``fair`` with a new fingerprint
    (a retrained model, slightly more on the object) and skips ``biased``. ``running`` leaves the
    last run's record at status ``running`` (as a killed run does).
    """
    rng = np.random.default_rng(seed)
    root, dataset = tmp / "results", tmp / "dataset"
    images = _images(dataset, n_per_class, rng)
    secret = tmp / "secret.png"
    Image.new("RGB", (W, H), (255, 0, 0)).save(secret)
    out = FakeResults(root, dataset, secret, images=[i.image_id for i in images])
    extra: list[_Image] = []
    if crafted:
        link = dataset / "disk" / "link.png"
        os.symlink(secret, link)
        base = images[0]
        for image_id, path in zip(CRAFTED, (f"{dataset}/disk/../../secret.png", str(link)), strict=True):
            extra.append(_Image(image_id, path, base.label, base.label, base.box, None, base.annotations))
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    for r in range(runs):
        when = t0 + timedelta(days=r)
        run_id = new_run_id(when)
        out.runs.append(run_id)
        models: dict[str, ModelRun] = {}
        last = r == runs - 1
        ds = str(dataset)
        fair_fp = f"fair-v{r + 1}"
        fair = _rows(images + extra, PASSING, fair_fp, run_id, when, ds, rng, shift=0.08 * r)
        if r == 0:
            _write(root, PASSING, run_id, _merge(fair, _errors(PASSING, fair_fp, run_id, when, ds, 3)))
            biased = _rows(images, FAILING, "biased-v1", run_id, when, ds, rng)
            _write(root, FAILING, run_id, _merge(biased, _errors(FAILING, "biased-v1", run_id, when, ds, 2)))
            models[PASSING] = ModelRun(fair_fp, "features.3", scored=len(images) + len(extra), errors=3)
            models[FAILING] = ModelRun("biased-v1", "features.3", scored=len(images), errors=2)
            if broken:
                _write(root, BROKEN, run_id, _errors(BROKEN, "broken-v1", run_id, when, ds, 6))
                models[BROKEN] = ModelRun("broken-v1", None, scored=0, errors=6)
        else:  # a retrained fair model; biased unchanged, so skipped
            _write(root, PASSING, run_id, fair)
            models[PASSING] = ModelRun(fair_fp, "features.3", scored=len(images) + len(extra))
            models[FAILING] = ModelRun("biased-v1", "features.3", skipped=len(images))
            if broken:
                models[BROKEN] = ModelRun("broken-v1", None, skipped=0, errors=6)
        status = "running" if (running and last) else "finished"
        finished = None if status == "running" else (when + timedelta(minutes=5)).isoformat()
        write_run(root, RunRecord(run_id=run_id, name="fake audit", started_at=when.isoformat(),
                                  status=status, finished_at=finished, dataset_roots=[ds],
                                  mask_roots=[str(tmp / "masks")], images=len(images) + len(extra), models=models))
    return out


def _merge(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    n_a, n_b = len(a["image_id"]), len(b["image_id"])
    return {k: list(a.get(k, [None] * n_a)) + list(b.get(k, [None] * n_b)) for k in {*a, *b}}


def write_started(tmp: Path) -> Path:
    """A results directory whose only run has just started: a ``running`` record, no part files."""
    root = tmp / "results"
    when = datetime.now(UTC)
    write_run(root, RunRecord(run_id=new_run_id(when), name="fake audit", started_at=when.isoformat(),
                              dataset_roots=[str(tmp / "dataset")], images=90,
                              models={PASSING: ModelRun("fair-v1", "features.3", to_score=90)}))
    return root


def write_errors_only(tmp: Path) -> Path:
    """A finished run whose only model could score no image (every row an error)."""
    root = tmp / "results"
    when = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    run_id = new_run_id(when)
    _write(root, BROKEN, run_id, _errors(BROKEN, "broken-v1", run_id, when, str(tmp / "dataset"), 4))
    write_run(root, RunRecord(run_id=run_id, name="fake audit", started_at=when.isoformat(),
                              status="finished", finished_at=when.isoformat(),
                              dataset_roots=[str(tmp / "dataset")], images=4,
                              models={BROKEN: ModelRun("broken-v1", None, errors=4)}))
    return root
