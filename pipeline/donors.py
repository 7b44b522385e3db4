"""Background donors for the counterfactual test, chosen on the driver, deterministically.

For every image whose labelled object is annotated, Mixed-Rand takes the background of an image of
*another* class and Mixed-Same (the control) of a *different image of the same class* (Xiao et al.
2020, "Noise or Signal: The Role of Image Backgrounds in Object Recognition"). A neutral fill or a
pasted background flips fair models too (it is out of distribution); only the gap between the two
swaps measures reliance on the background.

Donors are drawn from the **whole dataset** (:func:`assign_donors` runs on the full manifest, then
the run keeps the rows still to score), so an incremental run draws from the earlier images too.
The draw is a hash of (seed, image id) into the pool of eligible images sorted by id: it depends on
the image, the seed and the dataset, not on the order the reader lists the images in nor on the
batch the image lands in. Memory is O(images): one hash and two integer indices per image.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DONOR_COLUMNS = ("id", "path", "label", "objects")
DONOR_KINDS = ("rand", "same")


def has_object(objects_json: str | None, label: str | None) -> bool:
    """Whether the annotations hold at least one instance of the label's category."""
    if not objects_json or not label:
        return False
    try:
        return any(o.get("category") == label for o in json.loads(objects_json))
    except (json.JSONDecodeError, AttributeError, TypeError):
        return False


def _hash_uniform(seed: int, image_id: str, salt: str) -> float:
    h = hashlib.blake2b(f"{seed}|{salt}|{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def donor_indices(ids: list[str], labels: list[str | None], eligible: np.ndarray,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Per kind, the row of each image's donor (-1 where none): ``rand`` uniform over the eligible
    images of other labels, ``same`` uniform over the other eligible images of its label.

    Pools are sorted by (label, image id), so the draw is a function of the image id, the seed and
    the set of eligible images.
    """
    n = len(ids)
    out = {k: np.full(n, -1, np.int64) for k in DONOR_KINDS}
    rows = np.flatnonzero(eligible)
    if len(rows) == 0:
        return out
    lab = np.array([labels[i] for i in rows], dtype=object)
    key = np.array([ids[i] for i in rows], dtype=object)
    order = np.lexsort((key.astype(str), lab.astype(str)))  # by label, then id
    rows, lab = rows[order], lab[order]
    codes = np.unique(lab.astype(str), return_inverse=True)[1]
    counts = np.bincount(codes)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first position of each label in the pool
    pos = np.arange(len(rows)) - start[codes]  # position within its label
    own_n, others_n = counts[codes], len(rows) - counts[codes]
    u = {k: np.array([_hash_uniform(seed, ids[i], k) for i in rows]) for k in DONOR_KINDS}
    # rand: the r-th image of the pool without this label's block
    r = np.minimum((u["rand"] * others_n).astype(np.int64), np.maximum(others_n - 1, 0))
    rand_pos = r + np.where(r >= start[codes], counts[codes], 0)
    out["rand"][rows[others_n > 0]] = rows[rand_pos[others_n > 0]]
    # same: the r-th image of this label's block without the image itself
    r = np.minimum((u["same"] * (own_n - 1)).astype(np.int64), np.maximum(own_n - 2, 0))
    same_pos = start[codes] + r + (r >= pos)
    out["same"][rows[own_n > 1]] = rows[same_pos[own_n > 1]]
    return out


def assign_donors(manifest: pa.Table, seed: int = 0) -> pa.Table:
    """Add ``cf_{rand,same}_{id,path,label,objects}`` columns (null where no donor exists).

    Run it on the whole manifest, then filter the rows to score: the donors then come from the
    whole dataset whatever subset is scored.
    """
    ids = manifest.column("image_id").to_pylist()
    labels = manifest.column("label").to_pylist()
    objects = manifest.column("objects").to_pylist()
    errors = manifest.column("error").to_pylist()
    eligible = np.array([e is None and has_object(o, lab) for o, lab, e in zip(objects, labels, errors, strict=True)],
                        dtype=bool)
    t = manifest
    for kind, idx in donor_indices(ids, labels, eligible, seed).items():
        take = pa.array(np.where(idx >= 0, idx, 0), pa.int64())
        missing = pa.array(idx < 0)
        for c in DONOR_COLUMNS:
            col = manifest.column("image_id" if c == "id" else c).combine_chunks().take(take)
            t = t.append_column(f"cf_{kind}_{c}", pc.if_else(missing, pa.scalar(None, pa.string()), col.cast(pa.string())))
    return t
