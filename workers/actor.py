"""The thin class Ray Data calls: one model replica per actor, loaded once in ``__init__``.

Used as ``ds.map_batches(AuditActor, fn_constructor_kwargs={...}, concurrency=n, num_gpus=g)``;
everything it does is in :class:`workers.score.Scorer`, which needs no Ray to test.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from workers.models import ModelSpec
from workers.score import ScoreOptions, Scorer


class AuditActor:
    """Scores prepared batches for one model on this actor's device (its GPU, or the CPU)."""

    def __init__(self, spec: ModelSpec, opts: ScoreOptions, threads: int | None = None) -> None:
        logging.basicConfig(level=os.environ.get("CUEAUDIT_LOG_LEVEL", "WARNING"))
        if threads:
            torch.set_num_threads(threads)
        self.scorer = Scorer(spec, opts)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.scorer(batch)
