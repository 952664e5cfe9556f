"""The transformer feed-forward's gate, ``value * gelu(gate)``, as one Triton kernel (CUDA only).

Why: the GEGLU projection writes ``(tokens, 2·F)``; its two halves are strided views, so PyTorch's ``gelu`` and the
product run as two slow strided elementwise kernels with an intermediate tensor (on the H100, SDXL spent ≈5 ms of a
44 ms CFG step in them, tests/gpu/results/speed_probe-h100.json). This kernel reads each half once, computes the exact
(erf) GELU and the product in fp32, and writes the contiguous ``(tokens, F)`` result.

``install(module)`` gives every GEGLU of the app's networks (nets/unet_blocks.py) an instance ``gate`` that uses the
kernel for CUDA inputs and PyTorch's ops otherwise; ``uninstall`` removes it.
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any

import torch

from modules.engine.kernel_build import launch
from modules.engine.nets.unet_blocks import GEGLU

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 16
_BLOCK_COLS = 256


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, built once on first use (None when Triton is not importable)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit(do_not_specialize=("rows",))  # rows change with the image size: no new variant per size
    def geglu_gate(  # noqa: ANN202 (a Triton kernel: its arguments are typed by the launch)
        h_ptr, out_ptr, rows, cols,  # noqa: ANN001
        block_rows: tl.constexpr, block_cols: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0) * block_rows + tl.arange(0, block_rows)
        c = tl.program_id(1) * block_cols + tl.arange(0, block_cols)
        mask = (r[:, None] < rows) & (c[None, :] < cols)
        src = r[:, None].to(tl.int64) * (2 * cols) + c[None, :]
        value = tl.load(h_ptr + src, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(h_ptr + src + cols, mask=mask, other=0.0).to(tl.float32)
        out = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
        dst = r[:, None].to(tl.int64) * cols + c[None, :]
        tl.store(out_ptr + dst, out.to(out_ptr.dtype.element_ty), mask=mask)

    return geglu_gate


def geglu_gate(h: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` for ``value, gate = h.chunk(2, -1)``, ``h`` contiguous, through the kernel."""
    import triton

    cols = h.shape[-1] // 2
    rows = h.numel() // h.shape[-1]
    out = torch.empty((*h.shape[:-1], cols), device=h.device, dtype=h.dtype)
    grid = (triton.cdiv(rows, _BLOCK_ROWS), triton.cdiv(cols, _BLOCK_COLS))
    ran = launch(_kernel(), grid, h, out, rows, cols, block_rows=_BLOCK_ROWS, block_cols=_BLOCK_COLS, num_warps=4)
    return out if ran else out.zero_()  # not run: a dry pass building the kernels ahead (engine/kernel_build.py)


def _eligible(h: torch.Tensor) -> bool:
    return (
        h.is_cuda
        and h.is_contiguous()
        and h.shape[-1] % 2 == 0
        and h.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and not torch.is_grad_enabled()
    )


class _Gate:
    """Instance ``gate`` of one GEGLU: the kernel when eligible, the module's own ``gate`` otherwise.

    It holds its module weakly: a strong reference would make a cycle, and a model switched away from would then
    wait for a full garbage collection to free its memory.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = weakref.ref(module)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if _eligible(h):
            return geglu_gate(h)
        module = self.module()
        return type(module).gate(module, h)


def install(module: torch.nn.Module) -> int:
    """Route the ``gate`` of ``module``'s GEGLU layers through the kernel (CUDA and Triton present); return how many."""
    if not torch.cuda.is_available() or _kernel() is None:
        return 0
    count = 0
    for sub in module.modules():
        if isinstance(sub, GEGLU) and "gate" not in sub.__dict__:
            sub.gate = _Gate(sub)
            count += 1
    logger.info("GEGLU: %d layers use the fused gate kernel", count)
    return count


def uninstall(module: torch.nn.Module) -> None:
    """Give every GEGLU of ``module`` its own ``gate`` back."""
    for sub in module.modules():
        if isinstance(sub.__dict__.get("gate"), _Gate):
            del sub.gate
