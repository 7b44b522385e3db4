"""Embeddings pooled from the CAM layer: exact values on 2x2 maps, a loop oracle, projection, nulls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.embed import embed, projection


def _oracle(acts: np.ndarray, cam: np.ndarray, mask: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Cell by cell: (N, 3, C) pools, with the input mask averaged over each cell's pixels by hand."""
    n, c, h, w = acts.shape
    sh, sw = mask.shape[1] // h, mask.shape[2] // w
    out = np.full((n, 3, c), np.nan)
    for i in range(n):
        cell = np.array([[mask[i, y * sh:(y + 1) * sh, x * sw:(x + 1) * sw].mean() for x in range(w)]
                         for y in range(h)]) if has[i] else np.zeros((h, w))
        for k, wt in enumerate((np.ones((h, w)), cam[i] * (1 - cell), cam[i] * cell)):
            if wt.sum() > 0 and (k == 0 or has[i]):
                out[i, k] = sum(wt[y, x] * acts[i, :, y, x] for y in range(h) for x in range(w)) / wt.sum()
    return out


def test_exact_pools_on_a_two_by_two_map():
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])  # (1, C=2, 2, 2)
    cam = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])
    mask = torch.zeros(1, 4, 4)
    mask[0, 2:, 2:] = 1.0  # the object is the bottom-right cell
    e = embed(acts, cam, mask, torch.tensor([True]))
    assert e.pooled.tolist() == [[2.5, 2.0]]
    # off the object: cells (0,0) w=1 and (1,0) w=1 -> mean of A there; on it: cell (1,1) alone
    assert e.off.tolist() == [[2.0, 0.0]]
    assert e.on.tolist() == [[4.0, 8.0]]


def test_matches_a_loop_oracle_with_soft_masks():
    rng = np.random.default_rng(0)
    acts = rng.random((5, 6, 4, 4)).astype(np.float32)
    cam = rng.random((5, 4, 4)).astype(np.float32)
    cam[2] = 0.0  # a zero map: only the global pool is defined
    mask = rng.random((5, 16, 16)).astype(np.float32)
    mask[3] = 0.0  # an empty object: nothing on it
    has = np.array([True, True, True, True, False])
    e = embed(torch.from_numpy(acts), torch.from_numpy(cam), torch.from_numpy(mask), torch.from_numpy(has))
    got = np.stack([e.pooled.numpy(), e.off.numpy(), e.on.numpy()], axis=1)
    np.testing.assert_allclose(got, _oracle(acts, cam, mask, has), rtol=1e-5, atol=1e-6)
    assert np.isnan(got[2, 1:]).all() and np.isfinite(got[2, 0]).all()
    assert np.isnan(got[3, 2]).all() and np.isfinite(got[3, 1]).all()
    assert np.isnan(got[4, 1:]).all()  # no mask: no split


def test_projection_is_fixed_scaled_and_only_for_wide_layers():
    assert projection(64, 128, 0) is None
    p = projection(512, 128, 7)
    assert p.shape == (512, 128) and torch.equal(p, projection(512, 128, 7))
    assert not torch.equal(p, projection(512, 128, 8))
    assert float(p.pow(2).sum(0).mean()) == pytest.approx(512 / 128, rel=0.05)  # E|x R|^2 = |x|^2 per unit x
    acts = torch.rand(3, 512, 2, 2)
    e = embed(acts, torch.rand(3, 2, 2), torch.zeros(3, 8, 8), torch.tensor([False] * 3), p)
    torch.testing.assert_close(e.pooled, acts.mean(dim=(2, 3)) @ p)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"maps must be \(N, h, w\)"):
        embed(torch.rand(2, 3, 4, 4), torch.rand(2, 2, 2), torch.zeros(2, 8, 8), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="projection must be"):
        embed(torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4), torch.zeros(2, 8, 8), torch.tensor([True, True]),
              torch.rand(5, 2))
