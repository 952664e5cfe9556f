"""Where one CFG step of the app's own UNet goes on the GPU, by kernel class (GPU machine; feeds engine/accel.py).

    python -m tests.gpu.unet_profile CHECKPOINT [CHECKPOINT ...] [--batch 1 8] [--out FILE]
    python -m tests.gpu.unet_profile CHECKPOINT --compile [--inductor max_autotune=True ...] --out FILE

Each checkpoint is loaded through the app's loader (so the UNet is prepared exactly as for a job: fp16,
channels_last where the engine uses it, merged projections), then one CFG step (batch 2×N) is replayed from a CUDA
graph and profiled with torch.profiler. Kernels are summed by class (matmul, convolution, attention, normalization,
elementwise, layout copies, other) and the largest are listed by name, next to the step time and its share of the
FLOP limit (performance.md §1). With ``--compile`` the step is the ``--compile`` path's (inductor's kernels in the
graph) after the background compile has finished, with inductor's config options from ``--inductor`` (one process per
set of options: inductor reads them when it compiles); the entry also has the compile's seconds and the output's
difference to the eager graph.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from modules.engine import geglu, group_norm
from modules.engine.loader import LoadOptions, load_checkpoint
from modules.engine.types import CheckpointInfo

FLOP_PER_STEP = {"sd1": 1.607e12, "sdxl": 13.52e12}  # UNet with CFG (batch 2), performance.md §1
CLASSES = (
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("convolution", ("fprop", "conv", "implicit_gemm", "winograd", "dgrad")),
    ("matmul", ("gemm", "xmma", "cutlass", "sm90_", "matmul", "triton_tem")),
    ("normalization", ("norm", "moments", "welford")),
    ("layout", ("nchwtonhwc", "nhwctonchw", "transpose", "copy_kernel", "cat")),
    ("elementwise", ("elementwise", "reduce", "silu", "gelu", "add", "mul", "softmax")),
)


def kernel_class(name: str) -> str:
    """The class of a kernel by its name; inductor's generated kernels (``triton_poi/per/red_fused_…``, named after
    every op they fuse, e.g. ``…_convolution_native_group_norm_silu``) are ``fused (inductor)``, its GEMM templates
    (``triton_tem_…``) ``matmul``."""
    low = name.lower()
    if low.startswith("triton_") and not low.startswith("triton_tem"):
        return "fused (inductor)"
    for label, needles in CLASSES:
        if any(n in low for n in needles):
            return label
    return "other"


def step_inputs(model: Any, batch: int) -> tuple[tuple, dict]:
    """Inputs of one CFG step at the model's native size (512² SD1/SD2, 1024² SDXL)."""
    unet, sdxl = model.components.unet, model.model_type.is_sdxl
    side = 128 if sdxl else 64
    n = 2 * batch
    gen = torch.Generator().manual_seed(batch)  # on the CPU: the inputs never depend on CUDA's generator state

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to("cuda", torch.float16)

    x = randn(n, unet.config.in_channels, side, side)
    conv_weight = next(p for p in unet.parameters() if p.ndim == 4)
    if conv_weight.is_contiguous(memory_format=torch.channels_last):
        x = x.to(memory_format=torch.channels_last)
    ctx = randn(n, 77, unet.config.cross_attention_dim)
    t = torch.full((n,), 500.0, device="cuda")
    kwargs: dict[str, Any] = {"encoder_hidden_states": ctx}
    if sdxl:
        ids = torch.tensor([[side * 8.0, side * 8.0, 0, 0, side * 8.0, side * 8.0]] * n, device="cuda")
        kwargs["added_cond_kwargs"] = {
            "text_embeds": randn(n, 1280),
            "time_ids": ids.half(),
        }
    return (x, t), kwargs


def kernel_profile(fn: Callable[[], Any], top: int = 15, runs: int = 3, *, warm: bool = True) -> dict[str, Any]:
    """GPU kernel milliseconds per call of ``fn`` (``runs`` calls under torch.profiler): the total, the sum by
    :func:`kernel_class` and the ``top`` largest kernels by name. With ``warm``, one call first (outside the profile).
    """
    if warm:
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", 0) or 0
        if us > 0:
            rows.append({"name": event.key[:110], "ms": us / runs / 1000, "calls": event.count / runs})
    rows.sort(key=lambda r: -r["ms"])
    by_class: dict[str, float] = {}
    for row in rows:
        label = kernel_class(row["name"])
        by_class[label] = by_class.get(label, 0.0) + row["ms"]
    return {
        "kernel_ms_total": sum(r["ms"] for r in rows),
        "by_class_ms": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
        "top": rows[:top],
    }


def profile_step(model: Any, batch: int, top: int = 25) -> dict[str, Any]:
    unet = model.components.unet
    args, kwargs = step_inputs(model, batch)

    def step() -> Any:
        with torch.inference_mode():
            return unet(*args, **kwargs)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 30
    start.record()
    for _ in range(iters):
        step()
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / iters
    kernels = kernel_profile(step, top=top, runs=5, warm=False)
    kind = "sdxl" if model.model_type.is_sdxl else "sd1"
    tflops = FLOP_PER_STEP[kind] * batch / (ms / 1000) / 1e12
    return {
        "batch": batch,
        "ms_per_step": ms,
        "it_s": 1000 / ms,
        "tflops": tflops,
        **kernels,
    }


def run_variants(model: Any, report: dict[str, Any], stem: str) -> None:
    """Batch-1 step without each hand-written kernel (and SDXL in channels_last), output difference to the default."""
    unet = model.components.unet
    ref_out = _output(model)

    def measure(label: str) -> None:
        unet.forward.clear()
        entry = profile_step(model, 1, top=8)
        entry["max_diff_vs_default"] = float((_output(model) - ref_out).abs().max())
        report[f"{stem}_{label}"] = [entry]

    geglu.uninstall(unet)
    measure("no_geglu_kernel")
    geglu.install(unet)
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    for first in backends:
        with sdpa_kernel([first, *[b for b in backends if b is not first]], set_priority=True):
            measure(f"sdpa_{first.name.lower()}_first")
    if model.model_type.is_sdxl:
        unet.to(memory_format=torch.channels_last)
        group_norm.install(unet)
        measure("channels_last_gn_kernel")
        group_norm.uninstall(unet)
        group_norm.install(unet, fuse_silu=False)
        measure("channels_last_gn_kernel_no_silu_fusion")
        group_norm.uninstall(unet)
        unet.to(memory_format=torch.contiguous_format)
    else:
        for label, fuse in (("gn_kernel_no_silu_fusion", False), ("torch_group_norm", None)):
            group_norm.uninstall(unet)
            if fuse is not None:
                group_norm.install(unet, fuse_silu=fuse)
            measure(label)
        group_norm.uninstall(unet)
        group_norm.install(unet)
    unet.forward.clear()


def _output(model: Any) -> torch.Tensor:
    args, kwargs = step_inputs(model, 1)
    with torch.inference_mode():
        return model.components.unet(*args, **kwargs, return_dict=False)[0].float().clone()


def compiled_step(model: Any, batch: int, options: dict[str, Any]) -> dict[str, Any]:
    """The step of the ``--compile`` path (loaded with ``compile=True``): eager graph first, then the compiled one."""
    unet = model.components.unet
    eager = _output(model) if batch == 1 else None
    args, kwargs = step_inputs(model, batch)
    with torch.inference_mode():
        unet(*args, **kwargs)  # captures the eager graph and queues the compile for this signature
    started = time.perf_counter()
    if not unet.forward.compiler.wait(timeout=3600):
        raise RuntimeError("the compile did not finish")
    seconds = time.perf_counter() - started
    entry = profile_step(model, batch)
    if "compiled" not in unet.forward.captured:
        raise RuntimeError(f"the step did not run compiled: {unet.forward.captured}")
    entry.update(inductor=options, compile_s=seconds)
    if eager is not None:
        entry["max_diff_vs_eager"] = float((_output(model) - eager).abs().max())
    return entry


def _inductor_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs set on ``torch._inductor.config`` (values as Python literals where they parse)."""
    import ast

    import torch._inductor.config as inductor_config

    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        setattr(inductor_config, key, value)
        options[key] = value
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variants", action="store_true", help="also without each hand-written kernel")
    parser.add_argument("--compile", action="store_true", help="the --compile path's step (after its compile)")
    parser.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE", help="inductor config (--compile)")
    args = parser.parse_args()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    inductor = _inductor_options(args.inductor)
    for path in args.checkpoints:
        options = LoadOptions(device="cuda", dtype="float16", compile=args.compile)
        model = load_checkpoint(CheckpointInfo(path, path.name), options)
        if args.compile:
            report[path.stem] = [compiled_step(model, b, inductor) for b in args.batch]
        else:
            report[path.stem] = [profile_step(model, b) for b in args.batch]
        if args.variants:
            run_variants(model, report, path.stem)
        if args.out:  # after each checkpoint, so a later failure keeps what was measured
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        for name in [k for k in report if k.startswith(path.stem)]:
            for entry in report[name]:
                print(name, json.dumps({k: v for k, v in entry.items() if k != "top"}), flush=True)
        del model
        torch.cuda.empty_cache()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
