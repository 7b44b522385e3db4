"""Small architectures for the synthetic cue benchmark: a ResNet from torchvision's blocks and a small ViT.

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


class _Attention(nn.Module):
    """Multi-head self-attention over tokens ``(N, T, C)`` (PyTorch's fused scaled-dot-product kernel)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class _Block(nn.Module):
    """Pre-norm transformer block, timm's names: ``norm1 -> attn``, ``norm2 -> mlp``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small hybrid vision transformer with a CLS token (Dosovitskiy et al., ICLR 2021, section 3.1
    "hybrid architecture"; timm's ``vit_*_r26_s32``): the patch tokens are the 8x8 output of
    :class:`TinyResNet`'s stem and first three stages (total stride 8), projected to ``dim``; then a
    CLS token, learned position embeddings, ``depth`` pre-norm transformer blocks and a linear head
    on the final CLS token.

    A plain patch-8 ViT (or a three-conv stem) does not learn the benchmark's shapes from a few
    thousand images in the training budget (train accuracy stays at chance); with the ResNet stages
    as tokenizer it does, and the transformer still decides which tokens reach the head, so the
    CAM questions are the ViT ones: at 64x64 the grid is 8x8 (64 patch tokens + 1 CLS,
    ``num_prefix_tokens = 1``) and, with timm's layer names (``blocks.<i>.norm1``, ``blocks.<i>.attn``,
    ``norm``, ``head``), the automatic CAM layer is ``blocks.<depth-1>.norm1``.

    Shapes: ``(N, 3, H, W) -> (N, num_classes)`` with ``H, W`` multiples of 8 up to ``img_size``.
    """

    num_prefix_tokens = 1

    def __init__(self, num_classes: int = 3, img_size: int = 64, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 2.0, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if num_classes < 1 or dim % heads or img_size % 8 or len(widths) != 3:
            raise ValueError(f"tiny_vit needs num_classes >= 1, dim divisible by heads, img_size a multiple of 8 "
                             f"and 3 stage widths; got {num_classes}, {dim}/{heads}, {img_size}, {tuple(widths)}")
        w1, w2, w3 = widths
        self.patch_embed = nn.Sequential(
            conv3x3(3, w1, stride=2), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
            _stage(w1, w1, 1, 1), _stage(w1, w2, 1, 2), _stage(w2, w3, 1, 2),
            conv1x1(w3, dim),
        )
        grid = img_size // 8
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.patch_embed.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, h*w, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed[:, : x.shape[1]])
        return self.head(self.norm(x)[:, 0])


@ARCHS.register("tiny_vit")
def tiny_vit(num_classes: int = 3, img_size: int = 64, dim: int = 64, depth: int = 2, heads: int = 4,
             mlp_ratio: float = 2.0, widths: Sequence[int] = (16, 32, 64)) -> TinyViT:
    """Build a :class:`TinyViT`; initialisation is deterministic given ``torch.manual_seed``.

    >>> tiny_vit(num_classes=3)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 3])
    """
    return TinyViT(num_classes, img_size, dim, depth, heads, mlp_ratio, tuple(widths))
