"""Small architectures for the synthetic cue benchmark, built from torchvision's ResNet blocks.

:func:`tiny_resnet` trains in seconds on a laptop CPU and keeps ResNet's layer names
(``layer1`` .. ``layer4``, ``avgpool``, ``fc``) so the CAM engine's layer resolution works on it
exactly as on a torchvision ResNet. Use it as a model source::

    source: python:workers.archs:tiny_resnet
    kwargs: {widths: [16, 32, 64, 128]}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from common.registry import Registry

STAGE_STRIDES = (1, 2, 2, 2)

ARCHS: Registry[Callable[..., nn.Module]] = Registry("architecture")
"""Factories ``(num_classes=...) -> nn.Module`` that ``cueaudit train`` can build; each is also the
model source ``python:workers.archs:<name>``."""


class TinyResNet(nn.Module):
    """A four-stage ResNet with a stride-2 stem and no max-pool: total stride 16.

    At a 64x64 input the maps are ``layer1`` 32x32, ``layer2`` 16x16, ``layer3`` 8x8 and ``layer4``
    4x4. The coarse last map is deliberate: Grad-CAM on ``layer4`` can only place mass on a 4x4
    grid, a known weakness at small inputs that an audit has to surface rather than hide.

    Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(self, num_classes: int = 3, widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 1, 1)) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"tiny_resnet needs 4 widths and 4 block counts, got widths={tuple(widths)} blocks={tuple(blocks)}")
        if num_classes < 1 or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"tiny_resnet needs positive num_classes/widths/blocks, got {num_classes}, {tuple(widths)}, {tuple(blocks)}")
        self.conv1 = conv3x3(3, widths[0], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        stages = []
        for width, n_blocks, stride in zip(widths, blocks, STAGE_STRIDES, strict=True):
            stages.append(_stage(inplanes, width, n_blocks, stride))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        # torchvision's ResNet initialisation, so the model behaves like its big siblings.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(inplanes: int, planes: int, n_blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(n_blocks - 1)]
    return nn.Sequential(*layers)


@ARCHS.register("tiny_resnet")
def tiny_resnet(num_classes: int = 3, widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 1, 1)) -> TinyResNet:
    """Build a :class:`TinyResNet`; initialisation is deterministic given ``torch.manual_seed``.

    >>> tiny_resnet(num_classes=3)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 3])
    """
    return TinyResNet(num_classes=num_classes, widths=tuple(widths), blocks=tuple(blocks))
