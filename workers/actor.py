"""The thin class Ray Data calls: the models of one prepare group per actor, loaded once in ``__init__``.

Used as ``ds.map_batches(AuditActor, fn_constructor_kwargs={"jobs": [...]}, concurrency=n, num_gpus=g)``;
everything it does is in :class:`workers.multi.MultiScorer` (one model: :class:`workers.score.Scorer`),
which needs no Ray to test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workers.multi import ModelJob, MultiScorer


class AuditActor:
    """Scores prepared batches with every model of its group on this actor's device (its GPU, or the CPU)."""

    def __init__(self, jobs: Sequence[ModelJob], threads: int | None = None) -> None:
        logging.basicConfig(level=os.environ.get("CUEAUDIT_LOG_LEVEL", "WARNING"))
        if threads:
            torch.set_num_threads(threads)
        self.scorer = MultiScorer(jobs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.scorer(batch)
