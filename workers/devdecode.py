"""JPEG bytes -> model-sized pixels on the actor's device (nvJPEG on a GPU, libjpeg-turbo on the CPU).

The prepare stage leaves plain JPEGs as bytes (``encoded``) with their planned geometry; this
decodes them in one batched call, applies EXIF orientation, then crops and resizes each with the
same geometry the CPU path uses. A body that turns out corrupt fails the batched call: the images
are then decoded one by one, so only the bad one becomes an error row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch


def decode_rows(encoded: Sequence[Any], geometry: Sequence[Any], paths: Sequence[Any], rows: Sequence[int],
                pixels: torch.Tensor, device: torch.device, size: tuple[int, int]) -> dict[int, str]:
    """Decode ``encoded[i]`` for each ``i`` in ``rows`` into ``pixels[j]`` (``j``: its position in
    ``rows``; ``pixels`` (len(rows), H, W, 3) uint8 on ``device``). Rows without bytes are left as
    they are. Returns {position in rows: error message} for the JPEGs that could not be decoded."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import resized_crop

    todo = [j for j, i in enumerate(rows) if isinstance(encoded[i], bytes | bytearray)]
    if not todo:
        return {}
    data = [torch.frombuffer(bytearray(encoded[rows[j]]), dtype=torch.uint8) for j in todo]
    try:
        imgs: list[torch.Tensor | None] = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                                                           apply_exif_orientation=True))
    except RuntimeError:
        imgs = []  # one bad image fails the batched call: retry one by one to find it
        for d in data:
            try:
                imgs.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                imgs.append(None)
    bad: dict[int, str] = {}
    h, w = size
    for j, img in zip(todo, imgs, strict=True):
        i = rows[j]
        if img is None:
            bad[j] = f"{paths[i]}: JPEG data is corrupt (device decode failed)"
            continue
        geom = json.loads(geometry[i])
        x0, y0, x1, y1 = geom["box"]
        top, left = round(y0), round(x0)
        mode = InterpolationMode.BICUBIC if geom.get("interpolation") == "bicubic" else InterpolationMode.BILINEAR
        crop = resized_crop(img, top, left, max(1, round(y1) - top), max(1, round(x1) - left),
                            [h, w], interpolation=mode, antialias=True)
        pixels[j] = crop.permute(1, 2, 0)
    return bad
