"""Per-image mass metrics: how much of a Grad-CAM map's mass falls on the object, on other
annotated objects and on the background.

Raw (ReLU'd, unnormalised) maps ``(N, h, w)`` are upsampled bilinearly to the input grid
``(H, W)`` the masks live on. Each pixel's unit weight is then partitioned: the target mask ``t``
takes its share first, the other categories follow in order of increasing area (a small object on a
large one is the more specific explanation), each taking ``min(mask_c, remaining)``, and the
background keeps what is left. With ``up`` the upsampled map::

    object_share     = sum(up * t) / sum(up)          # Relevance Mass Accuracy (Arras et al., 2022)
    other_shares[c]  = sum(up * w_c) / sum(up)
    background_share = sum(up * remaining) / sum(up)  # object + others + background == 1
    pointing_hit     = t[argmax(up)] > 0.5            # Pointing Game (Zhang et al., 2018)

``object_area = mean(t)`` is what a uniform map would score as ``object_share``, the baseline the
share is judged against. Undefined values are NaN with a reason, never a made-up number:

- ``nonfinite_map``: the map has NaN/inf (a broken forward/backward pass); every value is NaN.
- ``zero_map``: the map is all zero; every share and the pointing hit are NaN (areas are kept).
- ``no_object_mask``: the image's label has no annotation; object share/area/pointing/background
  are NaN, other shares are still computed.
- ``empty_object_mask``: the label is annotated but covers nothing of the input (e.g. cropped away);
  object share and pointing are NaN, ``object_area`` is 0.

Everything runs in one vectorised float32 pass on the maps' device.

>>> m = mass_metrics(maps, target, has_target, others, other_valid)       # doctest: +SKIP
>>> m.object_share, m.reason                                              # doctest: +SKIP
(tensor([0.6250, nan]), [None, 'zero_map'])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_OBJECT_CELLS = 4.0
"""Below this many feature cells per object (median over the run) a Grad-CAM map is too coarse.

A map is piecewise bilinear between cell centres, so an object only a couple of cells across gets
its mass smeared over the neighbouring cells by upsampling alone: ``object_share`` then measures the
layer's resolution rather than what the model attends to. Measured on the synthetic benchmark
(CALIBRATION.md): with objects of ~2.6 cells (a 4x4 map) the fair models' chance-corrected object
score halves against ~10.6 cells (8x8) and approaches the biased models'.
"""

REASONS = ("nonfinite_map", "zero_map", "no_object_mask", "empty_object_mask")


@dataclass
class MassMetrics:
    """Per-image metrics as tensors on the maps' device, shape ``(N,)`` unless noted.

    ``other_shares``/``other_areas`` are ``(N, K)`` in the caller's category order; padded slots
    (``other_valid`` False) are NaN. ``reason`` is ``None`` for a fully defined row, else one of
    :data:`REASONS` (the first that applies, in that order).
    """

    object_share: Tensor
    object_area: Tensor
    pointing_hit: Tensor
    background_share: Tensor
    other_shares: Tensor
    other_areas: Tensor
    object_cells: Tensor
    reason: list[str | None]


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) upsampling of ``(N, h, w)`` maps to ``(N, H, W)`` float32, >= 0."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {tuple(maps.shape)}")
    x = maps[:, None].to(torch.float32)
    up = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return up[:, 0].clamp_min(0.0)


def _check_inputs(
    maps: Tensor, target: Tensor, has_target: Tensor, others: Tensor, other_valid: Tensor
) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {tuple(maps.shape)}")
    n = maps.shape[0]
    if target.dim() != 3 or target.shape[0] != n:
        raise ValueError(f"target must be (N, H, W) with N = {n}, got shape {tuple(target.shape)}")
    hw = tuple(target.shape[1:])
    if tuple(has_target.shape) != (n,):
        raise ValueError(f"has_target must be (N,) = ({n},), got shape {tuple(has_target.shape)}")
    if others.dim() != 4 or others.shape[0] != n or tuple(others.shape[2:]) != hw:
        raise ValueError(
            f"others must be (N, K, H, W) = ({n}, K, {hw[0]}, {hw[1]}), got shape {tuple(others.shape)}"
        )
    if tuple(other_valid.shape) != tuple(others.shape[:2]):
        raise ValueError(
            f"other_valid must be (N, K) = {tuple(others.shape[:2])}, got shape {tuple(other_valid.shape)}"
        )


def mass_metrics(
    maps: Tensor, target: Tensor, has_target: Tensor, others: Tensor, other_valid: Tensor
) -> MassMetrics:
    """Object / other-category / background mass shares of each map (see the module docstring).

    ``maps`` ``(N, h, w)`` raw CAMs; ``target`` ``(N, H, W)`` soft mask in [0, 1]; ``has_target``
    ``(N,)`` bool; ``others`` ``(N, K, H, W)`` soft masks padded with zeros, ``other_valid``
    ``(N, K)`` bool marking the real ones (``K`` may be 0).
    """
    _check_inputs(maps, target, has_target, others, other_valid)
    dev = maps.device
    n, h, w = maps.shape
    hw = (int(target.shape[1]), int(target.shape[2]))
    nan = torch.tensor(float("nan"), device=dev)

    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    up = upsample_maps(torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0), hw)  # bad rows -> NaN below
    total = up.sum(dim=(1, 2))
    has_t = has_target.to(device=dev, dtype=torch.bool)
    t = target.to(device=dev, dtype=torch.float32).clamp(0.0, 1.0) * has_t[:, None, None]
    remaining = 1.0 - t

    valid = other_valid.to(device=dev, dtype=torch.bool)
    o = others.to(device=dev, dtype=torch.float32).clamp(0.0, 1.0) * valid[:, :, None, None]
    k = o.shape[1]
    raw_area = o.mean(dim=(2, 3)) if k else torch.zeros((n, 0), device=dev)
    order = torch.argsort(torch.where(valid, raw_area, torch.inf), dim=1, stable=True)
    other_mass = torch.zeros((n, k), device=dev)
    other_area = torch.zeros((n, k), device=dev)
    rows = torch.arange(n, device=dev)
    for j in range(k):  # over category ranks, vectorised over the batch
        c = order[:, j]
        wc = torch.minimum(o[rows, c], remaining)
        remaining = remaining - wc
        other_mass[rows, c] = (up * wc).sum(dim=(1, 2))
        other_area[rows, c] = wc.mean(dim=(1, 2))

    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    object_share = (up * t).sum(dim=(1, 2)) / safe_total
    background_share = (up * remaining).sum(dim=(1, 2)) / safe_total
    other_shares = other_mass / safe_total[:, None]
    object_area = t.mean(dim=(1, 2))
    peak = up.flatten(1).argmax(dim=1, keepdim=True)
    pointing_hit = (t.flatten(1).gather(1, peak)[:, 0] > 0.5).to(torch.float32)

    zero_map = finite & (total <= 0)
    no_map = ~finite | zero_map
    no_obj = ~has_t
    empty_obj = has_t & (t.sum(dim=(1, 2)) <= 0)

    object_share = torch.where(no_map | no_obj | empty_obj, nan, object_share)
    pointing_hit = torch.where(no_map | no_obj | empty_obj, nan, pointing_hit)
    background_share = torch.where(no_map | no_obj, nan, background_share)
    other_shares = torch.where(no_map[:, None] | ~valid, nan, other_shares)
    object_area = torch.where(~finite | no_obj, nan, object_area)
    other_areas = torch.where(~finite[:, None] | ~valid, nan, other_area)
    object_cells = object_area * float(h * w)

    code = torch.zeros(n, dtype=torch.int64, device=dev)
    for i, flag in reversed(list(enumerate((~finite, zero_map, no_obj, empty_obj), start=1))):
        code = torch.where(flag, i, code)  # first reason in REASONS order wins
    reason = [REASONS[c - 1] if c else None for c in code.tolist()]
    return MassMetrics(
        object_share=object_share,
        object_area=object_area,
        pointing_hit=pointing_hit,
        background_share=background_share,
        other_shares=other_shares,
        other_areas=other_areas,
        object_cells=object_cells,
        reason=reason,
    )


def background_color(images: Tensor, foreground: Tensor) -> Tensor:
    """Mean RGB ``(N, 3)`` float32 of each image weighted by ``1 - foreground``; NaN rows with no background.

    ``images`` ``(N, 3, H, W)`` uint8 or float in 0..255; ``foreground`` ``(N, H, W)`` soft union of
    all annotated objects.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if tuple(foreground.shape) != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"foreground must be (N, H, W) = {(images.shape[0], *images.shape[2:])}, "
            f"got shape {tuple(foreground.shape)}"
        )
    weight = 1.0 - foreground.to(device=images.device, dtype=torch.float32).clamp(0.0, 1.0)
    mass = weight.sum(dim=(1, 2))
    weighted = (images.to(torch.float32) * weight[:, None]).sum(dim=(2, 3))
    color = weighted / torch.where(mass > 0, mass, 1.0)[:, None]
    return torch.where((mass > 0)[:, None], color, torch.tensor(float("nan"), device=images.device))


def coarse_map_warning(
    object_cells: Tensor, cam_hw: tuple[int, int], min_cells: float = MIN_OBJECT_CELLS
) -> str | None:
    """A warning message when the median object covers fewer than ``min_cells`` cells of the CAM grid.

    NaN cells (images without an object mask) are ignored; ``None`` when there is nothing to warn
    about. The caller logs it once per run.
    """
    cells = object_cells.detach().flatten().to(torch.float32)
    cells = cells[torch.isfinite(cells)]
    if cells.numel() == 0:
        return None
    ranked = cells.sort().values
    median = float((ranked[(cells.numel() - 1) // 2] + ranked[cells.numel() // 2]) / 2)
    if median >= min_cells:
        return None
    h, w = cam_hw
    return (
        f"Grad-CAM map is {h}x{w}; the median object covers {median:.1f} cells, too coarse to localise it "
        "— consider a finer layer (e.g. layer3)"
    )
