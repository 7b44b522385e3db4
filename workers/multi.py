"""Several models over one prepared batch: each image is read and decoded once for all of them.

A run groups its models by preprocessing (the geometry and size decide the pixels, the masks and the
donor backgrounds, so models with the same preprocessing can share all of it). One Ray actor per
GPU (or CPU actor) hosts every model of a group; for each batch it decodes device-side JPEGs once
(:mod:`workers.devdecode`), moves the pixels to the device once, then runs each model's
:class:`~workers.score.Scorer` on the rows that model still has to score (``_want_<k>``: a resumed
run may have different images left per model). The output holds one row per (model, image), the
model's position in ``_model``; the driver splits it per model. A model that fails systematically
(:mod:`workers.faults`) turns the batch into a ``_fatal`` marker the driver stops the run on.

Why one actor hosting the models rather than a chain of actor stages, one per model: the prepared
batch (pixels, donor backgrounds and fill maps: about 0.9 MB per 224-pixel image with
counterfactuals) would cross Ray's object store once per stage instead of once, each stage would
need its own share of every GPU, and the models of a group would still wait for the slowest. Here
the resources per actor stay as for one model; the GPU memory holds every model of the group.
``make bench`` measures it (BENCHMARKS.md, "One read for many models").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.devdecode import decode_rows
from workers.faults import FATAL, SystematicFailure, fatal_batch
from workers.models import ModelSpec
from workers.score import ScoreOptions, Scorer

WANT_PREFIX = "_want_"
MODEL_COLUMN = "_model"
ONCE_PER_IMAGE = ("_t_prepare", "_t_decode", "_n_decodes")
"""Per-image costs shared by the models: reported on the first output row of each image only (with
``_n_images``, 1 there), so the driver's sums count them once."""


@dataclass(frozen=True)
class ModelJob:
    """One model of a group: its name, spec and scoring options."""

    name: str
    spec: ModelSpec
    opts: ScoreOptions


def take_rows(batch: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The batch restricted to ``rows`` (numpy columns and device tensors alike)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v[torch.as_tensor(rows, device=v.device)]
        else:
            out[k] = np.asarray(v)[rows]
    return out


def concat_columns(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-model outputs row-wise. A column absent from a part is None there; a column whose
    shape or dtype differs between parts (e.g. a per-model vector length) becomes an object column
    of per-row values."""
    keys = list(dict.fromkeys(k for p in parts for k in p))
    lengths = [len(next(iter(p.values()))) for p in parts]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        cols = [np.asarray(p[k]) if k in p else np.full(n, None, dtype=object) for p, n in zip(parts, lengths, strict=True)]
        uniform = len({(c.dtype, c.shape[1:]) for c in cols}) == 1
        if uniform:
            out[k] = np.concatenate(cols)
        else:
            flat = np.empty(sum(lengths), dtype=object)
            flat[:] = [row for c in cols for row in (list(c) if c.ndim == 1 else [r for r in c])]
            out[k] = flat
    return out


class MultiScorer:
    """Loads every model of a group once and scores prepared batches with each (see module docstring)."""

    def __init__(self, jobs: Sequence[ModelJob]) -> None:
        if not jobs:
            raise ValueError("MultiScorer needs at least one model")
        self.jobs = list(jobs)
        self.scorers = [Scorer(j.spec, j.opts) for j in self.jobs]
        self.device = self.scorers[0].device
        sizes = {(s.h, s.w) for s in self.scorers}
        if len(sizes) != 1:
            raise ValueError(f"models of one group need one input size, got {sorted(sizes)}")
        self.size = sizes.pop()

    def _shared_pixels(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Decode device-side JPEGs once and put the pixels on the device once, for every model."""
        t0 = time.perf_counter()
        n = len(batch["image_id"])
        batch = dict(batch)
        pixels = np.asarray(batch["pixels"])
        enc = batch.pop("encoded", None)
        if self.device.type == "cpu" and enc is None:
            return batch  # nothing to share: the scorers read the host array without a copy
        dev = self.scorers[0]._to_device(pixels)
        if enc is not None:
            dev = dev.clone()
            rows = np.arange(n)
            bad = decode_rows(enc, batch["geometry"], batch["path"], rows, dev, self.device, self.size)
            if bad:
                error = np.array(batch["error"], dtype=object)
                kind = np.array(batch["error_kind"], dtype=object)
                for i, msg in bad.items():
                    error[i], kind[i] = msg, "corrupt"
                batch["error"], batch["error_kind"] = error, kind
        batch["pixels"] = dev
        batch["_t_decode"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        return batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        if FATAL in batch:  # the prepare stage failed systematically: pass its message on
            return {FATAL: np.asarray(batch[FATAL], dtype=object)}
        try:
            return self._score(batch)
        except SystematicFailure as e:
            return fatal_batch(len(batch["image_id"]), e)

    def _score(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        n = len(batch["image_id"])
        batch = self._shared_pixels(batch)
        once = {k: np.asarray(batch[k]) for k in ONCE_PER_IMAGE if k in batch}
        once["_n_images"] = np.ones(n, dtype=np.int32)
        claimed = np.zeros(n, dtype=bool)
        parts = []
        for k, scorer in enumerate(self.scorers):
            want = batch.get(f"{WANT_PREFIX}{k}")
            rows = np.arange(n) if want is None else np.flatnonzero(np.asarray(want, dtype=bool))
            if not len(rows):
                continue
            out = scorer(batch if len(rows) == n else take_rows(batch, rows))
            out[MODEL_COLUMN] = np.full(len(rows), k, dtype=np.int16)
            first = ~claimed[rows]
            for key, v in once.items():
                out[key] = np.where(first, v[rows], 0).astype(v.dtype)
            claimed[rows] = True
            parts.append(out)
        if not parts:  # no model wants these rows (the driver never sends such a batch)
            return {MODEL_COLUMN: np.zeros(0, np.int16), "image_id": np.zeros(0, dtype=object)}
        return concat_columns(parts)
