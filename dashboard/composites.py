"""The counterfactual images a worker scored, rendered again for a reviewer, without torch.

The workers never store the composites (they would cost an image per counterfactual per row); a
row stores what is needed to rebuild them: the image and its annotations, the model-input geometry
(``view_box`` and the input size), and the donors' image ids. This module repeats the prepare
stage's construction with the same torch-free code (:mod:`common.counterfactual`): the image and
its masks resampled through the same geometry, the donor's labelled objects removed by background
tiles, the object pasted over that background (Mixed-Rand, Mixed-Same), and the context ablation
and its control placed from the same seed. Only the resampling filter can differ (the results do
not record it; bilinear is used), so edges may differ by a grey level or two.

Every file read (the image, its mask files, the donor's) passes the dashboard's path guard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import counterfactual as cf
from common.annotations import AnnotationError, loads
from common.decode import ImageError, open_image, rasterize
from common.geometry import Geometry
from dashboard.images import UnsafePathError, guard_path


@dataclass(frozen=True)
class Panel:
    title: str
    image: np.ndarray | None  # (H, W, 3) uint8 at the model's input size; None: not renderable
    note: str = ""


@dataclass(frozen=True)
class ModelInput:
    pixels: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray | None  # (H, W) soft mask of the labelled objects
    others: list[np.ndarray]  # soft masks of the other annotated categories, by category name


def model_input(row: Mapping[str, Any], roots: Sequence[str], mask_roots: Sequence[str] = ()) -> ModelInput:
    """The row's image and masks as the model saw them (raises UnsafePathError, ImageError, AnnotationError)."""
    base = row.get("dataset_root")
    path = guard_path(row.get("path"), roots, base=base)
    objects = loads(row.get("annotations"))
    readable = [*roots, *mask_roots]
    for o in objects:  # rasterize reads mask files itself: each must be one the audit read
        if o.mask_path:
            guard_path(o.mask_path, readable, base=base)
    box = tuple(float(v) for v in row["view_box"])
    geom = Geometry(int(row["image_w"]), int(row["image_h"]), box, int(row["input_h"]), int(row["input_w"]))
    pixels = geom.image(open_image(str(path)))
    masks = rasterize(objects, geom, row.get("label"), image_path=str(path))
    return ModelInput(pixels, masks.target, [masks.others[k] for k in sorted(masks.others)])


def composites(row: Mapping[str, Any], donors: Mapping[str, Mapping[str, Any]], roots: Sequence[str],
               mask_roots: Sequence[str] = (), dilation: float = cf.DEFAULT_DILATION, seed: int = 0) -> list[Panel]:
    """Panels for every counterfactual the row has a prediction for; ``donors``: image id -> stored row."""
    kinds = [k for k in ("rand", "same", "ctx", "ctrl") if _present(row.get(f"cf_{k}_pred"))]
    if not kinds:
        return []
    try:
        me = model_input(row, roots, mask_roots)
    except (UnsafePathError, ImageError, AnnotationError, ValueError, KeyError, TypeError) as e:
        return [Panel(_TITLE[k], None, f"cannot render: {e}") for k in kinds]
    panels = []
    if "ctx" in kinds or "ctrl" in kinds:
        rng = cf.placement_rng(seed, str(row["image_id"]))
        maps = dict(zip(("ctx", "ctrl"), cf.ablation_indices(me.target, me.others, me.pixels.shape[:2], rng, dilation),
                        strict=True))
    for k in kinds:
        title = f"{_TITLE[k]} → {row.get(f'cf_{k}_pred')}"
        if k in ("ctx", "ctrl"):
            idx = maps[k]
            panels.append(Panel(title, None if idx is None else cf.apply_fill(me.pixels, idx),
                                "" if idx is not None else "no room for it in this image"))
            continue
        donor_id = row.get(f"cf_{k}_donor")
        donor = donors.get(str(donor_id)) if _present(donor_id) else None
        if me.target is None or donor is None:
            panels.append(Panel(title, None, f"donor {donor_id!r} not in these results"))
            continue
        try:
            d = model_input(donor, roots, mask_roots)
        except (UnsafePathError, ImageError, AnnotationError, ValueError, KeyError, TypeError) as e:
            panels.append(Panel(title, None, f"donor {donor_id!r}: {e}"))
            continue
        bg = None if d.target is None else cf.donor_background(d.pixels, d.target, d.others, dilation)
        if bg is None:
            panels.append(Panel(title, None, f"donor {donor_id!r} leaves no background to tile from"))
            continue
        panels.append(Panel(f"{title} (background of {donor_id})", cf.composite(me.pixels, me.target, bg)))
    return panels


def construction(config: Mapping[str, Any] | str | None) -> tuple[float, int]:
    """(dilation, seed) of the counterfactuals from a run record's config (defaults when absent)."""
    if isinstance(config, str):
        config = json.loads(config)
    c = (config or {}).get("counterfactual") or {}
    return float(c.get("dilation", cf.DEFAULT_DILATION)), int(c.get("seed", 0))


_TITLE = {"rand": "Mixed-Rand", "same": "Mixed-Same", "ctx": "context removed", "ctrl": "control patch removed"}


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v)) and v != ""
