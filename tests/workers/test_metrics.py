"""Mass metrics: exact values on tiny maps, a numpy oracle, and every NaN edge case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.metrics import (
    MIN_OBJECT_CELLS,
    background_color,
    coarse_map_warning,
    mass_metrics,
    upsample_maps,
)

NAN = float("nan")


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows of bilinear weights, align_corners=False (PyTorch's source index rule, clamped at 0)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        a[i, i0] += 1 - lam
        a[i, i1] += lam
    return a


def _oracle(maps, target, has_target, others, valid):
    """Independent per-image numpy implementation of the metrics (loops, float64)."""
    rows = []
    for n in range(maps.shape[0]):
        m = maps[n].astype(np.float64)
        H, W = target.shape[1:]
        up = np.clip(_interp_matrix(m.shape[0], H) @ m @ _interp_matrix(m.shape[1], W).T, 0, None)
        t = target[n] if has_target[n] else np.zeros((H, W))
        rem = 1.0 - t
        areas = [others[n, c].mean() if valid[n, c] else np.inf for c in range(others.shape[1])]
        shares = np.full(others.shape[1], np.nan)
        for c in sorted(range(others.shape[1]), key=lambda c: (areas[c], c)):
            if not valid[n, c]:
                continue
            w = np.minimum(others[n, c], rem)
            rem = rem - w
            shares[c] = (up * w).sum() / up.sum()
        rows.append(((up * t).sum() / up.sum(), (up * rem).sum() / up.sum(), shares))
    return rows


def _t(x, dtype=torch.float32):
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# A 2x2 map with all mass in the top-left cell, upsampled to 4x4: each axis gets the weights
# (1, 3/4, 1/4, 0) (source index (i + 0.5)/2 - 0.5 clamped at 0), so up = 4 * outer(v, v), sum 16.
V = np.array([1.0, 0.75, 0.25, 0.0])
MAP = np.array([[[4.0, 0.0], [0.0, 0.0]]])
TOP_LEFT = np.zeros((1, 4, 4))
TOP_LEFT[0, :2, :2] = 1
RIGHT_HALF = np.zeros((1, 1, 4, 4))
RIGHT_HALF[0, 0, :, 2:] = 1


def test_upsample_hand_values():
    up = upsample_maps(_t(MAP), (4, 4))
    np.testing.assert_array_equal(up[0].numpy(), 4 * np.outer(V, V))
    assert upsample_maps(_t([[[-1.0, 2.0]]]), (1, 2)).min() == 0  # clamped at 0


def test_hand_computed_shares():
    m = mass_metrics(_t(MAP), _t(TOP_LEFT), torch.tensor([True]), _t(RIGHT_HALF), torch.tensor([[True]]))
    # object: 4 * (1 + 3/4)^2 = 12.25 of 16; right half: 4 * 2 * (1/4 + 0) = 2; bottom-left rest: 1.75
    assert m.object_share.tolist() == [12.25 / 16]
    assert m.other_shares.tolist() == [[2 / 16]]
    assert m.background_share.tolist() == [1.75 / 16]
    assert m.object_area.tolist() == [0.25] and m.other_areas.tolist() == [[0.5]]
    assert m.pointing_hit.tolist() == [1.0]
    assert m.object_cells.tolist() == [1.0]  # a quarter of the 2x2 grid
    assert m.reason == [None]


def test_matches_numpy_oracle_with_mixed_k():
    rng = np.random.default_rng(0)
    n, k, H, W = 4, 3, 8, 10
    maps = rng.random((n, 3, 5)).astype(np.float32) - 0.2  # some negative cells, clamped after upsampling
    target = rng.random((n, H, W)).astype(np.float32) * (rng.random((n, H, W)) > 0.6)
    others = rng.random((n, k, H, W)).astype(np.float32) * (rng.random((n, k, H, W)) > 0.5)
    valid = np.array([[True, True, True], [True, False, False], [False, False, False], [True, True, False]])
    others[~valid] = 0  # padding
    has_target = np.array([True, True, True, True])
    m = mass_metrics(_t(maps), _t(target), torch.tensor(has_target), _t(others), torch.tensor(valid))
    for i, (obj, bg, shares) in enumerate(_oracle(maps, target, has_target, others, valid)):
        assert m.object_share[i].item() == pytest.approx(obj, abs=1e-5)
        assert m.background_share[i].item() == pytest.approx(bg, abs=1e-5)
        np.testing.assert_allclose(m.other_shares[i].numpy(), shares, atol=1e-5)
    total = m.object_share + m.background_share + torch.nan_to_num(m.other_shares).sum(dim=1)
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-5)
    assert torch.isnan(m.other_shares[~torch.tensor(valid)]).all()  # padded slots are not categories


def test_uniform_map_scores_the_area():
    rng = np.random.default_rng(1)
    target = rng.random((2, 6, 6)).astype(np.float32)
    m = mass_metrics(torch.full((2, 3, 3), 2.5), _t(target), torch.tensor([True, True]),
                     torch.zeros(2, 0, 6, 6), torch.zeros(2, 0, dtype=torch.bool))
    np.testing.assert_allclose(m.object_share.numpy(), m.object_area.numpy(), rtol=1e-6)
    np.testing.assert_allclose(m.background_share.numpy(), 1 - m.object_area.numpy(), rtol=1e-5)
    assert m.other_shares.shape == (2, 0) and m.other_areas.shape == (2, 0)


def test_pointing_hit_and_miss():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # peak inside the top-left object
    maps[1, 3, 3] = 1.0  # peak in the opposite corner
    target = _t(np.repeat(TOP_LEFT, 2, axis=0))
    no_others = torch.zeros(2, 0, 4, 4), torch.zeros(2, 0, dtype=torch.bool)
    m = mass_metrics(maps, target, torch.tensor([True, True]), *no_others)
    assert m.pointing_hit.tolist() == [1.0, 0.0]


def test_overlapping_others_smaller_first():
    # Uniform map, so each share equals its partitioned area. "scene" covers everything,
    # "cup" the bottom-right quadrant, the target the top-left one. Order of the inputs must not matter.
    others = np.zeros((1, 2, 4, 4))
    others[0, 0] = 1.0
    others[0, 1, 2:, 2:] = 1.0
    valid = torch.tensor([[True, True]])
    m = mass_metrics(torch.ones(1, 2, 2), _t(TOP_LEFT), torch.tensor([True]), _t(others), valid)
    assert m.object_share.tolist() == [0.25]
    assert m.other_shares.tolist() == [[0.5, 0.25]]  # scene keeps what target and cup left
    assert m.other_areas.tolist() == [[0.5, 0.25]]
    assert m.background_share.tolist() == [0.0]


def test_edge_cases_are_nan_with_reasons():
    n = 5
    maps = torch.ones(n, 2, 2)
    maps[2] = 0.0  # zero map
    maps[3, 0, 1] = NAN  # non-finite map (and no target: non-finite wins)
    target = _t(np.repeat(TOP_LEFT, n, axis=0))
    target[4] = 0.0  # annotated, but nothing of it is on the input
    has_target = torch.tensor([True, False, True, False, True])  # row 1: no object mask, others still scored
    others = _t(RIGHT_HALF).repeat(n, 1, 1, 1)
    valid = torch.ones(n, 1, dtype=torch.bool)
    m = mass_metrics(maps, target, has_target, others, valid)
    assert m.reason == [None, "no_object_mask", "zero_map", "nonfinite_map", "empty_object_mask"]

    def nan_pattern(x: torch.Tensor) -> list[bool]:
        return torch.isnan(x).reshape(n, -1).any(dim=1).tolist()

    assert nan_pattern(m.object_share) == [False, True, True, True, True]
    assert nan_pattern(m.pointing_hit) == [False, True, True, True, True]
    assert nan_pattern(m.object_area) == [False, True, False, True, False]
    assert nan_pattern(m.background_share) == [False, True, True, True, False]
    assert nan_pattern(m.other_shares) == [False, False, True, True, False]
    assert nan_pattern(m.other_areas) == [False, False, False, True, False]
    assert m.other_shares[1].tolist() == [0.5]  # uniform map, no target: right half holds half the mass
    assert m.object_area[4].item() == 0.0 and m.object_cells[4].item() == 0.0
    assert m.other_shares[4].item() + m.background_share[4].item() == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="others"):
        mass_metrics(torch.ones(2, 2, 2), torch.ones(2, 4, 4), torch.ones(2, dtype=torch.bool),
                     torch.ones(2, 1, 3, 3), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="has_target"):
        mass_metrics(torch.ones(2, 2, 2), torch.ones(2, 4, 4), torch.ones(3, dtype=torch.bool),
                     torch.ones(2, 0, 4, 4), torch.ones(2, 0, dtype=torch.bool))


def test_background_color():
    img = torch.zeros(3, 3, 2, 4, dtype=torch.uint8)
    img[:, 0, :, :2] = 255  # left half red
    img[:, 2, :, 2:] = 255  # right half blue
    fg = torch.zeros(3, 2, 4)
    fg[0, :, :2] = 1.0  # object on the red half: background is blue
    fg[1] = 0.5  # soft everywhere: plain mean
    fg[2] = 1.0  # no background at all
    color = background_color(img, fg)
    assert color.dtype == torch.float32
    assert color[0].tolist() == [0.0, 0.0, 255.0]
    assert color[1].tolist() == [127.5, 0.0, 127.5]
    assert torch.isnan(color[2]).all()
    assert torch.equal(background_color(img.float(), fg)[:2], color[:2])


def _metrics_for(cam: int, box: int, n: int = 5) -> torch.Tensor:
    target = torch.zeros(n, 224, 224)
    target[:, :box, :box] = 1.0
    maps = torch.rand(n, cam, cam, generator=torch.Generator().manual_seed(0))
    no_others = torch.zeros(n, 0, 224, 224), torch.zeros(n, 0, dtype=torch.bool)
    m = mass_metrics(maps, target, torch.ones(n, dtype=torch.bool), *no_others)
    return m.object_cells


def test_coarse_map_warning():
    tiny = _metrics_for(cam=4, box=40)  # (40/224)^2 * 16 = 0.51 cells
    msg = coarse_map_warning(tiny, (4, 4))
    assert msg is not None and msg.startswith("Grad-CAM map is 4x4; the median object covers 0.5 cells")
    assert "layer3" in msg
    big = _metrics_for(cam=14, box=120)  # (120/224)^2 * 196 = 56 cells
    assert coarse_map_warning(big, (14, 14)) is None
    assert coarse_map_warning(torch.tensor([NAN, NAN]), (4, 4)) is None
    assert coarse_map_warning(torch.tensor([1.0, 1.5, 3.0]), (7, 7)) is not None  # median 1.5
    assert coarse_map_warning(torch.tensor([3.0, 3.5, 4.5, 6.0]), (7, 7)) is None  # median (3.5 + 4.5)/2 = 4
    assert coarse_map_warning(torch.tensor([3.0, 3.5, 4.0, 6.0]), (7, 7)) is not None  # median 3.75
    assert MIN_OBJECT_CELLS == 4.0  # the gate's default min_object_cells (CALIBRATION.md)


@pytest.mark.gpu  # skipped without CUDA by tests/conftest.py
def test_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    args = (_t(rng.random((3, 7, 7))), _t(rng.random((3, 32, 32))), torch.tensor([True, False, True]),
            _t(rng.random((3, 2, 32, 32))), torch.tensor([[True, True], [True, False], [False, False]]))
    cpu = mass_metrics(*args)
    gpu = mass_metrics(*(a.cuda() for a in args))
    assert gpu.object_share.device.type == "cuda" and gpu.reason == cpu.reason
    names = ("object_share", "object_area", "pointing_hit", "background_share", "other_shares", "other_areas")
    for name in names:
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), equal_nan=True)
