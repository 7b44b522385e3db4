"""Real photos with hand-annotated object boxes: scikit-image's bundled sample images.

The boxes ship in ``cuebench/data/real_photos.json``. Each photo is written in a few views (the
original, a mirror, and crops that keep the object) so an audit of a pretrained ImageNet model has
enough images for the statistics to say something; every view's boxes are transformed with it.
Nothing is downloaded: the photos are files inside the scikit-image wheel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VIEWS = ("orig", "flip", "crop_c", "crop_tl", "crop_br", "flip_crop_c")
CROP = 0.8  # crops keep 80% of each side


def photo_specs() -> list[dict[str, Any]]:
    text = resources.files("cuebench").joinpath("data/real_photos.json").read_text()
    return json.loads(text)["photos"]


def load_photo(loader: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, loader)()
    if loader == "stereo_motorcycle":
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


@dataclass(frozen=True)
class View:
    name: str
    flip: bool
    box: tuple[float, float, float, float]  # crop window as fractions (x0, y0, x1, y1)


def views(names: tuple[str, ...] = VIEWS) -> list[View]:
    c = CROP
    table = {
        "orig": View("orig", False, (0, 0, 1, 1)),
        "flip": View("flip", True, (0, 0, 1, 1)),
        "crop_c": View("crop_c", False, ((1 - c) / 2, (1 - c) / 2, (1 + c) / 2, (1 + c) / 2)),
        "crop_tl": View("crop_tl", False, (0, 0, c, c)),
        "crop_br": View("crop_br", False, (1 - c, 1 - c, 1, 1)),
        "flip_crop_c": View("flip_crop_c", True, ((1 - c) / 2, (1 - c) / 2, (1 + c) / 2, (1 + c) / 2)),
    }
    return [table[n] for n in names]


def transform_box(b: list[float], w: int, h: int, v: View) -> list[float] | None:
    """A COCO box through mirror-then-crop; None when nothing of it is left in the view."""
    x, y, bw, bh = b
    if v.flip:
        x = w - (x + bw)
    x0, y0, x1, y1 = v.box[0] * w, v.box[1] * h, v.box[2] * w, v.box[3] * h
    nx0, ny0 = max(x, x0), max(y, y0)
    nx1, ny1 = min(x + bw, x1), min(y + bh, y1)
    if nx1 - nx0 < 1 or ny1 - ny0 < 1:
        return None
    return [round(nx0 - x0, 2), round(ny0 - y0, 2), round(nx1 - nx0, 2), round(ny1 - ny0, 2)]


def write_real_dataset(out: str | Path, view_names: tuple[str, ...] = VIEWS) -> Path:
    """Write JPEG views + ``coco.json``; returns the COCO file. Labels are ImageNet class names."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cats: dict[str, int] = {}
    images, anns = [], []
    for spec in photo_specs():
        img = load_photo(spec["loader"])
        h, w = img.shape[:2]
        for v in views(view_names):
            arr = img[:, ::-1] if v.flip else img
            x0, y0, x1, y1 = (round(v.box[0] * w), round(v.box[1] * h), round(v.box[2] * w), round(v.box[3] * h))
            crop = arr[y0:y1, x0:x1]
            fname = f"images/{spec['name']}_{v.name}.jpg"
            Image.fromarray(np.ascontiguousarray(crop)).save(out / fname, quality=92)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": fname, "width": x1 - x0, "height": y1 - y0})
            vv = View(v.name, v.flip, (x0 / w, y0 / h, x1 / w, y1 / h))
            for o in spec["objects"]:
                box = transform_box(o["bbox"], w, h, vv)
                if box is None:
                    continue
                cid = cats.setdefault(o["category"], len(cats) + 1)
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cats.items()],
            "info": {"description": "scikit-image sample photos with cueaudit's hand-annotated boxes"}}
    path = out / "coco.json"
    path.write_text(json.dumps(coco, indent=1))
    return path


def labels() -> list[str]:
    return [p["label"] for p in photo_specs()]
