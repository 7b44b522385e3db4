"""Draw docs/counterfactual.png, the README's figure of the counterfactual constructions.

Top row: a donor image, its object painted with the mean background colour (the old, leaky
construction: the silhouette stays), removed by background tiles (Only-BG-T, what cueaudit does),
and Mixed-Rand (another class's object over that background). Bottom row: an image with a
co-occurring object, that object removed (context ablation), and the control (a same-size patch of
plain background removed elsewhere). Synthetic images from cuebench.synth; numpy + Pillow only.

    python docs/counterfactual_figure.py            # rewrites docs/counterfactual.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import counterfactual as cf
from cuebench.synth import SynthConfig, render

SIZE = 112  # panel side in pixels
LABEL_H = 18


def _scene(cue: str, index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Pixels, the target's soft mask and the other objects' soft masks of one synthetic image."""
    s = render(SynthConfig(cue=cue, n=index + 1, correlation=0.6, size=SIZE, seed=7), index)
    target, *others = (inst.shape.coverage(SIZE) for inst in s.instances)
    return np.asarray(s.image), target, others


def _panel(img: np.ndarray, text: str, font: ImageFont.ImageFont) -> Image.Image:
    p = Image.new("RGB", (SIZE, SIZE + LABEL_H), "white")
    p.paste(Image.fromarray(img), (0, LABEL_H))
    ImageDraw.Draw(p).text((3, 2), text, fill="black", font=font)
    return p


def figure() -> Image.Image:
    font = ImageFont.load_default(size=12)
    donor, d_target, d_others = _scene("background", 2)  # a triangle
    image, i_target, _ = _scene("background", 0)  # a disk
    bg = cf.donor_background(donor, d_target, d_others)
    top = [(donor, "donor"), (cf.mean_colour_fill(donor, d_target, d_others), "old: mean colour"),
           (bg, "new: bg tiles"), (cf.composite(image, i_target, bg), "Mixed-Rand")]
    ctx_img, c_target, c_others = _scene("cooccur", 4)
    index, control = cf.ablation_indices(c_target, c_others, ctx_img.shape[:2], cf.placement_rng(0, "figure"))
    bottom = [(ctx_img, "with context"), (cf.apply_fill(ctx_img, index), "context removed"),
              (cf.apply_fill(ctx_img, control), "control")]
    gap = 6
    out = Image.new("RGB", (4 * SIZE + 3 * gap, 2 * (SIZE + LABEL_H) + gap), "white")
    for row, panels in enumerate((top, bottom)):
        for col, (img, text) in enumerate(panels):
            out.paste(_panel(img, text, font), (col * (SIZE + gap), row * (SIZE + LABEL_H + gap)))
    return out


if __name__ == "__main__":
    path = ROOT / "docs" / "counterfactual.png"
    figure().quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
