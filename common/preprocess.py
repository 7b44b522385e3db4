"""How an image becomes a model input: size, resize policy, normalisation. Torch-free, so the
geometry, the decoders and the slim tools share it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    ``resize="resize"`` squashes the whole image to ``size``; ``"resize_crop"`` resizes the shorter
    side to ``size / crop_pct`` and takes the centre ``size`` crop (timm's convention). Pixels are
    then scaled to [0, 1] and normalised with ``(x - mean) / std``. The same geometry is applied to
    masks and boxes (see :mod:`common.geometry`). ``interpolation`` is the resampling filter of
    that resize (antialiased, PIL's), for the image and the resampled masks alike: timm's and most
    hub models' preprocessing says ``bicubic``.
    """

    size: tuple[int, int] = (224, 224)
    resize: Literal["resize", "resize_crop"] = "resize_crop"
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocess.size must be (height, width) of positive ints, got {self.size!r}")
        if self.resize not in ("resize", "resize_crop"):
            raise ValueError(f"preprocess.resize must be 'resize' or 'resize_crop', got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"preprocess.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"preprocess.mean/std need 3 values (std > 0), got {self.mean!r} / {self.std!r}")
