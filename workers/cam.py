"""Batched Grad-CAM on the model's device: one no-grad forward, a graph for the head only.

Grad-CAM needs ``dy/dA`` at one feature map ``A``. Hook-based libraries record the whole trunk for
backward and then run a full backward (parameter gradients included), which costs two to three
forwards. Here the trunk runs under :func:`torch.no_grad`; a forward hook on the feature layer turns
grad mode back on and swaps the layer's output for a fresh leaf, so only the head after it
(pooling + classifier, usually) records a graph, and :func:`torch.autograd.grad` stops at that leaf.
A CAM therefore costs about one plain forward.

Layers are dotted module names; a module that runs several times per forward (efficientnet-lite's
shared ``_swish``) is addressed per call as ``name@k`` (0-based, negative allowed), and a bare name
means its last call. ``layer=None`` picks the last spatial map before global pooling, found by a
probe forward that is cached per input size. Models without global pooling (segmentation)
have no such map before their output, and the automatic choice is then the last spatial map that is
not the output itself, often the low-resolution logits: name the layer there.

**Layouts.** A feature map is recognised in three layouts (:data:`LAYOUTS`): ``nchw`` (CNNs),
``nhwc`` (channels-last, e.g. timm's Swin) and ``tokens`` ``(N, T, C)`` (vision transformers), where
the first ``prefix`` tokens (CLS, distillation, register tokens; timm's ``num_prefix_tokens`` where
the model says) are dropped and the rest reshaped to the patch grid. A layout counts only when its
spatial dims lie on the input's grid (``h ~ H / s`` and ``w ~ W / s`` for one stride ``s``, within a
cell), so ``(heads, tokens, head_dim)`` attention internals are not maps. Activations and gradients
are converted to ``(N, C, h, w)`` the same way, which is pytorch-grad-cam's ``reshape_transform``.

**Transformers.** Modules inside an attention block are never chosen automatically. In a CLS-token
ViT only the CLS token reaches the head, so after the last block's attention the patch tokens get no
gradient: the automatic choice is the last token map whose *patch* tokens receive gradient (found by
one gradient probe), i.e. the input of the last block's attention (``blocks[-1].norm1``, as
pytorch-grad-cam recommends); for mean-pooled transformers it is the last block's output.

**Several layers in one pass.** ``extra_layers`` adds maps at further layers to the same forward:
recording starts at the earliest of them, the later activations stay in the graph, and one
``autograd.grad`` reaches all of them (``CAMResult.extra``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from common.registry import Registry

__all__ = [
    "CAM_METHODS",
    "LAYOUTS",
    "BaseCAM",
    "CAMResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerInfo",
    "candidate_layers",
    "finer_layer",
    "make_cam",
    "resolve_layer",
]

logger = logging.getLogger(__name__)

Targets = Tensor | Sequence[int] | int | Callable[[Tensor], Tensor] | None

CAM_METHODS: Registry[type[BaseCAM]] = Registry("CAM method")

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
# Adaptive pools resample to a size fixed by the architecture (VGG's 7x7 ``avgpool`` turns a 2x2 map
# into a blocky 7x7 one); they belong to the head, so the automatic choice skips them.
_HEAD_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SHOWN_CANDIDATES = 10
LAYOUTS = ("nchw", "nhwc", "tokens")
_MAX_PREFIX = 8  # CLS + distillation + register tokens seen in practice: 1, 2, 5


@dataclass(frozen=True)
class LayerInfo:
    """One call of a module whose output is a spatial map with ``h * w > 1``.

    ``name`` is the spec that selects exactly this call: the dotted module name, with ``@call``
    appended only when the module runs more than once per forward (``"layer4"``, ``"_swish@1"``).
    ``shape`` is the map's ``(C, h, w)`` whatever the ``layout`` of the module's output
    (``nchw``, ``nhwc``, or ``tokens`` with ``prefix`` leading non-patch tokens); ``order`` is the
    position of this call in the forward (probe events, execution order).
    """

    name: str
    module: str
    call: int
    calls: int
    shape: tuple[int, int, int]  # (C, h, w)
    layout: str = "nchw"
    prefix: int = 0
    order: int = field(default=-1, compare=False)

    def to_nchw(self, t: Tensor) -> Tensor:
        """The module's output (or its gradient) as ``(N, C, h, w)``."""
        c, h, w = self.shape
        if self.layout == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            return t[:, self.prefix :, :].reshape(t.shape[0], h, w, c).permute(0, 3, 1, 2)
        return t


@dataclass(frozen=True, eq=False)
class CAMResult:
    """Raw class activation maps of one batch, all tensors detached and on the model's device.

    ``maps`` ``(N, h, w)`` float32 at feature resolution, ReLU applied, not normalised;
    ``logits`` the model output as float32 (``(N, classes)`` for classifiers); ``scores`` ``(N,)``
    float32 the differentiated scores; ``targets`` ``(N,)`` long class indices, or ``None`` when a
    callable reduced the output; ``layer`` the resolved layer spec. ``activations`` ``(N, C, h, w)``
    float32 the feature map ``A`` the maps were computed from (for embeddings pooled from the same
    pass: :mod:`workers.embed`).
    """

    maps: Tensor
    logits: Tensor
    scores: Tensor
    targets: Tensor | None
    layer: str
    extra: dict[str, Tensor] = field(default_factory=dict)
    activations: Tensor | None = None


@dataclass(frozen=True)
class _Probe:
    spatial: list[LayerInfo]  # execution order
    calls: dict[str, int]
    shapes: dict[tuple[str, int], tuple[int, ...]]  # every tensor-valued call, batch dim dropped
    auto: LayerInfo | None
    usable: list[LayerInfo] = field(default_factory=list)  # what the automatic choice may pick, in order


def _fits_grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether an ``h x w`` map lies on the ``H x W`` input's grid: one stride ``s`` with
    ``|h - H/s| < 1`` and ``|w - W/s| < 1`` (convolutions round, pad or trim by at most a cell)."""
    H, W = size
    if h < 1 or w < 1 or h * w <= 1 or h > H or w > W:
        return False
    lo = max(H / (h + 1), W / (w + 1))
    hi = min(H / (h - 1) if h > 1 else float("inf"), W / (w - 1) if w > 1 else float("inf"))
    return lo < hi


def _token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid ``(h, w)`` of ``tokens`` patches on an ``H x W`` input (closest aspect), or None."""
    H, W = size
    best: tuple[float, tuple[int, int]] | None = None
    for h in range(1, tokens + 1):
        if tokens % h:
            continue
        w = tokens // h
        if _fits_grid(h, w, size):
            err = abs(math.log(h / w) - math.log(H / W))
            if best is None or err < best[0]:
                best = (err, (h, w))
    return None if best is None else best[1]


def _layout_of(shape: tuple[int, ...], size: tuple[int, int], layout: str | None,
               prefixes: Sequence[int]) -> tuple[str, int, tuple[int, int, int]] | None:
    """How a module output of ``shape`` (batch dim dropped) is a spatial map: (layout, prefix, (C, h, w))."""
    if len(shape) == 3 and layout in (None, "nchw"):
        c, h, w = shape
        if h * w > 1 and (layout == "nchw" or _fits_grid(h, w, size)):
            return "nchw", 0, (c, h, w)
    if len(shape) == 3 and layout in (None, "nhwc"):
        h, w, c = shape
        if h * w > 1 and (layout == "nhwc" or _fits_grid(h, w, size)):
            return "nhwc", 0, (c, h, w)
    if len(shape) == 2 and layout in (None, "tokens"):
        t, c = shape
        for p in prefixes:
            grid = _token_grid(t - p, size) if t - p > 1 else None
            if grid is not None:
                return "tokens", p, (c, *grid)
    return None


def _prefix_options(model: nn.Module, prefix: int | None) -> list[int]:
    declared = prefix if prefix is not None else getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int) and declared >= 0:
        return list(dict.fromkeys([declared, 0]))  # before the prefix is prepended, tokens are all patches
    return list(range(_MAX_PREFIX + 1))


def _attention_modules(model: nn.Module) -> list[str]:
    """Names of attention blocks (class or attribute name says so): their insides are not feature maps."""
    names = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if name and ("attention" in type(module).__name__.lower() or leaf in ("attn", "attention", "self_attn")):
            names.append(name)
    return names


def _probe(model: nn.Module, x: Tensor, layout: str | None = None, prefix: int | None = None) -> _Probe:
    """Run a two-image batch through ``model`` recording every module call's output shape, in order.

    Two images, so an output whose first dim is not the batch (attention windows ``(N * windows, ...)``)
    is recognised and skipped.
    """
    counts: Counter[str] = Counter()
    events: list[tuple[str, int, tuple[int, ...], weakref.ref[Tensor], bool]] = []

    def recorder(name: str, module: nn.Module) -> Callable[..., None]:
        head_pool = isinstance(module, _HEAD_POOLS)

        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            call = counts[name]
            counts[name] += 1
            if isinstance(out, Tensor):
                events.append((name, call, tuple(out.shape), weakref.ref(out), head_pool))

        return hook

    xb = torch.cat([x[:1], x[:1]])
    handles = [m.register_forward_hook(recorder(n, m)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode(False), torch.no_grad():
            output = model(xb)
    finally:
        for handle in handles:
            handle.remove()

    size = (int(x.shape[-2]), int(x.shape[-1]))
    prefixes = _prefix_options(model, prefix)
    attention = _attention_modules(model)
    outputs = [output] if isinstance(output, Tensor) else _tensors_in(output)
    spatial: list[LayerInfo] = []
    usable: list[LayerInfo] = []
    for order, (name, call, shape, ref, head_pool) in enumerate(events):
        if not shape or shape[0] != 2:
            continue
        found = _layout_of(shape[1:], size, layout, prefixes)
        if found is None:
            continue
        kind, p, chw = found
        n = counts[name]
        info = LayerInfo(name if n == 1 else f"{name}@{call}", name, call, n, chw, kind, p, order)
        spatial.append(info)
        # Hooks fire innermost first, so among modules returning the same tensor (layer4.1.relu,
        # layer4.1, layer4) the last event is the outermost one, after any in-place edits.
        out = ref()
        inside_attention = any(name == a or name.startswith(a + ".") for a in attention)
        if not head_pool and not inside_attention and not any(out is o for o in outputs):
            usable.append(info)
    if any(i.layout == "tokens" and i.prefix > 0 for i in usable):
        usable = _patch_gradient(model, xb, usable)
    return _Probe(
        spatial=spatial,
        calls=dict(counts),
        shapes={(name, call): shape[1:] for name, call, shape, _, _ in events},
        auto=usable[-1] if usable else None,
        usable=usable,
    )


def _patch_gradient(model: nn.Module, x: Tensor, infos: list[LayerInfo]) -> list[LayerInfo]:
    """``infos`` without the token maps whose patch tokens get no gradient from the top score.

    In a CLS-token ViT everything after the last block's attention reaches the head only through
    the CLS token: a Grad-CAM there is zero (or noise) on every patch.
    """
    wanted = {(i.module, i.call): i for i in infos if i.layout == "tokens" and i.prefix > 0}
    seen: Counter[str] = Counter()
    kept: dict[tuple[str, int], Tensor] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            call = seen[name]
            seen[name] += 1
            if (name, call) in wanted and isinstance(out, Tensor) and out.requires_grad:
                kept[(name, call)] = out

        return hook

    modules = {name for name, _ in wanted}
    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n in modules]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            xin = x.detach().clone().requires_grad_(True)
            out = model(xin)
            if not isinstance(out, Tensor) or out.ndim != 2 or not kept:
                return infos
            keys = list(kept)
            grads = torch.autograd.grad(out.float().amax(dim=1).sum(), [kept[k] for k in keys], allow_unused=True)
    except RuntimeError as e:  # an in-place edit of a recorded output: keep every candidate
        logger.debug("gradient probe failed (%s); token maps kept unchecked", e)
        return infos
    finally:
        for handle in handles:
            handle.remove()
    dead = set()
    for key, g in zip(keys, grads, strict=True):
        p = wanted[key].prefix
        if g is None or not bool(g[:, p:].abs().amax() > 0):
            dead.add(key)
    dead |= {k for k in wanted if k not in kept}
    return [i for i in infos if (i.module, i.call) not in dead]


def _tensors_in(obj: object) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in _tensors_in(item)]
    return []


def _candidates_text(probe: _Probe) -> str:
    shown = probe.spatial[-_SHOWN_CANDIDATES:]
    if not shown:
        return "the model has no module whose output is a spatial map (N, C, h, w) with h*w > 1"
    listed = ", ".join(f"{c.name} {c.shape}" + ("" if c.layout == "nchw" else f" {c.layout}") for c in shown)
    auto = "" if probe.auto is None else f"automatic choice {probe.auto.name}; "
    return f"{auto}last {len(shown)} spatial candidates, name (C, h, w): {listed}"


def _parse_spec(layer: str, probe: _Probe) -> tuple[str, int | None]:
    name, at, index = layer.rpartition("@")
    if not at:
        return layer, None
    try:
        return name, int(index)
    except ValueError:
        raise ValueError(
            f"layer {layer!r}: the call index after '@' must be an integer; {_candidates_text(probe)}"
        ) from None


def _resolve(model: nn.Module, probe: _Probe, layer: str | None) -> LayerInfo:
    if layer is None:
        if probe.auto is None:
            raise ValueError(
                "layer=None: found no spatial feature map before the output to use automatically; "
                f"pass layer=... ({_candidates_text(probe)})"
            )
        return probe.auto
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted module name (str) or None, got {type(layer).__name__}")
    name, index = _parse_spec(layer, probe)
    if not name:
        raise ValueError(f"layer {layer!r}: the root model is not a feature layer; {_candidates_text(probe)}")
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"layer {layer!r}: the model has no module {name!r}; {_candidates_text(probe)}"
        ) from None
    calls = probe.calls.get(name, 0)
    if calls == 0:
        raise ValueError(
            f"layer {layer!r}: module {name!r} never runs in forward(); {_candidates_text(probe)}"
        )
    call = calls - 1 if index is None else index
    if not -calls <= call < calls:
        raise ValueError(
            f"layer {layer!r}: call index {index} out of range, {name!r} runs {calls} time(s) per forward; "
            f"{_candidates_text(probe)}"
        )
    call %= calls
    for info in probe.spatial:
        if info.module == name and info.call == call:
            return info
    shape = probe.shapes.get((name, call))
    got = "a non-tensor" if shape is None else f"shape (N, {', '.join(map(str, shape))})"
    raise ValueError(
        f"layer {layer!r}: output is {got}, not a spatial map on the input's grid "
        f"((N, C, h, w), (N, h, w, C) or tokens (N, T, C)) with h*w > 1; set layout: to force one; "
        f"{_candidates_text(probe)}"
    )


def _check_layout(layout: str | None) -> str | None:
    if layout in (None, "auto"):
        return None
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {', '.join(LAYOUTS)}; got {layout!r}")
    return layout


def candidate_layers(model: nn.Module, x: Tensor, *, layout: str | None = None,
                     prefix_tokens: int | None = None) -> list[LayerInfo]:
    """Every module call with a spatial output, in execution order, from a probe of ``x``."""
    return _probe(model, x, _check_layout(layout), prefix_tokens).spatial


def resolve_layer(model: nn.Module, x: Tensor, layer: str | None = None, *, layout: str | None = None,
                  prefix_tokens: int | None = None) -> LayerInfo:
    """The layer call ``layer`` selects for inputs shaped like ``x`` (``None``: automatic).

    Raises ``ValueError`` listing candidates when ``layer`` is not a spatial map of ``model``.
    """
    return _resolve(model, _probe(model, x, _check_layout(layout), prefix_tokens), layer)


def finer_layer(model: nn.Module, x: Tensor, layer: str | None = None, *, layout: str | None = None,
                prefix_tokens: int | None = None) -> LayerInfo | None:
    """The next finer stage before ``layer`` (``None``: the automatic layer): the last candidate the
    automatic choice could take that runs earlier and has more cells (``h * w``); None when there
    is none (a ViT keeps one grid throughout)."""
    probe = _probe(model, x, _check_layout(layout), prefix_tokens)
    base = _resolve(model, probe, layer)
    cells = base.shape[1] * base.shape[2]
    finer = [i for i in probe.usable if i.order < base.order and i.shape[1] * i.shape[2] > cells]
    return finer[-1] if finer else None


class BaseCAM:
    """Batched gradient CAM: hooks, validation and layer resolution; subclasses give :meth:`_weights`.

    The map is ``ReLU(sum_k w_k A_k)`` for the activations ``A`` ``(N, C, h, w)`` of ``layer`` and
    channel weights ``w`` ``(N, C)`` computed from ``A`` and ``dy/dA``, where ``y`` is one score per
    image: the logit of ``targets`` (default: the predicted class) or ``targets(output)``.
    ``autocast`` (``torch.bfloat16``/``torch.float16``) runs the forward in that precision; weights
    and maps are always computed in float32. The model must be in eval mode: in train mode
    BatchNorm mixes images and a CAM would depend on its batch.

    ``layout`` (``None``/``"auto"``, or one of :data:`LAYOUTS`) forces how module outputs are read as
    maps, ``prefix_tokens`` how many leading tokens are not patches (default: the model's
    ``num_prefix_tokens``, else inferred from the token count). ``extra_layers`` are computed in
    the same pass and returned in ``CAMResult.extra`` keyed by their resolved names.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, autocast: torch.dtype | None = None,
                 layout: str | None = None, prefix_tokens: int | None = None,
                 extra_layers: Sequence[str] = ()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if prefix_tokens is not None and prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be >= 0, got {prefix_tokens}")
        self.model = model
        self.layer = layer
        self.autocast = _check_autocast(autocast)
        self.layout = _check_layout(layout)
        self.prefix_tokens = prefix_tokens
        self.extra_layers = tuple(extra_layers)
        self._layers: dict[tuple[int, ...], tuple[LayerInfo, tuple[LayerInfo, ...]]] = {}

    def _weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        """Channel weights ``(N, C)`` from float32 ``activations`` and ``grads`` ``(N, C, h, w)``."""
        raise NotImplementedError

    def _probe(self, x: Tensor) -> _Probe:
        return _probe(self.model, x, self.layout, self.prefix_tokens)

    def layers_for(self, x: Tensor) -> tuple[LayerInfo, tuple[LayerInfo, ...]]:
        """The resolved layer and extra layers for inputs shaped like ``x``; probed once per ``x.shape[1:]``."""
        key = tuple(x.shape[1:])
        found = self._layers.get(key)
        if found is None:
            probe = self._probe(x)
            info = _resolve(self.model, probe, self.layer)
            extra = tuple(dict.fromkeys(_resolve(self.model, probe, e) for e in self.extra_layers))
            if self.layer is None:
                logger.warning(
                    "%s: no layer given, using %r (the last spatial map before pooling%s), "
                    "maps of (C, h, w) = %s for inputs %s; pass layer=... to choose another",
                    type(self).__name__,
                    info.name,
                    {"nchw": "", "nhwc": "; channels-last"}.get(info.layout, f"; tokens, {info.prefix} prefix tokens dropped"),
                    info.shape,
                    key,
                )
            found = (info, tuple(e for e in extra if e != info))
            self._layers[key] = found
        return found

    def layer_for(self, x: Tensor) -> LayerInfo:
        """The resolved layer for inputs shaped like ``x``; probed once per ``x.shape[1:]``."""
        return self.layers_for(x)[0]

    def __call__(
        self, x: Tensor, targets: Targets = None, *, autocast: torch.dtype | None = None
    ) -> CAMResult:
        """CAMs for a batch ``x`` ``(N, C_in, H, W)`` on the model's device.

        ``targets``: ``None`` (argmax of the output), class indices ``(N,)`` (or one ``int`` for all),
        or a callable reducing the model output to ``(N,)`` scores. ``autocast`` overrides the
        constructor's setting for this call when given.
        """
        self._check(x)
        dtype = self.autocast if autocast is None else _check_autocast(autocast)
        info, extra = self.layers_for(x)
        infos = sorted((info, *extra), key=lambda i: i.order)
        with torch.inference_mode(False):
            acts, output = self._forward(x, infos, dtype)
            with torch.enable_grad():
                scores, target_idx = _scores(output, targets, x.shape[0])
            if not scores.requires_grad:
                raise ValueError(f"the scores do not depend on layer {infos[0].name!r}; {self._candidates(x)}")
            # Images are independent in eval mode, so d(sum of scores)/dA is each image's own dy/dA.
            grads = torch.autograd.grad(scores.float().sum(), acts, allow_unused=True)
            maps: dict[str, Tensor] = {}
            main_acts: Tensor | None = None
            for layer, a, g in zip(infos, acts, grads, strict=True):
                if g is None:
                    raise ValueError(f"the scores do not depend on layer {layer.name!r}; {self._candidates(x)}")
                with torch.no_grad():
                    a32 = layer.to_nchw(a.detach()).float()
                    weights = self._weights(a32, layer.to_nchw(g).float())
                    maps[layer.name] = torch.einsum("nc,nchw->nhw", weights, a32).relu_()
                if layer.name == info.name:
                    main_acts = a32
        return CAMResult(
            maps=maps.pop(info.name),
            logits=output.detach().float(),
            scores=scores.detach().float(),
            targets=target_idx,
            layer=info.name,
            extra=maps,
            activations=main_acts,
        )

    def _forward(self, x: Tensor, infos: list[LayerInfo], dtype: torch.dtype | None) -> tuple[list[Tensor], Tensor]:
        """No-grad forward whose recording starts at the first of ``infos`` (execution order);
        returns their activations (the first a leaf, the later ones in its graph) and the output."""
        seen = [0] * len(infos)
        acts: list[Tensor | None] = [None] * len(infos)

        def make_hook(k: int, info: LayerInfo) -> Callable[..., Tensor | None]:
            def hook(_module: nn.Module, _inputs: object, out: object) -> Tensor | None:
                call, seen[k] = seen[k], seen[k] + 1
                if call != info.call:
                    return None
                if not isinstance(out, Tensor):
                    raise TypeError(f"layer {info.name!r} returned {type(out).__name__}, not a tensor")
                if k == 0:
                    torch.set_grad_enabled(True)  # undone by the enclosing no_grad's exit, even on errors
                    out = out.detach().requires_grad_(True)
                acts[k] = out
                # Hand the rest of the network a copy: torchvision DenseNet runs F.relu(features,
                # inplace=True) next, which autograd refuses on a leaf (and would overwrite A).
                return out.clone()

            return hook

        handles = [self.model.get_submodule(info.module).register_forward_hook(make_hook(k, info))
                   for k, info in enumerate(infos)]
        try:
            with torch.no_grad(), _autocast_ctx(x.device.type, dtype):
                output = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        for info, a in zip(infos, acts, strict=True):
            if a is None:
                raise ValueError(f"layer {info.name!r} did not run for this batch; {self._candidates(x)}")
        if not isinstance(output, Tensor):
            raise TypeError(
                f"the model returned {type(output).__name__}; wrap it so forward() returns a tensor "
                "(e.g. torchvision segmentation models: lambda x: model(x)['out'])"
            )
        return acts, output  # type: ignore[return-value]

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float tensor (N, C, H, W), got {got}")
        param = next(self.model.parameters(), None)
        if param is not None and param.device != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {param.device}; move x with x.to(...)")
        if any(m.training for m in self.model.modules()):
            name = next(n for n, m in self.model.named_modules() if m.training)
            raise ValueError(
                f"{'the model' if not name else f'module {name!r}'} is in training mode; call model.eval() "
                "first (BatchNorm would mix the images of a batch and dropout would make maps random)"
            )

    def _candidates(self, x: Tensor) -> str:
        return _candidates_text(self._probe(x))


def _check_autocast(dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def _autocast_ctx(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def _scores(output: Tensor, targets: Targets, n: int) -> tuple[Tensor, Tensor | None]:
    """One score per image ``(N,)`` and the class indices behind it (``None`` for a callable)."""
    if callable(targets):
        scores = targets(output)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != (n,):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"targets callable must return one score per image, shape ({n},); got {got}")
        return scores, None
    if output.ndim != 2:
        raise ValueError(
            f"class targets need a (N, classes) output, the model returned {tuple(output.shape)}; "
            "pass targets=callable reducing the output to (N,) scores"
        )
    if targets is None:
        idx = output.argmax(dim=1)
    else:
        idx = torch.as_tensor(targets, dtype=torch.long, device=output.device)
        if idx.ndim == 0:
            idx = idx.expand(n)
        if tuple(idx.shape) != (n,):
            raise ValueError(
                f"targets must hold one class index per image, shape ({n},); got {tuple(idx.shape)}"
            )
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < output.shape[1]):
            raise ValueError(f"targets must be class indices in [0, {output.shape[1]}); got {idx.tolist()}")
    return output.gather(1, idx[:, None]).squeeze(1), idx


@CAM_METHODS.register("gradcam")
class GradCAM(BaseCAM):
    """Grad-CAM: ``w_k = mean_ij dy/dA_kij``, map ``= ReLU(sum_k w_k A_k)``.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.

    >>> cam = GradCAM(resnet.eval())          # layer chosen automatically: "layer4"
    >>> res = cam(images)                     # res.maps (N, 7, 7) for 224x224 inputs
    """

    def _weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3))


@CAM_METHODS.register("gradcam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: ``w_k = sum_ij alpha_kij ReLU(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` and ``g = dy/dA``.

    Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
    WACV 2018, eq. 19, with the exponential's higher derivatives written as powers of the first
    (as pytorch-grad-cam does).

    >>> res = GradCAMPlusPlus(model.eval(), "layer4")(images, targets=labels)
    """

    def _weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        g2 = grads.pow(2)
        denom = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g2 * grads + 1e-6
        alpha = torch.where(grads != 0, g2 / denom, 0.0)
        return (alpha * grads.relu()).sum(dim=(2, 3))


def make_cam(method: str, model: nn.Module, layer: str | None = None, **kw: object) -> BaseCAM:
    """Build the CAM engine registered as ``method`` (see ``CAM_METHODS.names()``)."""
    return CAM_METHODS.get(method)(model, layer, **kw)  # type: ignore[arg-type]
