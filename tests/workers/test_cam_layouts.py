"""Feature-map layouts: transformers (tokens), channels-last maps and several layers in one pass.

Oracle: pytorch-grad-cam with its documented ``reshape_transform`` recipe at the same layer
(https://jacobgil.github.io/pytorch-gradcam-book/vision_transformers.html). Models are tiny,
randomly initialised and built from their configs: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from pytorch_grad_cam import GradCAM as PGCGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from workers.cam import GradCAM, GradCAMPlusPlus, candidate_layers, finer_layer, resolve_layer

timm = pytest.importorskip("timm")

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HFLogits(nn.Module):
    """A transformers classifier whose forward returns the logits tensor (as the hf: source wraps it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def _timm(name: str, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()


@cache
def build(arch: str) -> nn.Module:
    vit = {"img_size": SIZE, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
    if arch == "vit":
        return _timm("vit_tiny_patch16_224", **vit)
    if arch == "deit":  # CLS + distillation token
        return _timm("deit_tiny_distilled_patch16_224", **vit)
    if arch == "vit_reg_gap":  # 4 register tokens, no CLS, mean-pooled
        return _timm("vit_base_patch16_reg4_gap_256", **vit)
    if arch == "swin":  # channels-last stages
        return _timm("swin_tiny_patch4_window7_224", img_size=SIZE, embed_dim=16, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 2, 2), window_size=2)
    if arch == "convnext":
        return _timm("convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    if arch == "hf_vit":
        transformers = pytest.importorskip("transformers")
        cfg = transformers.ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=5)
        torch.manual_seed(0)
        return HFLogits(transformers.ViTForImageClassification(cfg)).eval()
    raise KeyError(arch)


# arch -> (automatic layer, layout, prefix tokens, grid)
AUTO = {
    "vit": ("blocks.1.norm1", "tokens", 1, (8, 8)),
    "deit": ("blocks.1.norm1", "tokens", 2, (8, 8)),
    "vit_reg_gap": ("norm", "tokens", 4, (8, 8)),
    "swin": ("norm", "nhwc", 0, (2, 2)),
    "convnext": ("norm_pre", "nchw", 0, (2, 2)),
    "hf_vit": ("model.vit.layers.1.layernorm_before", "tokens", 1, (8, 8)),
}


def images(n: int = 3, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def reshape_transform(layout: str, prefix: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor] | None:
    """pytorch-grad-cam's recipe: drop the prefix tokens, reshape to the grid, channels first."""
    if layout == "tokens":
        return lambda t: t[:, prefix:, :].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)
    if layout == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)
    return None


def pgc_maps(net: nn.Module, layer: str, x: Tensor, targets: Tensor, rt: Callable | None) -> np.ndarray:
    cam = PGCGradCAM(model=net, target_layers=[net.get_submodule(layer)], reshape_transform=rt)
    try:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        return np.maximum(cam.get_cam_image(x, net.get_submodule(layer), None, acts, grads), 0)
    finally:
        cam.activations_and_grads.release()
        net.zero_grad(set_to_none=True)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize("arch", list(AUTO))
def test_automatic_map_is_on_the_patch_grid_and_matches_pytorch_grad_cam(arch: str):
    net, x = build(arch), images()
    want_layer, layout, prefix, grid = AUTO[arch]
    cam = GradCAM(net)
    res = cam(x)
    info = cam.layer_for(x)
    assert (res.layer, info.layout, info.prefix) == (want_layer, layout, prefix)
    assert res.maps.shape == (3, *grid)
    ref = pgc_maps(net, info.module, x, res.targets, reshape_transform(layout, prefix, grid))
    assert float(res.maps.std()) > 0, "degenerate maps test nothing"
    for got, want in zip(res.maps.numpy(), ref, strict=True):
        assert pearson(got, want) >= 0.99
    np.testing.assert_allclose(res.maps.numpy(), ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("arch", ["vit", "deit", "swin", "hf_vit"])
def test_attention_internals_are_never_chosen_nor_head_dims_maps(arch: str):
    net, x = build(arch), images(1)
    layers = candidate_layers(net, x)
    names = [c.name for c in layers]
    # The bug this guards against: (heads, tokens, head_dim) read as a (C, h, w) map.
    assert not any(n.endswith(("q_norm", "k_norm")) for n in names)
    assert all(c.shape[1:] == AUTO[arch][3] or c.shape[1] * c.shape[2] > 1 for c in layers)
    auto = resolve_layer(net, x)
    attention = [n for n, m in net.named_modules() if "attention" in type(m).__name__.lower()]
    assert attention and not any(auto.module.startswith(a) for a in attention)


def test_cls_vit_picks_the_last_layer_whose_patch_tokens_get_gradient():
    """After the last block's attention only the CLS token reaches the head: the final norm's
    patch tokens get exactly zero gradient, so a map there is all zero."""
    net, x = build("vit"), images(2)
    last = GradCAM(net, "norm")(x)
    assert float(last.maps.abs().max()) == 0.0
    assert float(GradCAM(net)(x).maps.abs().max()) > 0


def test_layout_and_prefix_overrides():
    net, x = build("vit"), images(2)
    auto = GradCAM(net)(x)
    forced = GradCAM(net, layout="tokens", prefix_tokens=1)(x)
    torch.testing.assert_close(forced.maps, auto.maps)
    # Read as NCHW, a token sequence is no map: the explicit layer is refused with the candidates.
    with pytest.raises(ValueError, match="not a spatial map.*blocks.1.norm1|not a spatial map"):
        GradCAM(net, "blocks.1.norm1", layout="nchw")(x)
    with pytest.raises(ValueError, match="layout must be"):
        GradCAM(net, layout="nwhc")
    with pytest.raises(ValueError, match=r"not a spatial map.*automatic choice blocks\.1\.norm1; .*norm \(32, 8, 8\) tokens"):
        GradCAM(net, "blocks.1.attn.q_norm")(x)


def test_swin_channels_last_candidates_and_windows():
    net, x = build("swin"), images(1)
    layers = candidate_layers(net, x)
    assert {c.layout for c in layers} >= {"nhwc", "nchw"}  # patch_embed.proj is a conv
    # Window tensors (N * windows, ...) are not batch-major and are skipped.
    assert not any(".attn." in c.name for c in layers if c.layout == "nhwc")


# --- several layers in one pass ---------------------------------------------------------------


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus])
def test_extra_layers_equal_separate_cams(method):
    torch.manual_seed(0)
    net, x = tvm.resnet18(weights=None).eval(), images(2)
    both = method(net, extra_layers=("layer3",))(x)
    alone = method(net)(x)
    fine = method(net, "layer3")(x, targets=alone.targets)
    assert both.layer == "layer4" and list(both.extra) == ["layer3"]
    torch.testing.assert_close(both.maps, alone.maps)
    torch.testing.assert_close(both.extra["layer3"], fine.maps)
    torch.testing.assert_close(both.logits, alone.logits)


def test_extra_layer_may_come_after_the_main_one_and_duplicates_collapse():
    torch.manual_seed(0)
    net, x = tvm.resnet18(weights=None).eval(), images(2)
    res = GradCAM(net, "layer3", extra_layers=("layer4", "layer3"))(x)
    assert res.layer == "layer3" and list(res.extra) == ["layer4"]
    torch.testing.assert_close(res.extra["layer4"], GradCAM(net)(x, targets=res.targets).maps)


def test_finer_layer_is_the_last_usable_stage_with_more_cells():
    torch.manual_seed(0)
    net, x = tvm.resnet18(weights=None).eval(), images(1)
    assert finer_layer(net, x).name == "layer3"
    assert finer_layer(net, x, "layer3").name == "layer2"
    assert finer_layer(build("swin"), x).shape[1:] == (4, 4)
    assert finer_layer(build("vit"), x) is None  # one grid throughout
