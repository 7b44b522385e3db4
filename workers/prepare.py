"""The CPU stage: manifest rows -> model-sized pixels and masks, ready for the GPU actor.

Runs as stateless Ray tasks (``map_batches`` with a function), so decoding scales with the CPUs
while the actor keeps the accelerator busy. Every image that cannot be prepared becomes a row with
``error``/``error_kind`` set; nothing raises out of :func:`prepare_batch` for a bad input.

Output columns (all of length N):

- ``pixels`` (N, H, W, 3) uint8: the image after the model's geometry (zeros for error rows);
- ``masks``: bytes of K soft masks (K, H, W) uint8 (0..255), the target first when present;
- ``mask_names``: JSON list of the K categories; ``has_target``: whether mask 0 is the target;
- ``geometry``: JSON of the :class:`workers.geometry.Geometry` (source size + view box);
- ``encoded`` (only with ``device_decode``): JPEG bytes the actor decodes on its GPU, else None;
- ``cf_rand_bg`` / ``cf_same_bg`` (N, H, W, 3) uint8 donor backgrounds with the donor's own object
  painted over by its mean background colour, plus ``cf_rand_ok`` / ``cf_same_ok`` (only when the
  batch carries donor columns, i.e. counterfactuals are on).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.annotations import AnnotationError, loads
from workers.decode import DEFAULT_MAX_PIXELS, ImageError, MaskError, load_for_model, probe_jpeg, rasterize
from common.preprocess import Preprocess
from common.storage import StorageOptions, configure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    preprocess: Preprocess
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Plain JPEGs travel as bytes and are decoded by the actor on its GPU (nvJPEG); the rest here.
    device_decode: bool = False
    # How this task reaches object stores (the config's storage section; credentials from the env).
    storage: StorageOptions | None = None


@dataclass
class Prepared:
    pixels: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (K, H, W) float32 in [0, 1]
    names: list[str]
    has_target: bool
    geometry: dict[str, Any]
    encoded: bytes | None = None  # JPEG bytes to decode on the device (then pixels are zeros)


def prepare_one(path: str, label: str | None, objects_json: str | None, opts: PrepareOptions,
                device_decode: bool = False) -> Prepared:
    """Decode one image and rasterise its annotations through the same geometry. Raises ImageError.

    With ``device_decode`` a plain JPEG is not decoded here: ``encoded`` carries its bytes and
    ``pixels`` stays empty for the actor to fill on its device.
    """
    try:
        objects = loads(objects_json)
    except AnnotationError as e:
        raise MaskError("annotation", f"annotations of {path}: {e}", path) from None
    probed = probe_jpeg(path, opts.preprocess, opts.max_pixels) if device_decode else None
    if probed is not None:
        encoded, geom = probed
        pixels = np.zeros((*opts.preprocess.size, 3), np.uint8)
    else:
        encoded = None
        pixels, geom = load_for_model(path, opts.preprocess, max_pixels=opts.max_pixels)
    masks = rasterize(objects, geom, label, image_path=path)
    names: list[str] = []
    planes: list[np.ndarray] = []
    if masks.target is not None:
        names.append(label or "")
        planes.append(masks.target)
    for cat, m in sorted(masks.others.items()):
        names.append(cat)
        planes.append(m)
    h, w = pixels.shape[:2]
    stack = np.stack(planes).astype(np.float32) if planes else np.zeros((0, h, w), np.float32)
    return Prepared(pixels, stack, names, masks.target is not None, geom.to_dict(), encoded)


def donor_background(p: Prepared) -> np.ndarray:
    """The donor's pixels with its labelled object painted over by its mean background colour.

    Only the donor's *target* object is removed: its other objects are context of its class, which
    is exactly what Mixed-Rand should carry over (ImageNet-9's backgrounds keep them too).
    """
    img = p.pixels.astype(np.float32)
    if not p.has_target:
        return p.pixels
    obj = p.masks[0]
    fg = np.clip(p.masks.max(axis=0), 0, 1) if len(p.masks) else obj
    w_bg = 1.0 - fg
    if w_bg.sum() < 1e-6:
        fill = img.reshape(-1, 3).mean(0)
    else:
        fill = (img * w_bg[..., None]).reshape(-1, 3).sum(0) / w_bg.sum()
    out = img * (1.0 - obj[..., None]) + fill * obj[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _quantise(masks: np.ndarray) -> bytes:
    return np.clip(np.rint(masks * 255.0), 0, 255).astype(np.uint8).tobytes()


def unpack_masks(blob: bytes, k: int, h: int, w: int) -> np.ndarray:
    """Inverse of the packing in :func:`prepare_batch`: (K, H, W) uint8."""
    return np.frombuffer(blob, dtype=np.uint8, count=k * h * w).reshape(k, h, w)


def prepare_batch(batch: dict[str, np.ndarray], opts: PrepareOptions) -> dict[str, np.ndarray]:
    """Ray ``map_batches`` function: manifest columns in, prepared columns added.

    ``_t_prepare`` carries this batch's seconds spread over its rows (the driver sums it into the
    run record's timings: where the time goes).
    """
    t0 = time.perf_counter()
    if opts.storage is not None:
        configure(opts.storage)
    n = len(batch["image_id"])
    h, w = opts.preprocess.size
    pixels = np.zeros((n, h, w, 3), np.uint8)
    masks = np.empty(n, dtype=object)
    names = np.empty(n, dtype=object)
    has_target = np.zeros(n, dtype=bool)
    geometry = np.empty(n, dtype=object)
    encoded = np.full(n, None, dtype=object)
    error = np.array([e if isinstance(e, str) and e else None for e in batch.get("error", [None] * n)], dtype=object)
    error_kind = np.array(["annotation" if e else None for e in error], dtype=object)
    with_cf = "cf_rand_path" in batch
    if with_cf:
        cf = {k: np.zeros((n, h, w, 3), np.uint8) for k in ("cf_rand_bg", "cf_same_bg")}
        cf_ok = {k: np.zeros(n, dtype=bool) for k in ("cf_rand_ok", "cf_same_ok")}
    for i in range(n):
        masks[i] = b""
        names[i] = "[]"
        geometry[i] = None
        if error[i] is not None:
            continue
        path = str(batch["path"][i])
        label = batch["label"][i] if isinstance(batch["label"][i], str) else None
        try:
            p = prepare_one(path, label, batch["objects"][i], opts, device_decode=opts.device_decode)
        except ImageError as e:
            error[i], error_kind[i] = str(e), e.kind
            continue
        pixels[i] = p.pixels
        encoded[i] = p.encoded
        masks[i] = _quantise(p.masks)
        names[i] = json.dumps(p.names)
        has_target[i] = p.has_target
        geometry[i] = json.dumps(p.geometry)
        if with_cf and p.has_target:
            for kind in ("rand", "same"):
                dpath = batch[f"cf_{kind}_path"][i]
                if not isinstance(dpath, str) or not dpath:
                    continue
                try:
                    d = prepare_one(dpath, batch[f"cf_{kind}_label"][i], batch[f"cf_{kind}_objects"][i], opts)
                except ImageError as e:
                    # A broken donor must not cost the image its row: that counterfactual is skipped.
                    log.warning("counterfactual donor %s for %s unusable: %s", dpath, path, e)
                    continue
                if d.has_target:
                    cf[f"cf_{kind}_bg"][i] = donor_background(d)
                    cf_ok[f"cf_{kind}_ok"][i] = True
    out = dict(batch)
    out.update(pixels=pixels, masks=masks, mask_names=names, has_target=has_target, geometry=geometry,
               error=error, error_kind=error_kind)
    if opts.device_decode:
        out["encoded"] = encoded
    if with_cf:
        out.update(cf)
        out.update(cf_ok)
    out["_t_prepare"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
    return out
