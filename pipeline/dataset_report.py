"""``cueaudit dataset-report``: the cues a dataset offers, before any model sees it.

A shortcut can only be learnt if the data contains it. This report measures, from the images and
annotations alone: how well the background colour predicts the label (leave-one-out nearest
centroid, against the majority-class rate), which annotated categories co-occur with which class
(and which would act as a cue), and where and how large the labelled objects are per class
(a class whose objects are always small or always in one corner invites context shortcuts).
Torch-free: it decodes with Pillow on a thread pool, at a small size.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from common.annotations import AnnotationError, loads
from common.decode import ImageError, load_for_model, rasterize
from common.preprocess import Preprocess
from pipeline.analysis.cues import associations, colour_cue_class, colour_null
from pipeline.analysis.evidence import to_jsonable

PROBE = Preprocess(size=(64, 64), resize="resize", crop_pct=1.0)


@dataclass
class ImageFacts:
    image_id: str
    label: str | None
    categories: list[str] = field(default_factory=list)
    bg_color: list[float] | None = None
    object_area: float | None = None
    object_center: tuple[float, float] | None = None  # (x, y) in [0, 1]
    error: str | None = None


@dataclass
class ClassFacts:
    label: str
    n: int
    bg_color: list[float] | None
    object_area_mean: float | None
    object_area_p10_p90: tuple[float, float] | None
    center_mean: tuple[float, float] | None
    center_spread: float | None  # mean distance of object centres from their class mean (0..~0.7)


@dataclass
class DatasetReport:
    images: int
    errors: int
    errors_by_reason: dict[str, int]
    classes: list[ClassFacts]
    colour_predictiveness: float | None
    colour_chance: float | None
    colour_null95: float | None  # the same with shuffled labels: what small samples "predict" by chance
    cooccurrence: dict[str, dict[str, float]]  # label -> category -> P(category present | label)
    associations: dict[str, str]  # category -> class it signals
    flags: list[str]
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # model -> dataset labels mapping to no class

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)  # NaN -> None, tuples -> lists


def image_facts(row: dict[str, Any]) -> ImageFacts:
    f = ImageFacts(row["image_id"], row.get("label"))
    if row.get("error"):
        f.error = "annotation"
        return f
    try:
        objects = loads(row.get("objects"))
        f.categories = sorted({o.category for o in objects if o.category != f.label})
        if not objects:
            return f
        pixels, geom = load_for_model(row["path"], PROBE)
        masks = rasterize(objects, geom, f.label, image_path=row["path"])
    except ImageError as e:
        f.error = e.kind
        return f
    except AnnotationError:
        f.error = "annotation"
        return f
    planes = ([masks.target] if masks.target is not None else []) + list(masks.others.values())
    fg = np.max(np.stack(planes), axis=0) if planes else np.zeros(PROBE.size, np.float32)
    w = 1.0 - fg
    if w.sum() > 1e-6:
        f.bg_color = [float(v) for v in (pixels.astype(np.float64) * w[..., None]).reshape(-1, 3).sum(0) / w.sum()]
    if masks.target is not None and masks.target.sum() > 0:
        t = masks.target
        f.object_area = float(t.mean())
        ys, xs = np.mgrid[0 : t.shape[0], 0 : t.shape[1]]
        f.object_center = (float((xs * t).sum() / t.sum() + 0.5) / t.shape[1],
                           float((ys * t).sum() / t.sum() + 0.5) / t.shape[0])
    return f


def unmapped_by_model(labels: list[str], models: dict[str, tuple[Any, tuple[str, ...] | None]]) -> dict[str, list[str]]:
    """Per model (``name -> (label_map, class names or None)``): the dataset labels that map to no
    model class, which would all become ``unknown_label`` rows."""
    from common.labelmaps import unmapped_labels

    out = {}
    for name, (label_map, classes) in models.items():
        missing = unmapped_labels(labels, label_map, classes)
        if missing:
            out[name] = missing
    return out


def build_report(manifest: pa.Table, threads: int = 8, min_n: int = 20,
                 models: dict[str, tuple[Any, tuple[str, ...] | None]] | None = None) -> DatasetReport:
    """The dataset's cues; with ``models`` (name -> (label_map, class names or None)) also the labels
    each model cannot score."""
    rows = manifest.to_pylist()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        facts = list(pool.map(image_facts, rows))
    errors = Counter(f.error for f in facts if f.error)
    labelled = [f for f in facts if f.label and not f.error]
    by_class: dict[str, list[ImageFacts]] = defaultdict(list)
    for f in labelled:
        by_class[f.label].append(f)  # type: ignore[index]
    classes = []
    for lab in sorted(by_class):
        fs = by_class[lab]
        cols = [f.bg_color for f in fs if f.bg_color]
        areas = np.array([f.object_area for f in fs if f.object_area is not None])
        centers = np.array([f.object_center for f in fs if f.object_center is not None])
        cm = centers.mean(0) if len(centers) else None
        classes.append(ClassFacts(
            label=lab, n=len(fs),
            bg_color=[round(float(v), 1) for v in np.mean(cols, axis=0)] if cols else None,
            object_area_mean=float(areas.mean()) if len(areas) else None,
            object_area_p10_p90=(float(np.quantile(areas, 0.1)), float(np.quantile(areas, 0.9))) if len(areas) else None,
            center_mean=(float(cm[0]), float(cm[1])) if cm is not None else None,
            center_spread=float(np.linalg.norm(centers - cm, axis=1).mean()) if cm is not None else None,
        ))
    with_color = [f for f in labelled if f.bg_color]
    pred = chance = null95 = None
    if len({f.label for f in with_color}) >= 2 and len(with_color) >= 2:
        colors = np.array([f.bg_color for f in with_color]) / 255.0
        labels = np.array([f.label for f in with_color], dtype=object)
        _, _, pred = colour_cue_class(colors, labels)
        chance = max(Counter(labels).values()) / len(labels)
        null95 = colour_null(colors, labels)
    co: dict[str, dict[str, float]] = {}
    present: dict[str, Counter[str]] = defaultdict(Counter)
    for lab, fs in by_class.items():
        counts = Counter(c for f in fs for c in f.categories)
        co[lab] = {c: n / len(fs) for c, n in sorted(counts.items())}
        for c, n in counts.items():
            present[c][lab] += n
    # The same association rule the co-occurrence check applies to model results.
    assoc = associations(pd.DataFrame({"label": [f.label for f in labelled],
                                       "other_areas": [dict.fromkeys(f.categories, 1.0) for f in labelled]}), min_n)
    flags = []
    if pred is not None and chance is not None and null95 is not None and pred > null95 and pred - chance >= 0.10:
        flags.append(f"background colour predicts the label at {pred:.0%} (chance {chance:.0%}): "
                     "a colour shortcut is available")
    for c, lab in sorted(assoc.items()):
        flags.append(f"'{c}' appears mostly with '{lab}' ({present[c][lab]}/{sum(present[c].values())} images): "
                     "a co-occurrence shortcut is available")
    spreads = [c for c in classes if c.center_spread is not None]
    if len(spreads) >= 2:
        med = float(np.median([c.center_spread for c in spreads]))
        for c in spreads:
            if c.center_spread is not None and med > 0 and c.center_spread < 0.5 * med:
                flags.append(f"objects of '{c.label}' sit in one place (spread {c.center_spread:.2f} vs median "
                             f"{med:.2f}): position may act as a cue")
    unmapped = unmapped_by_model(sorted(by_class), models or {})
    return DatasetReport(images=len(facts), errors=sum(errors.values()), errors_by_reason=dict(errors),
                         classes=classes, colour_predictiveness=pred, colour_chance=chance, colour_null95=null95,
                         cooccurrence=co, associations=assoc, flags=flags, unmapped=unmapped)


def print_dataset_report(r: DatasetReport, console: Any) -> None:
    from rich.table import Table

    console.print(f"[bold]{r.images}[/] images, {r.errors} unreadable"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in r.errors_by_reason.items())})" if r.errors else ""))
    t = Table(title="Classes", title_justify="left")
    for col in ("class", "n", "background RGB", "object area (p10-p90)", "object centre (x, y)", "centre spread"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c in r.classes:
        t.add_row(c.label, str(c.n), str(c.bg_color or "-"),
                  f"{c.object_area_mean:.2f} ({c.object_area_p10_p90[0]:.2f}-{c.object_area_p10_p90[1]:.2f})"
                  if c.object_area_mean is not None and c.object_area_p10_p90 else "-",
                  f"({c.center_mean[0]:.2f}, {c.center_mean[1]:.2f})" if c.center_mean else "-",
                  f"{c.center_spread:.2f}" if c.center_spread is not None else "-")
    console.print(t)
    if r.colour_predictiveness is not None:
        console.print(f"background colour -> label (leave-one-out nearest centroid): {r.colour_predictiveness:.1%} "
                      f"vs chance {r.colour_chance:.1%} ({r.colour_null95:.1%} with shuffled labels)")
    cats = sorted({c for d in r.cooccurrence.values() for c in d})
    if cats:
        co = Table(title="Co-occurrence: P(category present | class)", title_justify="left")
        co.add_column("class")
        for c in cats:
            co.add_column(c + (" *" if c in r.associations else ""), justify="right")
        for lab, d in sorted(r.cooccurrence.items()):
            co.add_row(lab, *[f"{d.get(c, 0):.0%}" for c in cats])
        console.print(co)
    for name, labs in r.unmapped.items():
        console.print(f"[red]model {name!r}:[/] labels {labs} map to no model class (give them a label_map "
                      "entry); their images would be unknown_label error rows")
    for f in r.flags:
        console.print(f"[yellow]cue:[/] {f}")
    if not r.flags:
        console.print("[green]no strong colour, co-occurrence or position cue found[/]")


def write_json(r: DatasetReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(r.to_dict(), indent=2))
