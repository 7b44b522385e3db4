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
