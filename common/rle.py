"""COCO run-length encoding without torch or pycocotools: parse and validate the runs, decode to a mask.

The workers decode with pycocotools (the reference C implementation) but validate the runs here
first, because pycocotools writes runs without bounds checks; the dashboard, which must stay slim,
decodes with :func:`decode_rle` directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rle_counts(counts: list[int] | str | bytes) -> list[int]:
    """Run lengths of a COCO RLE: a list as is, or a compressed string (pycocotools' ``rleFrString``)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    if not isinstance(counts, str | bytes):
        raise ValueError(f"'counts' must be a list of ints or a compressed string, got {type(counts).__name__}")
    s = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("string ends inside a run length")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(s[p])!r} at offset {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_size(rle: dict[str, Any]) -> tuple[int, int]:
    size = rle.get("size")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    return int(size[0]), int(size[1])


def check_runs(runs: list[int], h: int, w: int) -> None:
    if min(runs, default=0) < 0 or sum(runs) != h * w:
        raise ValueError(f"RLE runs sum to {sum(runs)} (or go negative), expected h*w = {h * w}")


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE ``{"size": [h, w], "counts": ...}`` -> (h, w) bool mask (column-major runs, zeros first)."""
    h, w = rle_size(rle)
    runs = rle_counts(rle.get("counts", []))
    check_runs(runs, h, w)
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape((w, h)).T
