"""``audit.yaml``, validated once at the boundary into frozen pydantic models.

Every error names the file, the field path, the value and what was expected::

    audit.yaml: models.1.source: unknown model source 'torchvison:resnet18' (expected one of
    efficientnet-lite0, python:module:function, timm:<arch>, torchvision:<arch>)

Relative paths resolve against the directory of the config file, so a config and its data can be
moved together. The models are turned into :class:`workers.models.ModelSpec` here, by value, so
they travel to Ray workers as plain picklable objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.counterfactual import DEFAULT_DILATION
from common.storage import AnyPath, StorageOptions, as_path, is_uri, local_path
from pipeline.schema import ERROR_KINDS, TRANSIENT_ERROR_KINDS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_SOURCES = ("efficientnet-lite0", "torchvision", "timm", "hf", "python")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field and the problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Datasets


class FolderDataset(_Frozen):
    """``root/<class>/<image>`` with an optional parallel ``masks/<class>/<image stem>.png``."""

    format: Literal["folder"]
    root: str
    masks: str | None = None
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    limit: int | None = Field(default=None, ge=1)


class CocoDataset(_Frozen):
    """COCO instances JSON (polygons, RLE or boxes).

    ``label_categories`` lists the categories that can be an image's label; the label is the
    largest (by area) or most frequent instance of those present (``label_rule``). Images with no
    listed category are audited without a label unless ``skip_unlabelled``.
    """

    format: Literal["coco"]
    annotations: str
    images: str = "."
    label_categories: tuple[str, ...] | None = None
    label_rule: Literal["largest", "most"] = "largest"
    skip_unlabelled: bool = False
    limit: int | None = Field(default=None, ge=1)


class VocDataset(_Frozen):
    """Pascal VOC: ``Annotations/*.xml`` boxes with ``JPEGImages/``; label chosen like COCO's."""

    format: Literal["voc"]
    annotations: str
    images: str
    label_categories: tuple[str, ...] | None = None
    label_rule: Literal["largest", "most"] = "largest"
    skip_unlabelled: bool = False
    limit: int | None = Field(default=None, ge=1)


class ManifestDataset(_Frozen):
    """CSV or Parquet with ``image``, ``label`` and optional ``mask``, ``bbox``, ``objects``, ``attributes``."""

    format: Literal["manifest"]
    path: str
    root: str | None = None
    limit: int | None = Field(default=None, ge=1)


class HuggingFaceDataset(_Frozen):
    """A Hugging Face ``datasets`` dataset: a ``save_to_disk`` folder (a Dataset, or a DatasetDict
    with ``split``), or Parquet/Arrow files in the Hub's layout (one file, or a folder of them,
    ``split`` picking files named ``<split>-*`` or under ``<split>/``).

    ``image_column`` holds ``Image`` cells (``{bytes, path}``); ``label_column`` a ``ClassLabel`` (or
    strings); ``objects_column`` optional COCO-style objects (``bbox``, ``category`` and optionally
    ``segmentation`` polygons or RLE, ``area``) as a sequence of dicts. Without a label column the
    label is picked from the objects like COCO's (``label_categories``, ``label_rule``).
    ``attributes`` lists columns to use as image attributes; ``id_column`` a stable image id (else
    ``<split>/<row>``, which changes when the dataset is reordered).
    """

    format: Literal["huggingface"]
    path: str
    split: str | None = None
    image_column: str = "image"
    label_column: str | None = "label"
    objects_column: str | None = "objects"
    id_column: str | None = None
    attributes: tuple[str, ...] = ()
    bbox_format: Literal["xywh", "xyxy"] = "xywh"
    label_categories: tuple[str, ...] | None = None
    label_rule: Literal["largest", "most"] = "largest"
    skip_unlabelled: bool = False
    limit: int | None = Field(default=None, ge=1)


class WebDatasetDataset(_Frozen):
    """WebDataset tar shards, local or remote: per sample ``<key>.jpg|png|...`` plus ``<key>.json``
    (``label``, ``objects`` as in a manifest, ``attributes``) and/or ``<key>.cls`` (a class index
    into ``classes``, or a name), optionally ``<key>.mask.png`` (the labelled object's mask).

    ``shards``: a brace pattern (``s3://b/train-{000000..000099}.tar``), a folder of ``.tar``
    files, or a list of either.
    """

    format: Literal["webdataset"]
    shards: str | tuple[str, ...]
    classes: tuple[str, ...] | None = None
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm")
    label_categories: tuple[str, ...] | None = None
    label_rule: Literal["largest", "most"] = "largest"
    skip_unlabelled: bool = False
    limit: int | None = Field(default=None, ge=1)

    @field_validator("shards")
    @classmethod
    def _patterns(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        from common.braces import expand_braces

        for pattern in (v,) if isinstance(v, str) else v:
            expand_braces(pattern)  # raises ValueError naming the pattern
        if not v:
            raise ValueError("needs at least one shard, pattern or folder")
        return v


DatasetConfig = Annotated[
    FolderDataset | CocoDataset | VocDataset | ManifestDataset | HuggingFaceDataset | WebDatasetDataset,
    Field(discriminator="format"),
]


class StorageConfig(_Frozen):
    """How object stores are reached. Credentials are *not* keys here (this config is copied into
    every run record): they come from the standard environment (``AWS_ACCESS_KEY_ID``, ...,
    ``GOOGLE_APPLICATION_CREDENTIALS``), on the driver and on every Ray node."""

    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+/?$")
    region: str | None = None
    anonymous: bool = False

    def to_options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region, anonymous=self.anonymous)


# ---------------------------------------------------------------------------------------------
# Models


class PreprocessConfig(_Frozen):
    """Preprocessing keys; the keys given override the source's own (timm's ``pretrained_cfg``, a
    saved image processor), the rest keep it."""

    size: int | tuple[int, int] = 224
    resize: Literal["resize", "resize_crop"] = "resize_crop"
    crop_pct: float = Field(default=0.875, gt=0, le=1)
    mean: Literal["imagenet"] | tuple[float, float, float] = "imagenet"
    std: Literal["imagenet"] | tuple[float, float, float] = "imagenet"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def to_preprocess(self, base: Any = None):  # -> common.preprocess.Preprocess
        """The keys set here over ``base`` (a Preprocess; None: these keys' defaults)."""
        from dataclasses import replace

        from common.preprocess import Preprocess

        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        mean = IMAGENET_MEAN if self.mean == "imagenet" else tuple(self.mean)
        std = IMAGENET_STD if self.std == "imagenet" else tuple(self.std)
        full = Preprocess(size=size, resize=self.resize, crop_pct=self.crop_pct, mean=mean, std=std,  # type: ignore[arg-type]
                          interpolation=self.interpolation)
        if base is None:
            return full
        return replace(base, **{k: getattr(full, k) for k in self.model_fields_set})


class ModelConfig(_Frozen):
    """One model to audit. ``spec`` loads a model.yaml (as written by ``cueaudit train``) whose keys
    this entry may override."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    source: str
    weights: str | None = None
    num_classes: int | None = Field(default=None, ge=1)
    classes: tuple[str, ...] | str | None = None
    preprocess: PreprocessConfig | None = None
    layer: str | None = None
    fine_layer: str | None = None
    layout: Literal["auto", "nchw", "nhwc", "tokens"] = "auto"
    prefix_tokens: int | None = Field(default=None, ge=0)
    label_map: str | dict[str, int | str | tuple[int | str, ...]] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        kind, _, arg = v.partition(":")
        if kind not in MODEL_SOURCES:
            raise ValueError(
                f"unknown model source {v!r} (expected one of efficientnet-lite0, torchvision:<arch>, "
                "timm:<arch>, hf:<folder>, python:module:function)"
            )
        if kind != "efficientnet-lite0" and not arg:
            raise ValueError(f"source {v!r} needs a name after '{kind}:'")
        return v

    @field_validator("label_map")
    @classmethod
    def _known_label_map(cls, v: Any) -> Any:
        from common.labelmaps import LABEL_MAPS

        if isinstance(v, str) and v not in LABEL_MAPS:
            raise ValueError(f"unknown label map {v!r}; built-in maps: {', '.join(LABEL_MAPS.names())} "
                             "(or give a mapping label -> class names/indices)")
        return v

    def class_names(self, base: Path) -> tuple[str, ...] | None:
        """The model's class names when known without building it (a list, a file, ``imagenet``,
        an hf folder's id2label, efficientnet-lite0's ImageNet); None otherwise."""
        kind, _, arg = self.source.partition(":")
        if isinstance(self.classes, tuple):
            return self.classes
        if self.classes == "imagenet" or (self.classes is None and kind == "efficientnet-lite0"):
            from workers.models import imagenet_classes

            return imagenet_classes()
        if isinstance(self.classes, str):
            p = Path(_resolve(base, self.classes))
            if not p.is_file():
                raise ConfigError(f"models.{self.name}.classes: class-name file {str(p)!r} does not exist")
            return tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
        if kind == "hf":
            cfg = Path(_resolve(base, arg)) / "config.json"
            try:
                id2label = json.loads(cfg.read_text()).get("id2label") or {}
                return tuple(str(id2label[k]) for k in sorted(id2label, key=int)) or None
            except (OSError, ValueError) as e:
                raise ConfigError(f"models.{self.name}.source: cannot read class names from {str(cfg)!r}: {e}") from None
        return None

    def label_map_items(self) -> tuple[tuple[str, tuple[int | str, ...]], ...] | None:
        """``label_map`` as the frozen, sorted items ScoreOptions carries (a built-in name expanded)."""
        from common.labelmaps import builtin_label_map

        if self.label_map is None:
            return None
        entries = builtin_label_map(self.label_map) if isinstance(self.label_map, str) else self.label_map
        return tuple(sorted((k, tuple(v) if isinstance(v, tuple | list) else (v,)) for k, v in entries.items()))

    def to_spec(self, base: Path):  # -> workers.models.ModelSpec
        from workers.models import ModelSpec, imagenet_classes

        classes: tuple[str, ...] | None
        if isinstance(self.classes, str):
            if self.classes == "imagenet":
                classes = imagenet_classes()
            else:
                p = _resolve(base, self.classes)
                if not Path(p).is_file():
                    raise ConfigError(f"models.{self.name}.classes: class-name file {p!r} does not exist")
                classes = tuple(line.strip() for line in Path(p).read_text().splitlines() if line.strip())
        else:
            classes = self.classes
        kind, _, arg = self.source.partition(":")
        spec = ModelSpec(
            name=self.name,
            source=f"hf:{_resolve(base, arg)}" if kind == "hf" else self.source,
            weights=_resolve(base, self.weights) if self.weights else None,
            num_classes=self.num_classes,
            classes=classes,
            kwargs=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.kwargs.items())),
        )
        if self.preprocess is None:
            return spec
        from dataclasses import replace

        from workers.models import ModelLoadError, resolve_spec

        try:
            own = resolve_spec(spec)[2]  # the source's preprocessing, which the keys given here override
        except ModelLoadError as e:
            raise ConfigError(f"models.{self.name}.preprocess: {e}") from None
        return replace(spec, preprocess=self.preprocess.to_preprocess(own))


# ---------------------------------------------------------------------------------------------
# The audit


class CounterfactualConfig(_Frozen):
    """Counterfactuals computed by the workers where object masks exist.

    Background swaps (Xiao et al. 2020): ``fill`` is the neutral background (``mean`` = the model's
    normalisation mean, a zero input); Mixed-Rand takes the background of an image of another class,
    Mixed-Same (the control) of an image of the same class; donors are drawn from the whole dataset,
    deterministically from ``seed``. ``context``: remove every other annotated object of an image
    and, as the control, same-size patches of plain background. Removed objects' boxes, grown by
    ``dilation`` x their longer side, are filled with tiles of the image's own background
    (:mod:`common.counterfactual`).
    """

    enabled: bool = False
    fill: Literal["mean", "gray", "black"] = "mean"
    seed: int = 0
    context: bool = True
    dilation: float = Field(default=DEFAULT_DILATION, ge=0, le=1)


class EmbeddingConfig(_Frozen):
    """Per-image embeddings at the CAM layer (:mod:`workers.embed`), which slice discovery clusters:
    the global average of the activations and its CAM-weighted split off / on the object mask,
    taken from the Grad-CAM pass (no extra forward), float16. Layers with more than ``dim`` channels
    are reduced by a fixed Gaussian random projection seeded with ``seed``."""

    enabled: bool = True
    dim: int = Field(default=128, ge=8, le=4096)
    seed: int = 0


class ExecutionConfig(_Frozen):
    address: str | None = None
    workers: int | None = Field(default=None, ge=1)
    gpus_per_worker: float | None = Field(default=None, ge=0)
    cpus_per_worker: float = Field(default=1, gt=0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    autocast: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU, fp32 on the CPU
    decode: Literal["cpu", "device", "auto"] = "auto"  # auto: JPEGs decoded on the GPU when actors have one
    compile: bool = False
    max_pixels: int = Field(default=178_956_970, ge=1)
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the embedded local Ray")
    flush_rows: int = Field(default=4096, ge=1, description="rows per committed Parquet part (what a crash can lose)")
    flush_seconds: float = Field(default=20.0, gt=0, description="commit a part at least this often")
    stall_timeout: float = Field(default=600.0, ge=0, description="stop with exit 2 when no batch finishes "
                                 "for this many seconds (0: wait forever)")
    retry_errors: tuple[str, ...] = Field(default=TRANSIENT_ERROR_KINDS, description="error kinds a rerun scores "
                                          "again (the new row supersedes the error row)")
    lock_timeout: float = Field(default=300.0, gt=0, description="seconds without a heartbeat after which "
                                "another run's lock on the output is stale and taken over")

    @field_validator("retry_errors")
    @classmethod
    def _known_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [k for k in v if k not in ERROR_KINDS]
        if unknown:
            raise ValueError(f"unknown error kind(s) {unknown}; valid: {', '.join(ERROR_KINDS)}")
        return v

    @field_validator("cpus_per_worker", "gpus_per_worker")
    @classmethod
    def _ray_quantity(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and v != int(v):
            raise ValueError("Ray accepts a fraction below 1 or a whole number")
        return v


class AuditConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    output: str
    dataset: DatasetConfig
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    target: Literal["predicted", "label"] = "predicted"
    both_maps_when_wrong: bool = False  # also store the other class's map (cam_other) where pred != label
    layer: str = "auto"
    fine_layer: str = "auto"
    cam: str = "gradcam"
    counterfactual: CounterfactualConfig = CounterfactualConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    execution: ExecutionConfig = ExecutionConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> AuditConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        return self


class LoadedConfig:
    """A validated config plus where it came from (for relative paths and the run record)."""

    def __init__(self, config: AuditConfig, path: Path | None, raw: dict[str, Any]) -> None:
        self.config = config
        self.path = path
        self.base = path.parent if path else Path.cwd()
        self.raw = raw

    def resolve(self, p: str | None) -> str | None:
        return _resolve(self.base, p) if p else None

    @property
    def output(self) -> AnyPath:
        """The results directory: a Path, or a :class:`~common.storage.Location` (``s3://...``)."""
        return as_path(_resolve(self.base, self.config.output))

    def model_specs(self) -> list[Any]:
        return [m.to_spec(self.base) for m in self.config.models]

    def layer_for(self, model: ModelConfig) -> str | None:
        layer = model.layer or self.config.layer
        return None if layer in (None, "auto") else layer

    def fine_layer_for(self, model: ModelConfig) -> str | None:
        """``"auto"`` (decide from the objects' size in feature cells), a layer name, or None (``none``)."""
        fine = model.fine_layer or self.config.fine_layer
        return None if fine == "none" else fine


def _resolve(base: Path, p: str) -> str:
    p = os.path.expanduser(os.path.expandvars(p))
    if is_uri(p):
        return p
    p = local_path(p)
    return str(Path(p) if os.path.isabs(p) else (base / p).resolve())


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping); errors name the file."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def _merge_specs(raw: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """Inline ``spec: model.yaml`` entries; keys given next to ``spec`` win. Paths in the spec file
    are made absolute against the spec file's folder."""
    models = raw.get("models")
    if not isinstance(models, list):
        return raw
    out = []
    for i, m in enumerate(models):
        if isinstance(m, dict) and "spec" in m:
            spec_path = Path(_resolve(base, str(m["spec"])))
            if not spec_path.is_file():
                raise ConfigError(f"{where}: models.{i}.spec: file {str(spec_path)!r} does not exist")
            spec = read_yaml_mapping(spec_path, "model spec")
            for key in ("weights", "classes"):
                if isinstance(spec.get(key), str) and spec[key] != "imagenet":
                    spec[key] = _resolve(spec_path.parent, spec[key])
            if isinstance(spec.get("source"), str) and spec["source"].startswith("hf:"):
                spec["source"] = "hf:" + _resolve(spec_path.parent, spec["source"][3:])
            merged = {**spec, **{k: v for k, v in m.items() if k != "spec"}}
            out.append(merged)
        else:
            out.append(m)
    return {**raw, "models": out}


def format_validation_error(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{where}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> LoadedConfig:
    where = str(path) if path else "<config>"
    base = path.parent if path else Path.cwd()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the config must be a YAML mapping, got {type(raw).__name__}")
    merged = _merge_specs(raw, base, where)
    try:
        cfg = AuditConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
    return LoadedConfig(cfg, path, raw)


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    p = Path(path).resolve()
    return parse_config(read_yaml_mapping(p, "config file"), p)


def load_model_spec(path: str | os.PathLike[str]):  # -> workers.models.ModelSpec
    """A standalone ``model.yaml`` (as ``cueaudit train`` writes it) through the same validation as a
    config's ``models`` entry; paths resolve against its folder, the name defaults to the folder's."""
    p = Path(path).resolve()
    raw = {"name": p.parent.name, **read_yaml_mapping(p, "model spec")}
    try:
        model = ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p))) from None
    return model.to_spec(p.parent)


# ---------------------------------------------------------------------------------------------
# Gate policy (gate.yaml)


class Thresholds(_Frozen):
    """The warn and fail thresholds of one statistic (a check judging several has one pair each)."""

    warn: float
    fail: float


class CheckPolicy(_Frozen):
    """One check's condition: severity and the warn/fail thresholds on its statistic.

    A finding FAILs when its confidence interval lies wholly beyond ``fail``, WARNs when wholly
    beyond ``warn``, PASSes when the interval rules ``fail`` out, and is otherwise inconclusive
    (SKIP, with the reason). Per-class and per-group findings are corrected for multiplicity (Holm).
    ``min_n`` overrides the gate's floor of images per compared group below which a finding is not
    judged.
    """

    enabled: bool = True
    severity: Literal["fail", "warn"] = "fail"
    warn: float
    fail: float
    min_n: int | None = Field(default=None, ge=1)


class BackgroundReliancePolicy(CheckPolicy):
    """Chance-corrected object score (object_lift); flags when it is clearly *below* the thresholds.
    With maps too coarse for the objects (median object covers < ``min_object_cells`` feature
    cells) the verdict is capped at WARN: a finer layer is needed to tell object from context."""

    warn: float = 0.25
    fail: float = 0.20
    min_object_cells: float = Field(default=4.0, ge=0)


class BackgroundColourPolicy(CheckPolicy):
    """Accuracy gap between background-colour-aligned and -conflicting images (above = worse).
    Skipped when the colour predicts the label less than ``min_cue_strength`` above chance."""

    warn: float = 0.10
    fail: float = 0.20
    min_cue_strength: float = Field(default=0.10, ge=0)


class CooccurrencePolicy(CheckPolicy):
    """Accuracy gap between images whose co-occurring objects agree with the label and those where
    they signal another class (above = worse), and ``saliency``: the chance-corrected CAM mass on
    the signalling object on cue-aligned images, (share - area) / (1 - area) (above = worse). The
    saliency finding is capped at WARN when the median labelled object covers fewer than
    ``min_object_cells`` feature cells (as background_reliance). ``ablation``: the context-ablation
    gap, the flip rate of cue-aligned images with the co-occurring objects removed minus with
    same-size background patches removed, paired per image (above = worse)."""

    warn: float = 0.10
    fail: float = 0.20
    saliency: Thresholds = Thresholds(warn=0.05, fail=0.10)
    ablation: Thresholds = Thresholds(warn=0.10, fail=0.20)
    min_object_cells: float = Field(default=4.0, ge=0)


class CounterfactualPolicy(CheckPolicy):
    """BG-Gap: accuracy with a same-class background minus with another class's (above = worse)."""

    warn: float = 0.08
    fail: float = 0.12


class AttributePolicy(CheckPolicy):
    """Worst-group gap over dataset attributes: the rest's accuracy minus the worst (label, value)
    group's (above = worse). ``attributes`` limits which attribute keys count (default: all with
    2-20 values)."""

    warn: float = 0.10
    fail: float = 0.20
    attributes: tuple[str, ...] | None = None


class SlicePolicy(CheckPolicy):
    """Slices discovered on the model's own embeddings, no annotation needed
    (:mod:`pipeline.analysis.slices`): the held-out accuracy of the rest of a class minus the
    slice's (above = worse), Holm-corrected over every reported slice. ``embedding``: the pool that
    is clustered (``embedding``, ``embedding_off``, ``embedding_on``); ``components``: mixture
    components per class; ``max_slices``: slices reported per class; ``correctness_weight``:
    Domino's weight on the correctness term of the mixture."""

    warn: float = 0.10
    fail: float = 0.20
    embedding: Literal["embedding", "embedding_off", "embedding_on"] = "embedding"
    components: int = Field(default=8, ge=2, le=64)
    max_slices: int = Field(default=3, ge=1, le=50)
    correctness_weight: float = Field(default=10.0, ge=0)


class RegressionPolicy(CheckPolicy):
    """Drop against a baseline run of object_lift and of accuracy, paired on shared images (above = worse)."""

    warn: float = 0.03
    fail: float = 0.05


class ChecksPolicy(_Frozen):
    background_reliance: BackgroundReliancePolicy = BackgroundReliancePolicy()
    background_colour_cue: BackgroundColourPolicy = BackgroundColourPolicy()
    cooccurrence_cue: CooccurrencePolicy = CooccurrencePolicy()
    counterfactual_flip: CounterfactualPolicy = CounterfactualPolicy()
    attribute_gap: AttributePolicy = AttributePolicy()
    slice_gap: SlicePolicy = SlicePolicy()
    regression: RegressionPolicy = RegressionPolicy()


class GatePolicy(_Frozen):
    """gate.yaml: statistics settings plus one condition per check (all keys optional)."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    bootstrap: int = Field(default=1000, ge=100, le=100_000)
    seed: int = 0
    min_n: int = Field(default=5, ge=1)
    min_n_bootstrap: int = Field(default=20, ge=2)
    require_evidence: bool = False
    checks: ChecksPolicy = ChecksPolicy()


def load_policy(path: str | os.PathLike[str] | None) -> GatePolicy:
    """The default policy, or a gate.yaml overriding any of its keys."""
    if path is None:
        return GatePolicy()
    p = Path(path)
    raw = read_yaml_mapping(p, "policy file")
    try:
        return GatePolicy.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p))) from None
