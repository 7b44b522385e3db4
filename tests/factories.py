"""Tiny model factories for tests, loadable as ``python:tests.factories:<name>``."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(num_classes: int = 3, width: int = 8) -> nn.Module:
    """conv -> relu -> conv -> relu -> GAP -> linear; seeded so every worker builds the same net."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
    ))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(width, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def not_a_module() -> object:
    return object()


class _RaisesOnWhite(nn.Module):
    """tiny_cnn that raises on an (almost) white input image, a "poison" image, and works on the rest
    (normalised with ImageNet statistics, white has a mean of ~2.4, noise ~0.2, the zero input 0)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = x.flatten(1).mean(dim=1) > 1.5
        if bool(white.any()):
            raise ValueError(f"white input at batch position(s) {white.nonzero().flatten().tolist()}")
        return self.net(x)


def raises_on_white(num_classes: int = 3) -> nn.Module:
    return _RaisesOnWhite(tiny_cnn(num_classes))


class _AlwaysRaises(nn.Module):
    """Raises on every image; only the all-zero input the loader probes the output size with passes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 0).all()):
            return self.net(x)
        raise RuntimeError("this model is broken")


def always_raises(num_classes: int = 3) -> nn.Module:
    return _AlwaysRaises(tiny_cnn(num_classes))
