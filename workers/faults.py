"""Bad images vs broken code: an exception on one image is that image's error row; the same
exception on image after image is a fault of the code or the model, and stops the run.

The prepare stage and the scorer catch any exception raised while handling one image and turn it
into an ``internal`` error row whose message names the file and the exception. A
:class:`FailureWatch` per stage and process tells the two cases apart: when every image a batch
attempted failed with the same exception type and that makes at least :data:`SYSTEMATIC_ROWS`
failures in a row, it raises :class:`SystematicFailure`. Inside a Ray run the stage returns that
batch as a :data:`FATAL` marker instead (Ray would wrap the exception into a message without it),
and the driver stops the run (exit 2) with the message, without writing the batch: no error row of
a broken model is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INTERNAL = "internal"
SYSTEMATIC_ROWS = 4
"""Consecutive failed images (every image of their batches, one exception type) that stop a run: a
batch of 4+ that fails entirely, or e.g. four single-image batches in a row."""


FATAL = "_fatal"
"""Column of a batch whose stage failed systematically: the message, on every row."""


class SystematicFailure(RuntimeError):
    """Every image of a batch failed the same way: the code or the model is broken, not the images."""


def fatal_batch(n: int, e: SystematicFailure) -> dict[str, np.ndarray]:
    """What a stage returns instead of a batch that failed systematically (see :data:`FATAL`)."""
    return {FATAL: np.full(max(n, 1), str(e), dtype=object)}


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def internal_message(path: str, stage: str, e: BaseException) -> str:
    """The ``error`` of an image whose handling raised ``e`` (names the file and the exception)."""
    return f"{path}: internal error while {stage}: {describe(e)}"


@dataclass
class FailureWatch:
    """Counts images failing in a row with one exception type; see the module docstring."""

    what: str
    min_rows: int = SYSTEMATIC_ROWS
    streak: int = 0
    kind: str | None = None

    def record(self, attempted: int, failures: Sequence[tuple[str, BaseException]]) -> None:
        """One batch: ``attempted`` images tried, ``failures`` (path, exception) of those that raised."""
        if attempted == 0:
            return
        kinds = {type(e).__name__ for _, e in failures}
        if len(failures) < attempted or len(kinds) != 1:
            self.streak, self.kind = 0, None
            return
        kind = kinds.pop()
        self.streak = self.streak + attempted if kind == self.kind else attempted
        self.kind = kind
        if self.streak >= self.min_rows:
            path, e = failures[0]
            raise SystematicFailure(
                f"{self.what}: the last {self.streak} images all failed with {describe(e)} (first: {path}): a "
                "fault of the code or the model, not of the images; stopping the run (nothing of the failed "
                "batch is written)")
