"""Background donors for the counterfactual test, chosen on the driver, deterministically.

For every image whose labelled object is annotated, Mixed-Rand takes the background of an image of
*another* class and Mixed-Same (the control) of a *different image of the same class* (Xiao et al.
2020, "Noise or Signal: The Role of Image Backgrounds in Object Recognition"). A neutral fill or a
pasted background flips fair models too (it is out of distribution); only the gap between the two
swaps measures reliance on the background. Donors are chosen from a hash of (seed, image id), so an
image keeps its donors across runs as long as the pool is unchanged, whatever the batch it lands in.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

DONOR_COLUMNS = ("id", "path", "label", "objects")


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


def assign_donors(manifest: pa.Table, seed: int = 0) -> pa.Table:
    """Add ``cf_{rand,same}_{id,path,label,objects}`` columns (null where no donor exists)."""
    ids = manifest.column("image_id").to_pylist()
    paths = manifest.column("path").to_pylist()
    labels = manifest.column("label").to_pylist()
    objects = manifest.column("objects").to_pylist()
    errors = manifest.column("error").to_pylist()
    eligible = np.array([e is None and has_object(o, lab) for o, lab, e in zip(objects, labels, errors, strict=True)])
    by_label: dict[str, np.ndarray] = {}
    elig_idx = np.flatnonzero(eligible)
    elig_labels = np.array([labels[i] for i in elig_idx], dtype=object)
    for lab in sorted(set(elig_labels)):
        by_label[lab] = elig_idx[elig_labels == lab]
    others_by_label = {
        lab: np.concatenate([v for k, v in by_label.items() if k != lab]) if len(by_label) > 1 else np.array([], int)
        for lab in by_label
    }
    out: dict[str, list] = {f"cf_{k}_{c}": [None] * len(ids) for k in ("rand", "same") for c in DONOR_COLUMNS}
    pos = {int(i): p for lab in by_label for p, i in enumerate(by_label[lab])}
    for i in elig_idx:
        lab = labels[i]
        for kind in ("rand", "same"):
            u = _hash_uniform(seed, ids[i], kind)
            if kind == "rand":
                pool = others_by_label[lab]
                if len(pool) == 0:
                    continue
                j = int(pool[int(u * len(pool))])
            else:
                pool = by_label[lab]
                if len(pool) < 2:
                    continue
                r = int(u * (len(pool) - 1))  # uniform over the class without the image itself
                j = int(pool[r + (r >= pos[int(i)])])
            out[f"cf_{kind}_id"][i] = ids[j]
            out[f"cf_{kind}_path"][i] = paths[j]
            out[f"cf_{kind}_label"][i] = labels[j]
            out[f"cf_{kind}_objects"][i] = objects[j]
    t = manifest
    for name, values in out.items():
        t = t.append_column(name, pa.array(values, type=pa.string()))
    return t
