"""Scoring one prepared batch: classification, Grad-CAM, mass metrics and counterfactuals.

:class:`Scorer` is plain torch (no Ray) so it is tested and benchmarked directly; the Ray actor in
:mod:`workers.actor` only wraps it. The model is loaded once; per batch, pixels go to the device
as uint8 (4x less to transfer than float), are normalised there, and only small per-image results
come back. All math runs on the device in fp32.

Output columns (numpy, one entry per input row, errors included) follow the names of
:mod:`pipeline.schema` (plus ``_t_*`` timing columns the driver aggregates and drops); nullable ints use -1, nullable floats and booleans NaN, maps JSON strings,
``cam`` the float32 bytes of the (cam_h * cam_w) map, the embeddings float16 bytes, so Ray can move them as plain Arrow columns. The driver turns them into the Parquet schema.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.labelmaps import ClassIndex, label_sets
from workers.cam import make_cam
from workers.devdecode import decode_rows
from workers.embed import COLUMNS as EMBEDDING_COLUMNS
from workers.embed import embed, projection
from workers.faults import INTERNAL, FailureWatch, internal_message
from workers.metrics import background_color, coarse_map_warning, mass_metrics
from workers.models import LoadedModel, ModelSpec, load_model
from workers.prepare import unpack_masks

log = logging.getLogger(__name__)

FINE_KEYS = (
    "fine_layer", "fine_cam", "fine_cam_h", "fine_cam_w", "fine_object_share", "fine_object_cells",
    "fine_background_share", "fine_other_shares", "fine_pointing_hit",
)  # fmt: skip
"""The same map and metrics at the finer layer (``ScoreOptions.fine_layer``); null without one."""

RESULT_KEYS = (
    "image_id", "path", "dataset_root", "label", "label_index", "pred", "pred_index", "pred_score", "target", "target_index",
    "target_score", "correct", "feature_layer", "cam", "cam_h", "cam_w", "input_h", "input_w", "image_w",
    "image_h", "view_box", "object_share", "object_area", "object_cells", "pointing_hit", "background_share",
    "other_shares", "other_areas", "bg_color", "metric_note", "annotations", "attributes", "error", "error_kind",
    "scored_at", "cf_fill_pred", "cf_fill_score", "cf_rand_pred", "cf_rand_score", "cf_rand_donor",
    "cf_same_pred", "cf_same_score", "cf_same_donor", "cf_ctx_pred", "cf_ctx_score", "cf_ctrl_pred",
    "cf_ctrl_score", "cam_other", "embedding", "embedding_off", "embedding_on",
) + FINE_KEYS  # fmt: skip

COMPILED_PREFIX = "_orig_mod."
_AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_autocast(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA (maps and metrics stay fp32), plain fp32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _AUTOCAST[name]


LabelMapItems = tuple[tuple[str, tuple[int | str, ...]], ...]


@dataclass(frozen=True)
class ScoreOptions:
    """How a worker scores: CAM method and layer, target, device and numeric options.

    ``layout``/``prefix_tokens`` tell the engine how to read feature maps (``auto``: recognised; see
    :mod:`workers.cam`); ``label_map`` sends dataset labels to sets of model classes (label ->
    class indices or names; see :mod:`common.labelmaps`); ``fine_layer`` adds a second map at that
    layer, computed in the same pass, with its own metrics (the ``fine_*`` columns).
    """

    cam: str = "gradcam"
    layer: str | None = None
    target: str = "predicted"  # or "label"
    device: str = "auto"
    autocast: str = "auto"
    counterfactual: bool = False
    fill: str = "mean"  # mean (the normalisation mean: a zero input) | gray | black
    compile: bool = False
    layout: str = "auto"
    prefix_tokens: int | None = None
    label_map: LabelMapItems | None = None
    fine_layer: str | None = None
    both_maps: bool = False  # also store the map of the other class of (pred, label) where they differ
    embedding: bool = True  # pooled CAM-layer features per image (workers.embed), for slice discovery
    embedding_dim: int = 128  # random projection to this many dimensions when the layer has more channels
    embedding_seed: int = 0  # seed of that projection


def pick_device(want: str) -> torch.device:
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("execution.device is 'cuda' but this worker sees no CUDA device")
    return torch.device(want)


class Scorer:
    """Loads one model once and scores prepared batches (see :mod:`workers.prepare`)."""

    def __init__(self, spec: ModelSpec, opts: ScoreOptions, loaded: LoadedModel | None = None) -> None:
        self.opts = opts
        self.device = pick_device(opts.device)
        self.model = loaded or load_model(spec, self.device)
        module = self.model.module
        if self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        layer, fine = opts.layer, opts.fine_layer
        if opts.compile:
            # torch.compile wraps the model: its submodules are named "_orig_mod.<name>" (hooks still
            # run, at a graph break); layer names in and out stay those of the plain model.
            module = torch.compile(module)
            layer = f"{COMPILED_PREFIX}{layer}" if layer else None
            fine = f"{COMPILED_PREFIX}{fine}" if fine else None
        autocast = resolve_autocast(opts.autocast, self.device)
        self.autocast = autocast
        self.cam = make_cam(opts.cam, module, layer=layer, autocast=autocast, layout=opts.layout,
                            prefix_tokens=opts.prefix_tokens, extra_layers=(fine,) if fine else ())
        self.module = module
        pre = self.model.preprocess
        self.h, self.w = pre.size
        self.mean255 = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std255 = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.fill255 = {"mean": self.mean255, "gray": torch.full_like(self.mean255, 127.5),
                        "black": torch.zeros_like(self.mean255)}[opts.fill]
        self.classes = list(self.model.classes)
        self._index = ClassIndex(self.classes)
        try:
            self._sets = label_sets({k: tuple(v) for k, v in opts.label_map} if opts.label_map else None,
                                    self.classes)
        except ValueError as e:
            raise ValueError(f"model {spec.name!r}: {e}") from None
        self._warned_coarse = False
        self._projections: dict[int, torch.Tensor | None] = {}  # channels -> fixed projection (embeddings)
        self._watch = FailureWatch(f"model {spec.name!r}")

    # -- helpers -------------------------------------------------------------------------------

    def class_of(self, label: str) -> int:
        """Model output index of a dataset class name: exact match first, then case/spacing-insensitive."""
        return self._index.index(label)

    def classes_of(self, label: str) -> tuple[int, ...]:
        """The model classes a dataset label stands for: its ``label_map`` set, else its class name."""
        if label in self._sets:
            return self._sets[label]
        i = self.class_of(label)
        return (i,) if i >= 0 else ()

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the device -> normalised (N, 3, H, W) float32."""
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean255) / self.std255
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            out = self.module(x)
        return torch.softmax(out.float(), dim=1)

    # -- the batch -----------------------------------------------------------------------------

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        n = len(batch["image_id"])
        out = _empty_columns(n, batch)
        out["input_h"][:] = self.h
        out["input_w"][:] = self.w
        error = out["error"]
        kind = out["error_kind"]
        sets: list[tuple[int, ...]] = [()] * n
        for i in range(n):
            if error[i] is not None:
                continue
            label = batch["label"][i]
            if isinstance(label, str) and label:
                sets[i] = self.classes_of(label)
                if not sets[i]:
                    error[i] = (f"{batch['path'][i]}: label {label!r} is not a class of model "
                                f"{self.model.spec.name!r} ({len(self.classes)} classes) and label_map "
                                "does not map it")
                    kind[i] = "unknown_label"
            elif self.opts.target == "label":
                error[i], kind[i] = f"{batch['path'][i]}: no label, but target is 'label'", "no_label"
        ok = np.flatnonzero(np.array([e is None for e in error], dtype=bool))
        if len(ok):
            self._score_isolated(batch, ok, out, sets)
        out["scored_at"][:] = int(time.time() * 1000)
        # Timing columns (dropped before Parquet): seconds per row, summed by the driver.
        out["_t_score"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        if "_t_prepare" in batch:
            out["_t_prepare"] = np.asarray(batch["_t_prepare"], dtype=np.float64)
        return out

    def _score_isolated(self, batch: dict[str, Any], ok: np.ndarray, out: dict[str, np.ndarray],
                        sets: list[tuple[int, ...]]) -> None:
        """:meth:`_score` the batch; if it raises, score its images one by one, so an exception on one
        image becomes that image's ``internal`` error row (:mod:`workers.faults`) and costs no other."""
        try:
            self._score(batch, ok, out, sets)
            self._watch.record(len(ok), [])
            return
        except Exception as e:  # noqa: BLE001 - isolated below, one image at a time
            if len(ok) == 1:
                failures = [self._failed(batch, int(ok[0]), out, e)]
                self._watch.record(1, failures)
                return
            log.warning("model %s: a batch of %d images raised %s: %s; scoring them one by one",
                        self.model.spec.name, len(ok), type(e).__name__, e)
        failures = []
        for i in ok:
            try:
                self._score(batch, np.array([i]), out, sets)
            except Exception as e:  # noqa: BLE001 - this image's error row
                failures.append(self._failed(batch, int(i), out, e))
        self._watch.record(len(ok), failures)

    def _failed(self, batch: dict[str, Any], i: int, out: dict[str, np.ndarray],
                e: BaseException) -> tuple[str, BaseException]:
        """Row ``i`` back to empty, with the exception as its error."""
        blank = _empty_columns(1, {k: np.asarray(batch[k], dtype=object)[i:i + 1] for k in _PASSED if k in batch})
        for k, v in blank.items():
            out[k][i] = v[0]
        out["input_h"][i], out["input_w"][i] = self.h, self.w
        path = str(batch["path"][i])
        out["error"][i] = internal_message(path, f"scoring it with model {self.model.spec.name!r}", e)
        out["error_kind"][i] = INTERNAL
        return path, e

    def _decode_on_device(self, batch: dict[str, Any], ok: np.ndarray, pixels: torch.Tensor,
                          out: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        """Decode the JPEG bytes the prepare stage left for us (:mod:`workers.devdecode`) into
        ``pixels``. Returns the rows still scorable and their pixels: an image whose body turns out
        corrupt becomes an error row, without costing the others."""
        enc = batch.get("encoded")
        if enc is None:
            return ok, pixels
        pixels = pixels.clone()  # the host batch may be a read-only view
        bad = decode_rows(enc, batch["geometry"], batch["path"], ok, pixels, self.device, (self.h, self.w))
        if not bad:
            return ok, pixels
        for j, msg in bad.items():
            out["error"][ok[j]], out["error_kind"][ok[j]] = msg, "corrupt"
        keep = np.array([j not in bad for j in range(len(ok))])
        return ok[keep], pixels[torch.as_tensor(keep, device=pixels.device)]

    def _label_mask(self, sets: list[tuple[int, ...]], ok: np.ndarray) -> torch.Tensor:
        """``(n, classes)`` bool: the model classes each row's label stands for (all False: no label)."""
        mask = np.zeros((len(ok), len(self.classes)), dtype=bool)
        for j, i in enumerate(ok):
            mask[j, list(sets[i])] = True
        return torch.from_numpy(mask).to(self.device)

    def _score(self, batch: dict[str, Any], ok: np.ndarray, out: dict[str, np.ndarray],
               sets: list[tuple[int, ...]]) -> None:
        dev = self.device
        px = batch["pixels"]  # a device tensor when workers.multi decoded it once for several models
        pixels = px[torch.as_tensor(ok, device=px.device)] if isinstance(px, torch.Tensor) \
            else self._to_device(np.asarray(px)[ok])
        ok, pixels = self._decode_on_device(batch, ok, pixels, out)
        if not len(ok):
            return
        x = self._normalise(pixels)
        in_label = self._label_mask(sets, ok)
        targets = None
        if self.opts.target == "label":
            # The label's highest-scoring class: max over its set routes the gradient to that logit only.
            targets = lambda logits: logits.float().masked_fill(~in_label, float("-inf")).amax(dim=1)
        res = self.cam(x, targets=targets)
        maps = res.maps.float()
        logits = res.logits.float()
        probs = torch.softmax(logits, dim=1)
        pred_score, pred = probs.max(dim=1)
        has_label = in_label.any(dim=1)
        label_best = logits.masked_fill(~in_label, float("-inf")).argmax(dim=1)
        tgt = label_best if self.opts.target == "label" else pred
        tgt_score = probs.gather(1, tgt.view(-1, 1)).squeeze(1)
        correct = in_label.gather(1, pred.view(-1, 1)).squeeze(1)
        other_rows, other_maps = (self._other_maps(x, has_label & ~correct, torch.where(tgt == pred, label_best, pred))
                                  if self.opts.both_maps else (np.zeros(0, np.int64), None))

        # Masks: (K_i, H, W) per image, padded to K = max K_i; mask 0 is the target when present.
        names = [json.loads(batch["mask_names"][i]) for i in ok]
        has_target = np.asarray(batch["has_target"], dtype=bool)[ok]
        k_max = max((len(nm) for nm in names), default=0)
        n, h, w = len(ok), self.h, self.w
        planes = np.zeros((n, max(k_max, 1), h, w), np.uint8)
        for j, i in enumerate(ok):
            k = len(names[j])
            if k:
                planes[j, :k] = unpack_masks(batch["masks"][i], k, h, w)
        m = self._to_device(planes).float() / 255.0
        ht = torch.as_tensor(has_target, device=dev)
        target_mask = torch.where(ht.view(-1, 1, 1), m[:, 0], torch.zeros_like(m[:, 0]))
        other_start = torch.as_tensor(has_target.astype(np.int64), device=dev)
        n_other = [len(nm) - int(t) for nm, t in zip(names, has_target, strict=True)]
        k_other = max(n_other, default=0)
        if k_other:
            idx = (other_start.view(-1, 1) + torch.arange(k_other, device=dev).view(1, -1)).clamp(max=m.shape[1] - 1)
            others = m.gather(1, idx.view(n, k_other, 1, 1).expand(n, k_other, h, w))
            valid = torch.arange(k_other, device=dev).view(1, -1) < torch.as_tensor(n_other, device=dev).view(-1, 1)
            others = others * valid.view(n, k_other, 1, 1)
        else:
            others = m.new_zeros((n, 0, h, w))
            valid = torch.zeros((n, 0), dtype=torch.bool, device=dev)
        mm = mass_metrics(maps, target_mask, ht, others, valid)
        fine = next(iter(res.extra.items()), None)
        fm = mass_metrics(fine[1].float(), target_mask, ht, others, valid) if fine is not None else None
        fg = m.amax(dim=1) if k_max else m.new_zeros((n, h, w))
        bg = background_color(pixels.permute(0, 3, 1, 2), fg)

        cf: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.opts.counterfactual:
            cf = self._counterfactuals(batch, ok, pixels, target_mask, has_target, tgt)

        emb = self._embeddings(res, maps, target_mask, ht) if self.opts.embedding else {}

        if not self._warned_coarse and not self.opts.fine_layer:  # with a fine layer, the finer map is audited too
            msg = coarse_map_warning(mm.object_cells[ht], (maps.shape[1], maps.shape[2]))
            if msg:
                log.warning("model %s, layer %s: %s", self.model.spec.name, res.layer.removeprefix(COMPILED_PREFIX), msg)
            self._warned_coarse = True

        # One device->host copy per tensor.
        cpu = {k: v.detach().float().cpu().numpy() for k, v in {
            "pred_score": pred_score, "target_score": tgt_score, "bg_color": bg}.items()}
        pred_np = pred.cpu().numpy()
        tgt_np = tgt.cpu().numpy()
        label_np = torch.where(has_label, label_best, -1).cpu().numpy()
        correct_np = torch.where(has_label, correct.float(), float("nan")).cpu().numpy()
        for key in ("pred_score", "target_score", "bg_color"):
            out[key][ok] = cpu[key]
        out["pred_index"][ok] = pred_np
        out["target_index"][ok] = tgt_np
        out["label_index"][ok] = label_np
        out["correct"][ok] = correct_np
        others = [nm[1:] if t else nm for nm, t in zip(names, has_target, strict=True)]
        _map_columns(out, ok, others, "", "feature_layer", res.layer.removeprefix(COMPILED_PREFIX), maps, mm,
                     ("object_share", "object_area", "object_cells", "pointing_hit", "background_share"),
                     ("other_shares", "other_areas"))
        out["metric_note"][ok] = mm.reason
        for j, i in enumerate(ok):
            out["pred"][i] = self.classes[pred_np[j]]
            out["target"][i] = self.classes[tgt_np[j]]
            g = json.loads(batch["geometry"][i])
            out["image_w"][i], out["image_h"][i] = g["src_w"], g["src_h"]
            out["view_box"][i] = g["box"]
        if fine is not None and fm is not None:  # the fine_* columns: the finer map and its metrics, same masks
            _map_columns(out, ok, others, "fine_", "fine_layer", fine[0].removeprefix(COMPILED_PREFIX), fine[1], fm,
                         ("object_share", "object_cells", "background_share", "pointing_hit"), ("other_shares",))
        if other_maps is not None:
            for j, m in zip(other_rows.tolist(), other_maps.reshape(len(other_rows), -1).cpu().numpy(), strict=True):
                out["cam_other"][ok[j]] = m.tobytes()  # float32 already
        for key, e in emb.items():  # float16 bytes per row, None where the pool is undefined
            e_np = e.to(torch.float16).cpu().numpy()
            bad = np.isnan(e_np).any(axis=1)
            for j, i in enumerate(ok):
                out[key][i] = None if bad[j] else e_np[j].tobytes()
        for key, (p, s) in cf.items():
            p_np, s_np = p.cpu().numpy(), s.float().cpu().numpy()
            for j, i in enumerate(ok):
                if p_np[j] >= 0:
                    out[f"cf_{key}_pred"][i] = self.classes[p_np[j]]
                    out[f"cf_{key}_score"][i] = s_np[j]
                    if key in ("rand", "same"):
                        out[f"cf_{key}_donor"][i] = batch[f"cf_{key}_id"][i]

    def _other_maps(self, x: torch.Tensor, wrong: torch.Tensor,
                    other: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
        """Where the prediction is none of the label's classes: the map of whichever of the two the CAM
        did not explain (``other``: the label's best class under ``target: predicted``, the prediction
        under ``target: label``).

        Returns (row positions within the batch's scored rows, their maps ``(k, h, w)``, or None).
        """
        rows = torch.nonzero(wrong).squeeze(1)
        if rows.numel() == 0:
            return np.zeros(0, np.int64), None
        return rows.cpu().numpy(), self.cam(x[rows], targets=other[rows]).maps.float()
    def _embeddings(self, res: Any, maps: torch.Tensor, target_mask: torch.Tensor,
                    has_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CAM layer's pooled, off-object and on-object embeddings (:mod:`workers.embed`), from the
        activations the engine already holds: no extra forward."""
        if res.activations is None:
            raise RuntimeError(f"CAM method {self.opts.cam!r} returns no activations; set embedding.enabled: false")
        c = int(res.activations.shape[1])
        if c not in self._projections:
            p = projection(c, self.opts.embedding_dim, self.opts.embedding_seed)
            self._projections[c] = None if p is None else p.to(self.device)
        return embed(res.activations, maps, target_mask, has_target, self._projections[c]).columns()

    def _counterfactuals(self, batch: dict[str, Any], ok: np.ndarray, pixels: torch.Tensor, t: torch.Tensor,
                         has_target: np.ndarray, tgt: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Predictions on the counterfactual images the prepare stage planned (see :mod:`workers.prepare`).

        Object kept, background replaced (Xiao et al. 2020): by a neutral fill, by another class's
        background (Mixed-Rand), by a same-class one (Mixed-Same). Context ablation: the other
        annotated objects removed (``ctx``), or same-size patches of plain background (``ctrl``), by
        applying the prepared fill maps as one gather. Returns per kind (pred index, -1 where not
        applicable; target probability, NaN there); only the applicable rows are forwarded.
        """
        x = pixels.permute(0, 3, 1, 2).float()
        keep = t.unsqueeze(1)

        def host(column: str, rows: np.ndarray) -> torch.Tensor:
            return self._to_device(np.asarray(batch[column])[ok[rows]])

        def over(bg: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return keep[r] * x[r] + (1 - keep[r]) * bg

        plans = {"fill": (has_target, lambda rows, r: over(self.fill255, r))}
        for kind in ("rand", "same"):
            if f"cf_{kind}_bg" in batch:
                plans[kind] = (np.asarray(batch[f"cf_{kind}_ok"], dtype=bool)[ok] & has_target,
                               lambda rows, r, k=kind: over(host(f"cf_{k}_bg", rows).permute(0, 3, 1, 2).float(), r))
        for kind in ("ctx", "ctrl"):
            if f"cf_{kind}_index" in batch:
                plans[kind] = (np.asarray(batch[f"cf_{kind}_ok"], dtype=bool)[ok],
                               lambda rows, r, k=kind: fill_by_index(x[r], host(f"cf_{k}_index", rows)))
        result = {}
        for kind, (valid, build) in plans.items():
            pred = torch.full_like(tgt, -1)
            score = torch.full(tgt.shape, float("nan"), device=self.device)
            rows = np.flatnonzero(valid)
            if len(rows):
                r = torch.as_tensor(rows, device=self.device)
                xn = (build(rows, r) - self.mean255) / self.std255
                if self.device.type == "cuda":
                    xn = xn.contiguous(memory_format=torch.channels_last)
                probs = self._predict(xn)
                pred[r] = probs.argmax(1)
                score[r] = probs.gather(1, tgt[r].view(-1, 1)).squeeze(1)
            result[kind] = (pred, score)
        return result


def fill_by_index(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Apply fill maps of :func:`common.counterfactual.fill_index` on the device: ``x`` (N, C, H, W),
    ``index`` (N, H, W) int (-1 keeps the pixel, else the flat source pixel ``y * W + x``)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    idx = index.reshape(n, 1, h * w).long()
    filled = flat.gather(2, idx.clamp(min=0).expand(n, c, h * w))
    return torch.where(idx >= 0, filled, flat).reshape(n, c, h, w)


def _map_columns(out: dict[str, np.ndarray], ok: np.ndarray, others: list[list[str]], prefix: str, layer_column: str,
                 layer: str, maps: torch.Tensor, mm: Any, keys: tuple[str, ...], per_object: tuple[str, ...]) -> None:
    """One map's columns (``prefix`` ``""`` for the CAM layer, ``"fine_"`` for the finer one): its
    float32 bytes and grid, the layer's name, the metrics ``keys`` and, as JSON keyed by object
    category (``others``: each row's non-target mask names), the per-object metrics ``per_object``."""
    n = len(ok)
    cam_np = maps.float().reshape(n, -1).cpu().numpy()
    cpu = {k: getattr(mm, k).detach().float().cpu().numpy() for k in (*keys, *per_object)}
    out[f"{prefix}cam_h"][ok], out[f"{prefix}cam_w"][ok] = maps.shape[1], maps.shape[2]
    out[layer_column][ok] = layer
    for key in keys:
        out[f"{prefix}{key}"][ok] = cpu[key]
    for j, i in enumerate(ok):
        out[f"{prefix}cam"][i] = cam_np[j].tobytes()
        for key in per_object:
            out[f"{prefix}{key}"][i] = json.dumps({c: _f(cpu[key][j, q]) for q, c in enumerate(others[j])})


def _f(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)


_PASSED = ("image_id", "path", "dataset_root", "label", "objects", "attributes", "error", "error_kind")


def _empty_columns(n: int, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    obj = lambda: np.full(n, None, dtype=object)
    nan = lambda: np.full(n, np.nan, dtype=np.float32)
    neg = lambda: np.full(n, -1, dtype=np.int32)
    out: dict[str, Any] = {
        "image_id": np.asarray(batch["image_id"], dtype=object),
        "path": np.asarray(batch["path"], dtype=object),
        "dataset_root": np.asarray(batch.get("dataset_root", [None] * n), dtype=object),
        "label": np.asarray(batch["label"], dtype=object),
        "annotations": np.asarray(batch.get("objects", [None] * n), dtype=object),
        "attributes": np.asarray(batch.get("attributes", [None] * n), dtype=object),
        "error": np.array(list(batch.get("error", [None] * n)), dtype=object),
        "error_kind": np.array(list(batch.get("error_kind", [None] * n)), dtype=object),
        "label_index": neg(), "pred_index": neg(), "target_index": neg(),
        "pred": obj(), "target": obj(), "feature_layer": obj(), "metric_note": obj(),
        "other_shares": obj(), "other_areas": obj(),
        "pred_score": nan(), "target_score": nan(), "correct": nan(), "pointing_hit": nan(),
        "object_share": nan(), "object_area": nan(), "object_cells": nan(), "background_share": nan(),
        "cam": obj(), "cam_other": obj(), "cam_h": np.zeros(n, np.int16), "cam_w": np.zeros(n, np.int16),
        "input_h": np.zeros(n, np.int16), "input_w": np.zeros(n, np.int16),
        "image_w": neg(), "image_h": neg(),
        "view_box": np.full((n, 4), np.nan, np.float32), "bg_color": np.full((n, 3), np.nan, np.float32),
        "scored_at": np.zeros(n, np.int64),
    }
    for kind in ("fill", "rand", "same", "ctx", "ctrl"):
        out[f"cf_{kind}_pred"] = obj()
        out[f"cf_{kind}_score"] = nan()
    out["cf_rand_donor"], out["cf_same_donor"] = obj(), obj()
    out.update(fine_layer=obj(), fine_cam=obj(), fine_other_shares=obj(), fine_cam_h=np.zeros(n, np.int16),
               fine_cam_w=np.zeros(n, np.int16), fine_object_share=nan(), fine_object_cells=nan(),
               fine_background_share=nan(), fine_pointing_hit=nan())
    for key in EMBEDDING_COLUMNS:
        out[key] = obj()
    # Normalise error strings: Ray may hand NaN/"" for missing values.
    for key in ("error", "error_kind"):
        out[key] = np.array([v if isinstance(v, str) and v else None for v in out[key]], dtype=object)
    return out

