"""Resolution-aware saliency: is the CAM layer fine enough for the objects, and if not, which finer one?

A Grad-CAM map can only place mass on its feature cells. When the median labelled object covers
fewer than :data:`workers.metrics.MIN_OBJECT_CELLS` cells of the automatic layer's map (a 7x7 map
and small COCO objects, a 4x4 map at 64 px), object and context cannot be told apart there, so
the audit also computes the map at the next finer stage (:func:`workers.cam.finer_layer`), in the
same pass. The decision is made once per model before scoring, from a deterministic sample of the
manifest's annotations rasterised through the model's own geometry, so it is part of the
audit's fingerprint and the same for every worker.

>>> d = decide_fine_layer(spec, rows)                                 # doctest: +SKIP
>>> d.fine_layer, d.reason                                            # doctest: +SKIP
('layer3', 'median object covers 2.6 cells of layer4 (4x4) < 4: also auditing layer3 (8x8)')
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from common.annotations import AnnotationError, loads
from common.decode import ImageError, _open, _orientation, rasterize
from common.geometry import Geometry
from common.preprocess import Preprocess
from workers.cam import finer_layer, resolve_layer
from workers.metrics import MIN_OBJECT_CELLS
from workers.models import ModelSpec, load_model

log = logging.getLogger(__name__)

SAMPLE = 200
"""Annotated images whose object areas estimate the median (chosen by a hash of the image id)."""


@dataclass(frozen=True)
class FineDecision:
    """Whether a model's audit also needs a finer layer, and why (for the log and the run record)."""

    layer: str
    grid: tuple[int, int]
    median_cells: float | None
    fine_layer: str | None
    fine_grid: tuple[int, int] | None
    images: int
    reason: str


def _displayed_size(path: str) -> tuple[int, int]:
    with _open(path, 1 << 62) as im:
        w, h = im.size
        return (h, w) if _orientation(im, path) >= 5 else (w, h)


def _key(image_id: object) -> str:
    return hashlib.sha1(str(image_id).encode()).hexdigest()


def sample_rows(rows: Iterable[Mapping[str, Any]] | pa.Table, n: int = SAMPLE) -> list[Mapping[str, Any]]:
    """Up to ``n`` labelled rows with annotations, the same ones whatever the manifest's order
    (the smallest hashes of their image ids). A manifest table is filtered in Arrow first, so only
    the sample becomes Python objects."""
    if isinstance(rows, pa.Table):
        t = rows
        keep = pc.and_(pc.is_valid(t.column("objects")), pc.is_valid(t.column("label")))
        if "error" in t.column_names:
            keep = pc.and_(keep, pc.is_null(t.column("error")))
        t = t.filter(keep)
        keys = [_key(i) for i in t.column("image_id").to_pylist()]
        order = sorted(range(t.num_rows), key=keys.__getitem__)
        rows = t.take(pa.array(order[: 4 * n], pa.int64())).to_pylist()
    annotated = [r for r in rows if r.get("objects") and r.get("label") and not r.get("error")]
    return sorted(annotated, key=lambda r: _key(r["image_id"]))[:n]


def object_areas(rows: Iterable[Mapping[str, Any]] | pa.Table, pre: Preprocess, n: int = SAMPLE) -> np.ndarray:
    """Labelled-object area fractions of the model input for a deterministic sample of ``rows``.

    Reads only image headers; unreadable images and bad annotations are skipped.
    """
    areas = []
    for r in sample_rows(rows, n):
        try:
            w, h = _displayed_size(str(r["path"]))
            masks = rasterize(loads(r["objects"]), Geometry.plan(w, h, pre), r["label"], image_path=str(r["path"]))
        except (ImageError, AnnotationError, OSError, ValueError) as e:
            log.debug("resolution sample: skipping %s: %s", r.get("path"), e)
            continue
        if masks.target is not None:
            areas.append(float(masks.target.mean()))
    return np.asarray(areas, dtype=np.float64)


def decide_fine_layer(spec: ModelSpec, rows: Iterable[Mapping[str, Any]] | pa.Table, *, layer: str | None = None,
                      layout: str | None = None, prefix_tokens: int | None = None,
                      min_cells: float = MIN_OBJECT_CELLS, n: int = SAMPLE) -> FineDecision:
    """Probe the model's CAM layer and candidates on the CPU and decide on a finer layer.

    The finer layer is chosen when the median sampled object covers fewer than ``min_cells`` cells
    of ``layer``'s map (``None``: the automatic layer) and the model has a finer stage.
    """
    loaded = load_model(spec, "cpu")
    x = torch.zeros(1, 3, *loaded.preprocess.size)
    main = resolve_layer(loaded.module, x, layer, layout=layout, prefix_tokens=prefix_tokens)
    grid = (main.shape[1], main.shape[2])
    areas = object_areas(rows, loaded.preprocess, n)
    if not len(areas):
        return FineDecision(main.name, grid, None, None, None, 0, "no annotated objects to size: no finer layer")
    cells = float(np.median(areas)) * grid[0] * grid[1]
    where = f"median object covers {cells:.1f} cells of {main.name} ({grid[0]}x{grid[1]})"
    if cells >= min_cells:
        return FineDecision(main.name, grid, cells, None, None, len(areas), f"{where} >= {min_cells:g}: fine enough")
    fine = finer_layer(loaded.module, x, layer, layout=layout, prefix_tokens=prefix_tokens)
    if fine is None:
        return FineDecision(main.name, grid, cells, None, None, len(areas),
                            f"{where} < {min_cells:g}, but the model has no finer stage")
    fgrid = (fine.shape[1], fine.shape[2])
    return FineDecision(main.name, grid, cells, fine.name, fgrid, len(areas),
                        f"{where} < {min_cells:g}: also auditing {fine.name} ({fgrid[0]}x{fgrid[1]})")
