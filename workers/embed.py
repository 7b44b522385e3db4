"""Compact per-image embeddings from the CAM layer's activations, taken in the same pass.

The engine already holds the feature map ``A`` ``(N, C, h, w)`` the Grad-CAM was computed from
(:attr:`workers.cam.CAMResult.activations`), so an embedding costs a weighted sum over the cells,
not a forward. Three pools of ``A`` are stored per image, each a ``C``-vector:

- ``embedding`` = ``mean_ij A_ij``: the global average the classifier head pools (what the model's
  features hold for the whole view);
- ``embedding_off`` = ``sum_ij w_ij (1 - m_ij) A_ij / sum_ij w_ij (1 - m_ij)`` and
  ``embedding_on`` = the same with ``m_ij``, where ``w`` is the ReLU'd CAM and ``m`` the labelled
  object's mask averaged over each feature cell (area pooling of the input-resolution mask): the
  features of what the map looks at *off* the object and *on* it. Undefined (NaN) without an object
  mask, or when the map puts no mass on that side.

Slice discovery (:mod:`pipeline.analysis.slices`) clusters these, so a cue nobody annotated (a
watermark, a texture) still separates the images that carry it.

**Size.** When ``C`` exceeds ``dim``, every pool is multiplied by one fixed Gaussian random
projection ``R`` ``(C, dim)`` with entries ``N(0, 1/dim)`` drawn from a CPU ``torch.Generator``
seeded with ``seed`` (the same matrix on every worker and device): by the Johnson-Lindenstrauss
lemma squared distances survive within a factor ``1 ± eps`` with ``dim = O(log n / eps^2)``
(Dasgupta & Gupta 2003), and ``E[|xR|^2] = |x|^2``. Values are stored as float16 (clamped to its
finite range): ``3 * dim * 2`` bytes per image before compression.

>>> e = embed(res.activations, res.maps, target_mask, has_target, projection(512, 128, 0))  # doctest: +SKIP
>>> e.pooled.shape, e.off.shape                                                              # doctest: +SKIP
(torch.Size([32, 128]), torch.Size([32, 128]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FLOAT16_MAX = 65504.0
COLUMNS = ("embedding", "embedding_off", "embedding_on")


@dataclass(frozen=True)
class Embeddings:
    """``(N, D)`` float32 pools on the activations' device; NaN rows where a pool is undefined."""

    pooled: Tensor
    off: Tensor
    on: Tensor

    def columns(self) -> dict[str, Tensor]:
        return dict(zip(COLUMNS, (self.pooled, self.off, self.on), strict=True))


def projection(channels: int, dim: int, seed: int) -> Tensor | None:
    """The fixed ``(channels, dim)`` Gaussian projection (entries ``N(0, 1/dim)``), or None when
    ``channels <= dim`` (the pools are stored as they are)."""
    if channels <= dim:
        return None
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((channels, dim), generator=gen, dtype=torch.float32) / dim**0.5


def embed(acts: Tensor, maps: Tensor, target: Tensor, has_target: Tensor, proj: Tensor | None = None) -> Embeddings:
    """The three pools of ``acts`` ``(N, C, h, w)`` (see the module docstring).

    ``maps`` ``(N, h, w)`` raw ReLU'd CAMs; ``target`` ``(N, H, W)`` the labelled object's soft mask in
    [0, 1] at input resolution; ``has_target`` ``(N,)`` bool; ``proj`` an optional ``(C, D)`` matrix
    on any device.
    """
    if acts.dim() != 4:
        raise ValueError(f"activations must be (N, C, h, w), got shape {tuple(acts.shape)}")
    n, c, h, w = acts.shape
    if tuple(maps.shape) != (n, h, w):
        raise ValueError(f"maps must be (N, h, w) = ({n}, {h}, {w}) like the activations, got {tuple(maps.shape)}")
    if target.dim() != 3 or target.shape[0] != n:
        raise ValueError(f"target must be (N, H, W) with N = {n}, got shape {tuple(target.shape)}")
    if proj is not None and proj.shape[0] != c:
        raise ValueError(f"projection must be ({c}, D) for {c} channels, got {tuple(proj.shape)}")
    a = acts.float()
    cam = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    m = F.adaptive_avg_pool2d(target.float().clamp(0.0, 1.0)[:, None], (h, w))[:, 0]
    m = m * has_target.to(device=m.device, dtype=torch.bool).view(n, 1, 1)
    weights = torch.stack([torch.ones_like(cam), cam * (1.0 - m), cam * m], dim=1)  # (N, 3, h, w)
    mass = weights.sum(dim=(2, 3))  # (N, 3)
    pools = torch.einsum("nkhw,nchw->nkc", weights, a) / mass.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    if proj is not None:
        pools = pools @ proj.to(device=pools.device, dtype=pools.dtype)
    pools = pools.clamp(-FLOAT16_MAX, FLOAT16_MAX)
    defined = mass > 0
    defined[:, 1:] &= has_target.to(device=mass.device, dtype=torch.bool).view(n, 1)
    pools = torch.where(defined[..., None], pools, torch.tensor(float("nan"), device=pools.device))
    return Embeddings(pools[:, 0], pools[:, 1], pools[:, 2])
