"""The CPU stage: manifest rows -> model-sized pixels and masks, ready for the GPU actor.

Runs as stateless Ray tasks (``map_batches`` with a function), so decoding scales with the CPUs
while the actor keeps the accelerator busy. Every image that cannot be prepared becomes a row with
``error``/``error_kind`` set (an unexpected exception too: ``internal``, see :mod:`workers.faults`);
nothing raises out of :func:`prepare_batch` for a bad input.

Output columns (all of length N):

- ``pixels`` (N, H, W, 3) uint8: the image after the model's geometry (zeros for error rows);
- ``masks``: bytes of K soft masks (K, H, W) uint8 (0..255), the target first when present;
- ``mask_names``: JSON list of the K categories; ``has_target``: whether mask 0 is the target;
- ``geometry``: JSON of the :class:`common.geometry.Geometry` (source size + view box);
- ``encoded`` (only with ``device_decode``): JPEG bytes the actor decodes on its GPU, else None;
- ``cf_rand_bg`` / ``cf_same_bg`` (N, H, W, 3) uint8 donor backgrounds, every instance of the
  donor's label removed by background tiles (:func:`common.counterfactual.donor_background`), plus
  ``cf_rand_ok`` / ``cf_same_ok`` (only when the batch carries donor columns, i.e. counterfactuals
  are on); a donor whose objects leave no background to tile from is not ok;
- ``cf_ctx_index`` / ``cf_ctrl_index`` (N, H, W) int32 fill maps (:func:`common.counterfactual.fill_index`)
  that remove the image's other annotated objects / same-size patches of plain background, plus
  ``cf_ctx_ok`` / ``cf_ctrl_ok`` (only with ``PrepareOptions.context``). Maps, not images: the actor
  applies them to pixels it may have decoded itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import counterfactual as cf
from common.annotations import AnnotationError, loads
from common.decode import DEFAULT_MAX_PIXELS, ImageError, MaskError, load_for_model, probe_jpeg, rasterize
from common.preprocess import Preprocess
from common.storage import StorageOptions, configure
from workers.faults import INTERNAL, FailureWatch, SystematicFailure, describe, fatal_batch, internal_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    preprocess: Preprocess
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Plain JPEGs travel as bytes and are decoded by the actor on its GPU (nvJPEG); the rest here.
    device_decode: bool = False
    # Counterfactual construction (see common.counterfactual): box dilation, the context ablation and
    # the seed of its control's placement.
    dilation: float = cf.DEFAULT_DILATION
    context: bool = False
    seed: int = 0
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

    @property
    def target(self) -> np.ndarray | None:
        return self.masks[0] if self.has_target else None

    @property
    def others(self) -> np.ndarray:
        return self.masks[1:] if self.has_target else self.masks


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


def donor_background(p: Prepared, dilation: float = cf.DEFAULT_DILATION) -> np.ndarray | None:
    """The donor's pixels with every instance of its label removed by background tiles (None: unusable)."""
    if p.target is None:
        return None
    return cf.donor_background(p.pixels, p.target, p.others, dilation)


def _quantise(masks: np.ndarray) -> bytes:
    return np.clip(np.rint(masks * 255.0), 0, 255).astype(np.uint8).tobytes()


def unpack_masks(blob: bytes, k: int, h: int, w: int) -> np.ndarray:
    """Inverse of the packing in :func:`prepare_batch`: (K, H, W) uint8."""
    return np.frombuffer(blob, dtype=np.uint8, count=k * h * w).reshape(k, h, w)


_WATCH = FailureWatch("prepare")  # per worker process: see workers.faults


def prepare_batch(batch: dict[str, np.ndarray], opts: PrepareOptions) -> dict[str, np.ndarray]:
    """Ray ``map_batches`` function: manifest columns in, prepared columns added.

    ``_t_prepare`` carries this batch's seconds spread over its rows (the driver sums it into the
    run record's timings: where the time goes); ``_n_decodes`` the image files each row read and
    decoded (or probed, for a device decode), donors included. An exception on one image (any,
    not only a bad file's :class:`~common.decode.ImageError`) becomes that row's ``internal`` error;
    a batch whose every image raises the same way is returned as a :data:`~workers.faults.FATAL`
    marker (see :mod:`workers.faults`).
    """
    t0 = time.perf_counter()
    if opts.storage is not None:
        configure(opts.storage)
    n = len(batch["image_id"])
    h, w = opts.preprocess.size
    pixels = np.zeros((n, h, w, 3), np.uint8)
    masks = np.full(n, b"", dtype=object)
    names = np.full(n, "[]", dtype=object)
    has_target = np.zeros(n, dtype=bool)
    geometry = np.full(n, None, dtype=object)
    encoded = np.full(n, None, dtype=object)
    decodes = np.zeros(n, np.int32)
    error = np.array([e if isinstance(e, str) and e else None for e in batch.get("error", [None] * n)], dtype=object)
    error_kind = np.array(["annotation" if e else None for e in error], dtype=object)
    with_cf = "cf_rand_path" in batch
    extra: dict[str, np.ndarray] = {}
    if with_cf:
        extra.update({k: np.zeros((n, h, w, 3), np.uint8) for k in ("cf_rand_bg", "cf_same_bg")})
        extra.update({k: np.zeros(n, dtype=bool) for k in ("cf_rand_ok", "cf_same_ok")})
    if opts.context:
        extra.update({k: np.full((n, h, w), -1, np.int32) for k in ("cf_ctx_index", "cf_ctrl_index")})
        extra.update({k: np.zeros(n, dtype=bool) for k in ("cf_ctx_ok", "cf_ctrl_ok")})
    attempted = 0
    failures: list[tuple[str, BaseException]] = []
    for i in range(n):
        if error[i] is not None:
            continue
        path = str(batch["path"][i])
        attempted += 1
        counter = [0]
        try:
            p, row_extra = _prepare_row(batch, i, opts, with_cf, counter)
        except ImageError as e:
            error[i], error_kind[i] = str(e), e.kind
            decodes[i] = counter[0]
            continue
        except Exception as e:  # noqa: BLE001 - one image's exception is its error row (workers.faults)
            error[i], error_kind[i] = internal_message(path, "preparing it", e), INTERNAL
            decodes[i] = counter[0]
            failures.append((path, e))
            continue
        decodes[i] = counter[0]
        pixels[i] = p.pixels
        encoded[i] = p.encoded
        masks[i] = _quantise(p.masks)
        names[i] = json.dumps(p.names)
        has_target[i] = p.has_target
        geometry[i] = json.dumps(p.geometry)
        for k, v in row_extra.items():
            extra[k][i] = v
    try:
        _WATCH.record(attempted, failures)
    except SystematicFailure as e:
        return fatal_batch(n, e)
    out = dict(batch)
    out.update(pixels=pixels, masks=masks, mask_names=names, has_target=has_target, geometry=geometry,
               error=error, error_kind=error_kind)
    if opts.device_decode:
        out["encoded"] = encoded
    out.update(extra)
    out["_t_prepare"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
    out["_n_decodes"] = decodes
    return out


def _prepare_row(batch: dict[str, np.ndarray], i: int, opts: PrepareOptions, with_cf: bool,
                 counter: list[int]) -> tuple[Prepared, dict[str, Any]]:
    """One image, its donors' backgrounds and its ablation maps; nothing is assigned until all succeeded."""
    path = str(batch["path"][i])
    label = batch["label"][i] if isinstance(batch["label"][i], str) else None
    counter[0] += 1
    p = prepare_one(path, label, batch["objects"][i], opts, device_decode=opts.device_decode)
    h, w = opts.preprocess.size
    extra: dict[str, Any] = {}
    if with_cf and p.has_target:
        for kind in ("rand", "same"):
            dpath = batch[f"cf_{kind}_path"][i]
            if not isinstance(dpath, str) or not dpath:
                continue
            counter[0] += 1
            try:
                d = prepare_one(dpath, batch[f"cf_{kind}_label"][i], batch[f"cf_{kind}_objects"][i], opts)
            except ImageError as e:
                # A broken donor must not cost the image its row: that counterfactual is skipped.
                log.warning("counterfactual donor %s for %s unusable: %s", dpath, path, e)
                continue
            except Exception as e:  # re-raised naming the donor: the image's error row says which
                raise RuntimeError(f"counterfactual donor {dpath}: {describe(e)}") from e
            bg = donor_background(d, opts.dilation)
            if bg is not None:
                extra[f"cf_{kind}_bg"], extra[f"cf_{kind}_ok"] = bg, True
    if opts.context and len(p.others):
        rng = cf.placement_rng(opts.seed, str(batch["image_id"][i]))
        maps = cf.ablation_indices(p.target, p.others, (h, w), rng, opts.dilation)
        for kind, index in zip(("ctx", "ctrl"), maps, strict=True):
            if index is not None:
                extra[f"cf_{kind}_index"], extra[f"cf_{kind}_ok"] = index, True
    return p, extra
