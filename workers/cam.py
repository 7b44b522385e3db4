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
one-image probe forward that is cached per input size. Models without global pooling (segmentation)
have no such map before their output, and the automatic choice is then the last spatial map that is
not the output itself, often the low-resolution logits: name the layer there.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.registry import Registry

__all__ = [
    "CAM_METHODS",
    "BaseCAM",
    "CAMResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerInfo",
    "candidate_layers",
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


@dataclass(frozen=True)
class LayerInfo:
    """One call of a module whose output is a spatial map ``(N, C, h, w)`` with ``h * w > 1``.

    ``name`` is the spec that selects exactly this call: the dotted module name, with ``@call``
    appended only when the module runs more than once per forward (``"layer4"``, ``"_swish@1"``).
    """

    name: str
    module: str
    call: int
    calls: int
    shape: tuple[int, int, int]  # (C, h, w)


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
    activations: Tensor | None = None


@dataclass(frozen=True)
class _Probe:
    spatial: list[LayerInfo]  # execution order
    calls: dict[str, int]
    shapes: dict[tuple[str, int], tuple[int, ...]]  # every tensor-valued call, batch dim dropped
    auto: LayerInfo | None


def _probe(model: nn.Module, x: Tensor) -> _Probe:
    """Run one image through ``model`` recording every module call's output shape, in order."""
    counts: Counter[str] = Counter()
    events: list[tuple[str, int, tuple[int, ...], weakref.ref[Tensor], bool]] = []

    def recorder(name: str, module: nn.Module) -> Callable[..., None]:
        head_pool = isinstance(module, _HEAD_POOLS)

        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            call = counts[name]
            counts[name] += 1
            if isinstance(out, Tensor):
                events.append((name, call, tuple(out.shape[1:]), weakref.ref(out), head_pool))

        return hook

    handles = [m.register_forward_hook(recorder(n, m)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode(False), torch.no_grad():
            output = model(x[:1])
    finally:
        for handle in handles:
            handle.remove()

    outputs = [output] if isinstance(output, Tensor) else _tensors_in(output)
    spatial: list[LayerInfo] = []
    auto: LayerInfo | None = None
    for name, call, shape, ref, head_pool in events:
        if len(shape) != 3 or shape[1] * shape[2] <= 1:
            continue
        n = counts[name]
        info = LayerInfo(name if n == 1 else f"{name}@{call}", name, call, n, shape)  # type: ignore[arg-type]
        spatial.append(info)
        # Hooks fire innermost first, so among modules returning the same tensor (layer4.1.relu,
        # layer4.1, layer4) the last event is the outermost one, after any in-place edits.
        out = ref()
        if not head_pool and not any(out is o for o in outputs):
            auto = info
    return _Probe(
        spatial=spatial,
        calls=dict(counts),
        shapes={(name, call): shape for name, call, shape, _, _ in events},
        auto=auto,
    )


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
    listed = ", ".join(f"{c.name} {c.shape}" for c in shown)
    return f"last {len(shown)} spatial candidates, name (C, h, w): {listed}"


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
        f"layer {layer!r}: output is {got}, not a spatial map (N, C, h, w) with h*w > 1; "
        f"{_candidates_text(probe)}"
    )


def candidate_layers(model: nn.Module, x: Tensor) -> list[LayerInfo]:
    """Every module call with a spatial output, in execution order, from a one-image probe of ``x``."""
    return _probe(model, x).spatial


def resolve_layer(model: nn.Module, x: Tensor, layer: str | None = None) -> LayerInfo:
    """The layer call ``layer`` selects for inputs shaped like ``x`` (``None``: automatic).

    Raises ``ValueError`` listing candidates when ``layer`` is not a spatial map of ``model``.
    """
    return _resolve(model, _probe(model, x), layer)


class BaseCAM:
    """Batched gradient CAM: hooks, validation and layer resolution; subclasses give :meth:`_weights`.

    The map is ``ReLU(sum_k w_k A_k)`` for the activations ``A`` ``(N, C, h, w)`` of ``layer`` and
    channel weights ``w`` ``(N, C)`` computed from ``A`` and ``dy/dA``, where ``y`` is one score per
    image: the logit of ``targets`` (default: the predicted class) or ``targets(output)``.
    ``autocast`` (``torch.bfloat16``/``torch.float16``) runs the forward in that precision; weights
    and maps are always computed in float32. The model must be in eval mode: in train mode
    BatchNorm mixes images and a CAM would depend on its batch.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, autocast: torch.dtype | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer = layer
        self.autocast = _check_autocast(autocast)
        self._layers: dict[tuple[int, ...], LayerInfo] = {}

    def _weights(self, activations: Tensor, grads: Tensor) -> Tensor:
        """Channel weights ``(N, C)`` from float32 ``activations`` and ``grads`` ``(N, C, h, w)``."""
        raise NotImplementedError

    def layer_for(self, x: Tensor) -> LayerInfo:
        """The resolved layer for inputs shaped like ``x``; probed once per ``x.shape[1:]``."""
        key = tuple(x.shape[1:])
        info = self._layers.get(key)
        if info is None:
            info = _resolve(self.model, _probe(self.model, x), self.layer)
            if self.layer is None:
                logger.warning(
                    "%s: no layer given, using %r (the last spatial map before pooling), "
                    "maps of (C, h, w) = %s for inputs %s; pass layer=... to choose another",
                    type(self).__name__,
                    info.name,
                    info.shape,
                    key,
                )
            self._layers[key] = info
        return info

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
        info = self.layer_for(x)
        with torch.inference_mode(False):
            leaf, output = self._forward(x, info, dtype)
            with torch.enable_grad():
                scores, target_idx = _scores(output, targets, x.shape[0])
            if not scores.requires_grad:
                raise ValueError(f"the scores do not depend on layer {info.name!r}; {self._candidates(x)}")
            # Images are independent in eval mode, so d(sum of scores)/dA is each image's own dy/dA.
            (grads,) = torch.autograd.grad(scores.float().sum(), leaf, allow_unused=True)
            if grads is None:
                raise ValueError(f"the scores do not depend on layer {info.name!r}; {self._candidates(x)}")
            with torch.no_grad():
                acts = leaf.detach().float()
                weights = self._weights(acts, grads.float())
                maps = torch.einsum("nc,nchw->nhw", weights, acts).relu_()
        return CAMResult(
            maps=maps,
            logits=output.detach().float(),
            scores=scores.detach().float(),
            targets=target_idx,
            layer=info.name,
            activations=acts,
        )

    def _forward(self, x: Tensor, info: LayerInfo, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
        """No-grad forward whose recording starts at ``info``'s call; returns (leaf A, output)."""
        seen = 0
        leaves: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: object, out: object) -> Tensor | None:
            nonlocal seen
            call, seen = seen, seen + 1
            if call != info.call:
                return None
            if not isinstance(out, Tensor):
                raise TypeError(f"layer {info.name!r} returned {type(out).__name__}, not a tensor")
            torch.set_grad_enabled(True)  # undone by the enclosing no_grad's exit, even on errors
            leaf = out.detach().requires_grad_(True)
            leaves.append(leaf)
            # Hand the rest of the network a copy: torchvision DenseNet runs F.relu(features,
            # inplace=True) next, which autograd refuses on a leaf (and would overwrite A).
            return leaf.clone()

        handle = self.model.get_submodule(info.module).register_forward_hook(hook)
        try:
            with torch.no_grad(), _autocast_ctx(x.device.type, dtype):
                output = self.model(x)
        finally:
            handle.remove()
        if not leaves:
            raise ValueError(f"layer {info.name!r} did not run for this batch; {self._candidates(x)}")
        if not isinstance(output, Tensor):
            raise TypeError(
                f"the model returned {type(output).__name__}; wrap it so forward() returns a tensor "
                "(e.g. torchvision segmentation models: lambda x: model(x)['out'])"
            )
        return leaves[0], output

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
        return _candidates_text(_probe(self.model, x))


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
