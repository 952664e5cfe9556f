"""Where the UNet step time goes, and what each eager/compiled option buys (GPU machine; feeds engine/accel.py).

    python -m tests.gpu.speed_probe --out tests/gpu/results/speed_probe-h100.json [--kinds sd1 sdxl] [--compile]

For each architecture (real-size, random fp16 weights) it times one CFG step (UNet on batch 2) under variants:
eager; + channels_last; + fused QKV; CUDA-graph replay (engine/accel.py) with each; optionally inductor compiles
(in the given mode, alone and under our graph replay), with the compile time. It also
prints the top CUDA kernels of the graph-replayed step (torch.profiler) so the remaining time is explained.
Every variant's output is compared with the plain eager output (max |diff|).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modules.engine.accel import GraphedForward
from tests.support.tiny_checkpoints import layout_for

logger = logging.getLogger("speed_probe")
SIZES = {"sd1": (64, 77, 768), "sdxl": (128, 77, 2048)}


def build_unet(kind: str) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    config = dict(layout_for(kind, "full").unet)
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**config)
    return unet.half().eval().requires_grad_(False)


def inputs_for(kind: str) -> dict[str, Any]:
    latent, tokens, width = SIZES[kind]
    gen = torch.Generator("cuda").manual_seed(1)
    args: dict[str, Any] = {
        "sample": torch.randn(2, 4, latent, latent, device="cuda", generator=gen).half(),
        "timestep": torch.tensor([500.0, 500.0], device="cuda"),
        "encoder_hidden_states": torch.randn(2, tokens, width, device="cuda", generator=gen).half(),
    }
    if kind == "sdxl":
        args["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 1280, device="cuda", generator=gen).half(),
            "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2, device="cuda").half(),
        }
    return args


def time_step(fn: Callable[[], torch.Tensor], iters: int = 30) -> float:
    """Median-free simple timing: ms per call over ``iters`` calls after 3 warm-ups (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def top_kernels(fn: Callable[[], torch.Tensor], n: int = 15) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        cuda_us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if cuda_us > 0:
            rows.append({"name": evt.key[:90], "ms_per_step": cuda_us / 5 / 1000, "calls_per_step": evt.count / 5})
    rows.sort(key=lambda r: -r["ms_per_step"])
    total = sum(r["ms_per_step"] for r in rows)
    return [{"total_ms": total}, *rows[:n]]


def probe(kind: str, compile_mode: str | None) -> dict[str, Any]:
    unet = build_unet(kind)
    args = inputs_for(kind)
    results: dict[str, Any] = {}

    def call(module: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return module(**args, return_dict=False)[0]

        return run

    with torch.inference_mode():
        reference = unet(**args, return_dict=False)[0].float()

    def record(name: str, fn: Callable[[], torch.Tensor], extra: dict | None = None) -> None:
        ms = time_step(fn)
        diff = float((fn().float() - reference).abs().max())
        results[name] = {"ms": ms, "it_s": 1000 / ms, "max_diff": diff, **(extra or {})}
        logger.info("%s %-40s %7.2f ms  %6.1f it/s  diff %.2e", kind, name, ms, 1000 / ms, diff)

    record("eager", call(unet))
    graphed = GraphedForward(unet)
    record("graphs", call(graphed))
    results["profile_graphs"] = top_kernels(call(graphed))
    unet.to(memory_format=torch.channels_last)
    record("eager+channels_last", call(unet))
    graphed_cl = GraphedForward(unet)
    record("graphs+channels_last", call(graphed_cl))
    unet.fuse_qkv_projections()
    record("eager+channels_last+fused_qkv", call(unet))
    graphed_all = GraphedForward(unet)
    record("graphs+channels_last+fused_qkv", call(graphed_all))
    results["profile_graphs_cl_qkv"] = top_kernels(call(graphed_all))
    for g in (graphed, graphed_cl, graphed_all):
        g.clear()
    unet.unfuse_qkv_projections()
    from modules.engine import group_norm

    gn = torch.nn.GroupNorm(32, 640).cuda().half()
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    for shape in ((2, 640, 64, 64), (2, 640, 17, 23)):
        xs = torch.randn(*shape, device="cuda").half().to(memory_format=torch.channels_last) * 3 + 1
        with torch.inference_mode():
            ref = torch.nn.functional.group_norm(xs.float(), 32, gn.weight.float(), gn.bias.float(), gn.eps)
            got = group_norm.group_norm_nhwc(xs, gn)
        results[f"triton_gn_max_diff_{shape}"] = float((got.float() - ref).abs().max())
        logger.info("triton GN %s max diff vs fp32 reference %.3e", shape, results[f"triton_gn_max_diff_{shape}"])
    installed = group_norm.install(unet)
    results["triton_gn_layers"] = installed
    record("eager+channels_last+triton_gn", call(unet))
    graphed_gn = GraphedForward(unet)
    record("graphs+channels_last+triton_gn", call(graphed_gn))
    results["profile_graphs_cl_triton_gn"] = top_kernels(call(graphed_gn))
    graphed_gn.clear()
    group_norm.uninstall(unet)
    torch.backends.cudnn.benchmark = True
    graphed_bench = GraphedForward(unet)
    record("graphs+channels_last+fused_qkv+cudnn_benchmark", call(graphed_bench))
    graphed_bench.clear()
    torch.backends.cudnn.benchmark = False
    if compile_mode:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True
        inductor.coordinate_descent_tuning = True
        inductor.epilogue_fusion = False
        t0 = time.perf_counter()
        compiled = torch.compile(unet, mode=compile_mode, fullgraph=True)
        call(compiled)()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        record(f"compiled({compile_mode})", call(compiled), {"compile_s": compile_s})

        graphed_compiled = GraphedForward(unet)
        graphed_compiled._eager = compiled  # replay the compiled kernels through our graph capture
        record(f"compiled({compile_mode})+graphs", call(graphed_compiled))
        results["profile_compiled_graphs"] = top_kernels(call(graphed_compiled))
        graphed_compiled.clear()
    del unet
    torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kinds", nargs="+", default=["sd1", "sdxl"])
    parser.add_argument("--compile", default=None, help="also an inductor compile in this mode (e.g. default)")
    parser.add_argument("--compile-kinds", nargs="+", default=["sd1"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = True
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for kind in args.kinds:
        report[kind] = probe(kind, args.compile if kind in args.compile_kinds else None)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
