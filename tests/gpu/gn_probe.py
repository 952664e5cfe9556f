"""The GroupNorm kernel's split form vs the one-program-per-group form, in a whole UNet step (GPU machine, no files).

    python -m tests.gpu.gn_probe [--out FILE]

Builds the real-size SD1.5 and SDXL UNets straight on the GPU (the app's networks, random fp16 weights; speed does
not depend on the values), prepared as the loader prepares them (engine/accel.py), and times one CFG step replayed
from a CUDA graph (SD1.5 batch 1 and 8, SDXL batch 1) with the split form allowed (the default) and disabled, plus
each form's output difference to PyTorch's GroupNorm.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from modules.engine import group_norm
from modules.engine.accel import enable_cuda_graphs, prepare_unet
from modules.engine.detection import detect_model_type
from modules.engine.ldm_yaml import build_architecture
from modules.engine.nets.unet import UNet
from tests.gpu.unet_profile import FLOP_PER_STEP
from tests.support.tiny_checkpoints import header_shapes


def build(kind: str) -> tuple[UNet, bool]:
    shapes = {k: tuple(v) for k, v in header_shapes(kind, "full").items()}
    model_type = detect_model_type(shapes, source=kind)
    arch = build_architecture(shapes, model_type, None, source=kind)
    with torch.device("cuda"):
        unet = UNet(arch.unet)
    unet = unet.half().eval().requires_grad_(False)
    torch.manual_seed(0)
    for p in unet.parameters():
        p.normal_(0.0, 0.02)
    prepare_unet(unet, model_type, "cuda")
    enable_cuda_graphs(unet)
    return unet, model_type.is_sdxl


def inputs(unet: UNet, sdxl: bool, batch: int) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(batch)
    n, side = 2 * batch, 128 if sdxl else 64

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to("cuda", torch.float16)

    x = randn(n, 4, side, side).to(memory_format=torch.channels_last)
    kwargs: dict[str, Any] = {"encoder_hidden_states": randn(n, 77, unet.config.cross_attention_dim)}
    if sdxl:
        ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * n, device="cuda").half()
        kwargs["added_cond_kwargs"] = {"text_embeds": randn(n, 1280), "time_ids": ids}
    return (x, torch.full((n,), 500.0, device="cuda")), kwargs


def step_ms(unet: UNet, args: tuple, kwargs: dict) -> tuple[float, torch.Tensor]:
    unet.forward.clear()
    with torch.inference_mode():
        for _ in range(5):
            out = unet(*args, **kwargs, return_dict=False)[0]
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(30):
            unet(*args, **kwargs, return_dict=False)
        end.record()
        end.synchronize()
    return start.elapsed_time(end) / 30, out.float().clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    default_target = group_norm.TARGET_PROGRAMS
    for kind in ("sd1", "sdxl"):
        unet, sdxl = build(kind)
        for batch in (1,) if sdxl else (1, 8):
            a, kw = inputs(unet, sdxl, batch)
            row: dict[str, Any] = {}
            split_ms, split_out = step_ms(unet, a, kw)
            group_norm.TARGET_PROGRAMS = 0  # every GroupNorm as one program per (image, group)
            whole_ms, whole_out = step_ms(unet, a, kw)
            group_norm.TARGET_PROGRAMS = default_target
            group_norm.uninstall(unet)
            torch_ms, torch_out = step_ms(unet, a, kw)
            group_norm.install(unet)
            flop = FLOP_PER_STEP["sdxl" if sdxl else "sd1"] * batch
            row = {
                "split_ms": split_ms,
                "one_program_per_group_ms": whole_ms,
                "pytorch_group_norm_ms": torch_ms,
                "split_tflops": flop / split_ms / 1e9,
                "max_diff_split_vs_pytorch": float((split_out - torch_out).abs().max()),
                "max_diff_one_program_vs_pytorch": float((whole_out - torch_out).abs().max()),
            }
            report[f"{kind}_b{batch}"] = row
            print(kind, batch, json.dumps(row), flush=True)
        del unet
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
