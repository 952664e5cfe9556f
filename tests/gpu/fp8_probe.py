"""FP8 matmuls in the UNet's transformer blocks: step time and output difference (Hopper GPU machine, no files).

    python -m tests.gpu.fp8_probe [--out FILE]

Builds the real-size SD1.5 and SDXL UNets as engine/accel.py prepares them (gn_probe's ``build``), times one CFG step
replayed from a CUDA graph, then replaces the linear layers of the spatial transformers (attention projections,
feed-forward, SDXL's proj_in/proj_out) by FP8 (e4m3) matmuls and times it again:

- ``rowwise``: weights quantised once per output channel, activations per row at run time by one Triton kernel
  (read fp16 row, amax, scale, write fp8 + scale), ``torch._scaled_mm`` with row/column scales;
- ``tensorwise``: weights per tensor, activations per tensor at run time with torch ops (amax, divide, cast);
- ``gemm_only``: the rowwise GEMMs with activations quantised in advance (the bound FP8 matmuls alone could reach).

Reports ms per step, the matmul shapes, and each variant's output difference to the fp16 step (relative L2 and max
absolute), on random weights: the figures say what FP8 costs and gains, not how an image from real weights looks.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.gpu.gn_probe import build, inputs, step_ms

E4M3_MAX = 448.0


@functools.cache
def _row_quant_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def row_quant(x_ptr, q_ptr, s_ptr, cols, BLOCK: tl.constexpr):  # noqa: N803
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-6) / 448.0
        tl.store(q_ptr + row * cols + offs, (x / scale).to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + row, scale)

    return row_quant


def row_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) fp16 → e4m3 and (rows, 1) fp32 scales (amax / 448 per row)."""
    import triton

    rows, cols = x.shape
    q = torch.empty_like(x, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(cols)
    _row_quant_kernel()[(rows,)](x, q, s, cols, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return q, s


class Fp8Linear(nn.Module):
    """A linear layer computed as an FP8 matmul (see the module docstring for the variants)."""

    def __init__(self, linear: nn.Linear, mode: str, shapes: list, failures: list) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.mode, self.out_features, self.shapes, self.failures = mode, w.shape[0], shapes, failures
        if mode == "tensorwise":
            scale = w.abs().amax().clamp(min=1e-6) / E4M3_MAX
            self.w_scale = scale.reshape(()).float()
        else:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-6) / E4M3_MAX
            self.w_scale = scale.t().contiguous().float()  # (1, N)
        self.wq = (w / scale).to(torch.float8_e4m3fn).t()  # (K, N), column-major as _scaled_mm wants
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.cache: dict[tuple, tuple] = {}
        self.fp16_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        self.shapes.append((x2.shape[0], k, self.out_features))
        if self.mode == "tensorwise":
            s = (x2.abs().amax().float().clamp(min=1e-6) / E4M3_MAX).reshape(())
            q = (x2 / s).to(torch.float8_e4m3fn)
        elif self.mode == "gemm_only":
            key = tuple(x2.shape)  # quantised once per shape: stale values, the GEMM's time alone
            if key not in self.cache:
                self.cache[key] = row_quant(x2)
            q, s = self.cache[key]
        else:
            q, s = row_quant(x2)
        if self.fp16_out:
            try:
                return self._mm(q, s, torch.float16).reshape(*lead, self.out_features)
            except RuntimeError as exc:  # builds whose row-wise scaling wants a bfloat16 output
                self.failures.append(f"{self.mode} fp16 out: {exc}"[:300])
                self.fp16_out = False
        return self._mm(q, s, torch.bfloat16).to(torch.float16).reshape(*lead, self.out_features)

    def _mm(self, q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(out_dtype)
        return torch._scaled_mm(
            q, self.wq, scale_a=scale, scale_b=self.w_scale, bias=bias, out_dtype=out_dtype, use_fast_accum=True
        )


def swap(unet: nn.Module, mode: str, shapes: list, failures: list) -> dict[str, nn.Module]:
    """Replace every nn.Linear inside the spatial transformers; returns the originals by name."""
    originals: dict[str, nn.Module] = {}
    for name, module in list(unet.named_modules()):
        if type(module).__name__ != "SpatialTransformer":
            continue
        for sub, child in list(module.named_modules()):
            if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                parent = module.get_submodule(sub.rpartition(".")[0]) if "." in sub else module
                attr = sub.rpartition(".")[2]
                originals[f"{name}.{sub}"] = child
                setattr(parent, attr, Fp8Linear(child, mode, shapes, failures))
    return originals


def restore(unet: nn.Module, originals: dict[str, nn.Module]) -> None:
    for full, child in originals.items():
        parent_name, _, attr = full.rpartition(".")
        setattr(unet.get_submodule(parent_name), attr, child)


def difference(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {
        "rel_l2": float((out - ref).norm() / ref.norm()),
        "max_abs": float((out - ref).abs().max()),
        "ref_abs_mean": float(ref.abs().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for kind in ("sd1", "sdxl"):
        unet, sdxl = build(kind)
        call_args, kwargs = inputs(unet, sdxl, 1)
        base_ms, ref = step_ms(unet, call_args, kwargs)
        entry: dict[str, Any] = {"fp16_ms": base_ms}
        failures: list[str] = []
        for mode in ("gemm_only", "rowwise", "tensorwise"):
            shapes: list = []
            originals = swap(unet, mode, shapes, failures)
            try:
                ms, out = step_ms(unet, call_args, kwargs)
                entry[mode] = {"ms": ms, "linears": len(originals), **difference(out, ref)}
            except Exception as exc:
                entry[mode] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                restore(unet, originals)
            if mode == "rowwise":
                entry["matmul_shapes"] = sorted({tuple(s) for s in shapes})
        entry["failures"] = sorted(set(failures))
        report[kind] = entry
        print(kind, json.dumps(entry)[:2000], flush=True)
        del unet
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
