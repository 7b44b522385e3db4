"""Train the small ground-truth models of the synthetic cue benchmark on CPU.

``biased`` models see a cue that follows the label (correlation :data:`BIASED_CORRELATION`) and
collapse when it is reversed; ``fair`` ones see it independent of the label (``1 / num_classes``)
and must classify by shape. Both get identical training (architecture, augmentation, budget), so
the cue is the only difference an audit may find. Each run writes ``model.pt`` (a state_dict),
``model.yaml`` (a model spec :func:`spec_from_yaml` and ``audit.yaml`` load) and ``train.json``.

>>> model_dir = train_cached(".cueaudit/models", "background", "biased")   # doctest: +SKIP
>>> evaluate(model_dir, "data/background/cue_reversed")                     # doctest: +SKIP
0.04
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from cuebench.synth import BIASED_CORRELATION, DEFAULT_CLASSES, SYNTH_VERSION, Backdrop, SynthConfig, generate
from pipeline.config import load_model_spec
from workers.archs import ARCHS
from workers.models import ModelSpec, Preprocess, load_model

log = logging.getLogger(__name__)

TRAIN_VERSION = 1
"""Bump when training changes what a model learns: it is part of every :func:`train_cached` key."""

DEFAULT_TRAIN_N = 2100
DEFAULT_EPOCHS = 6  # ~10 s on 2 CPU cores; fair models reach > 0.97 on every cue, biased ones still follow it
DEFAULT_LR = 3e-3
MAX_SHIFT = 2  # px of random translation; no flips or colour jitter, which would move or blur the cues
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.25, 0.25, 0.25)

Variant = Literal["biased", "fair"]


class TrainError(ValueError):
    """A training run or model folder that cannot be used (names the file and the problem)."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float | None
    wall_s: float


@dataclass(frozen=True)
class TrainResult:
    """Where a trained model lives and how training went."""

    model_dir: Path
    weights: Path
    spec_path: Path
    classes: tuple[str, ...]
    epochs: tuple[EpochStats, ...]
    wall_s: float

    @property
    def train_acc(self) -> float:
        return self.epochs[-1].train_acc

    @property
    def val_acc(self) -> float | None:
        return self.epochs[-1].val_acc


def variant_correlation(variant: str, n_classes: int = len(DEFAULT_CLASSES)) -> float:
    """P(cue agrees with the label) in the training split of a ``biased`` or ``fair`` model."""
    if variant == "biased":
        return BIASED_CORRELATION
    if variant == "fair":
        return 1.0 / n_classes
    raise TrainError(f"variant must be 'biased' or 'fair', got {variant!r}")


# --------------------------------------------------------------------------------------- data


def _image_folder(data_dir: str | os.PathLike[str]) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets import ImageFolder

    root = Path(data_dir) / "images"
    if not root.is_dir():
        raise TrainError(f"{root} does not exist; expected an ImageFolder layout images/<class>/<image>")
    folder = ImageFolder(str(root))
    return list(folder.samples), list(folder.classes)


def _load_image(path: str, pre: Preprocess) -> np.ndarray:
    """Decode one image and apply ``pre``'s geometry: ``(3, h, w)`` uint8."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    h, w = pre.size
    if img.size != (w, h):
        if pre.resize == "resize":
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        else:
            scale = max(h, w) / pre.crop_pct / min(img.size)
            img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.BILINEAR)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _load_split(samples: list[tuple[str, int]], pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([_load_image(p, pre) for p, _ in samples])) if samples else torch.zeros(0, 3, *pre.size, dtype=torch.uint8)
    y = torch.tensor([t for _, t in samples], dtype=torch.long)
    return x, y


def _normalise(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to :data:`MAX_SHIFT` px, repeating the border (no wrap-around)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


# --------------------------------------------------------------------------------------- specs


def write_spec(path: Path, name: str, arch: str, classes: list[str], pre: Preprocess, weights: str) -> None:
    spec = {
        "name": name,
        "source": f"python:workers.archs:{arch}",
        "weights": weights,
        "num_classes": len(classes),
        "classes": list(classes),
        "preprocess": {
            "size": list(pre.size),
            "resize": pre.resize,
            "crop_pct": pre.crop_pct,
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def spec_from_yaml(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a ``model.yaml`` into a :class:`ModelSpec` (``weights`` resolved against its folder), with
    exactly the validation an audit config's ``spec:`` entry gets."""
    return load_model_spec(path)


# --------------------------------------------------------------------------------------- training


def train(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    arch: str = "tiny_resnet",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    size: int = 64,
    val_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> TrainResult:
    """Train ``arch`` on ``data_dir/images`` (ImageFolder, classes in sorted order) and write the model folder.

    AdamW with a one-cycle schedule, random shifts of up to :data:`MAX_SHIFT` px, a seeded data
    order and initialisation: the same arguments give the same weights on the same machine.
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise TrainError(f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}, {lr}")
    factory = ARCHS.get(arch)
    if name is not None and not _NAME.fullmatch(name):
        raise TrainError(f"model name {name!r} must match {_NAME.pattern} (it names the model in audit configs)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre = Preprocess(size=(size, size), resize="resize", crop_pct=1.0, mean=NORM_MEAN, std=NORM_STD)
    samples, classes = _image_folder(data_dir)
    if len(samples) < 2:
        raise TrainError(f"{Path(data_dir) / 'images'} holds {len(samples)} images; training needs at least 2")
    t0, c0 = time.perf_counter(), time.process_time()
    x_all, y_all = _load_split(samples, pre)
    val = None
    if val_dir is not None:
        val_samples, val_classes = _image_folder(val_dir)
        remap = _class_map(val_classes, classes, Path(val_dir))
        vx, vy = _load_split(val_samples, pre)
        val = (vx, remap[vy])
    load_s = time.perf_counter() - t0

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = factory(num_classes=len(classes)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    n = len(y_all)
    drop_last = n > batch_size
    steps_per_epoch = n // batch_size if drop_last else 1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25)
    history: list[EpochStats] = []
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            xb = _normalise(_shift(x_all[idx], gen), pre).contiguous(memory_format=torch.channels_last)
            yb = y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        val_acc = _accuracy(model, *val, pre) if val is not None else None
        history.append(EpochStats(epoch + 1, loss_sum / seen, correct / seen, val_acc, time.perf_counter() - te))
        log.info("train %s epoch %d/%d: loss %.4f acc %.3f val %s", out.name, epoch + 1, epochs, loss_sum / seen, correct / seen, val_acc)
    wall_s = time.perf_counter() - t0

    model = model.to(memory_format=torch.contiguous_format).eval()
    weights = out / "model.pt"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    spec_path = out / "model.yaml"
    write_spec(spec_path, name or _safe_name(out.name), arch, classes, pre, weights.name)
    record = {
        "version": TRAIN_VERSION,
        "params": {"data_dir": _relative(data_dir, out), "arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                   "seed": seed, "size": size, "val_dir": _relative(val_dir, out) if val_dir else None, "optimizer": "AdamW+OneCycle",
                   "weight_decay": 5e-4, "max_shift_px": MAX_SHIFT, "mean": list(NORM_MEAN), "std": list(NORM_STD)},
        "classes": classes,
        "n_train": n,
        "epochs": [asdict(e) for e in history],
        "load_s": load_s,
        "wall_s": wall_s,
        "cpu_s": time.process_time() - c0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "train.json").write_text(json.dumps(record, indent=2))
    return TrainResult(out, weights, spec_path, tuple(classes), tuple(history), wall_s)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _relative(p: str | os.PathLike[str], base: Path) -> str:
    """``p`` relative to ``base`` when inside it (the cached models keep their data next to them)."""
    a, b = Path(p).resolve(), base.resolve()
    return str(a.relative_to(b)) if a.is_relative_to(b) else str(a)


def _safe_name(s: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._+-" else "-" for c in s).lstrip("._+-")
    return cleaned or "model"


def _class_map(data_classes: list[str], model_classes: list[str] | tuple[str, ...], where: Path) -> torch.Tensor:
    missing = sorted(set(data_classes) - set(model_classes))
    if missing:
        raise TrainError(f"{where}: classes {missing} are not among the model's classes {list(model_classes)}")
    index = {c: i for i, c in enumerate(model_classes)}
    return torch.tensor([index[c] for c in data_classes], dtype=torch.long)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, pre: Preprocess, batch_size: int = 256) -> float:
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for b in range(0, len(y), batch_size):
            logits = model(_normalise(x[b : b + batch_size], pre))
            correct += int((logits.argmax(1) == y[b : b + batch_size]).sum())
        return correct / max(len(y), 1)
    finally:
        model.train(was_training)


def evaluate(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> float:
    """Top-1 accuracy of the model in ``model_dir`` (its ``model.yaml``) on ``data_dir/images``; classes matched by name."""
    loaded = load_model(spec_from_yaml(Path(model_dir) / "model.yaml"))
    samples, classes = _image_folder(data_dir)
    if not samples:
        raise TrainError(f"{Path(data_dir) / 'images'} holds no images")
    x, y = _load_split(samples, loaded.preprocess)
    return _accuracy(loaded.module, x, _class_map(classes, loaded.classes, Path(data_dir))[y], loaded.preprocess)


# --------------------------------------------------------------------------------------- cache


def cache_key(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def train_cached(
    cache_root: str | os.PathLike[str],
    cue: str,
    variant: Variant,
    seed: int = 0,
    *,
    train_n: int = DEFAULT_TRAIN_N,
    correlation: float | None = None,
    size: int = 64,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    arch: str = "tiny_resnet",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = DEFAULT_LR,
    salience: float = 1.0,
    backdrop: Backdrop = "texture",
    edge_blur: float = 0.0,
) -> Path:
    """Generate the ``train`` split of ``cue`` for ``variant`` and train on it, once: returns the model folder.

    ``salience``, ``backdrop`` and ``edge_blur`` render the training images as
    :class:`~cuebench.synth.SynthConfig` does. The folder name holds a hash of every parameter plus
    :data:`SYNTH_VERSION` and :data:`TRAIN_VERSION`; it is built in a temporary folder and renamed
    into place, so a folder that exists is complete. It holds the model files and the training data
    (``data/``).
    """
    corr = variant_correlation(variant, len(classes)) if correlation is None else correlation
    synth_cfg = SynthConfig(cue=cue, n=train_n, correlation=corr, size=size, seed=seed, classes=tuple(classes),
                            split="train", salience=salience, backdrop=backdrop, edge_blur=edge_blur)
    params = {
        "synth": {**synth_cfg.key(), "version": SYNTH_VERSION},
        "train": {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "size": size},
        "train_version": TRAIN_VERSION,
    }
    root = Path(cache_root)
    final = root / f"{cue}-{variant}-s{seed}-{cache_key(params)}"
    if (final / "model.yaml").is_file():
        log.debug("train cache hit: %s", final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp / "data", synth_cfg)
        train(tmp / "data", tmp, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, size=size,
              name=f"{cue}-{variant}-s{seed}")
        (tmp / "cache.json").write_text(json.dumps(params, indent=2, default=str))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "model.yaml").is_file():  # anything but "someone else finished first" is an error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("trained %s (%s, %s) into %s", cue, variant, f"correlation {corr:.3f}", final)
    return final
