"""GroupNorm for channels_last activations as one Triton kernel (CUDA only; PyTorch's own kernel elsewhere).

Why: with the SD1/SD2 UNet in channels_last (engine/accel.py), cuDNN's convolutions stop converting layouts, but
PyTorch's GroupNorm on an NHWC tensor falls back to a slow strided path (on the H100 ≈2.8 ms of a 10.6 ms CFG step,
tests/gpu/results/speed_probe-h100.json). This kernel reads an NHWC tensor where it lies: one program per
(image, group) computes the group's mean and variance in fp32 over its ``H·W × C/G`` values, then normalises,
applies the affine weight and bias and writes in the same layout. In the residual blocks it also adds the time
embedding first and applies SiLU after (``norm_silu``). At batch 1 the 64 (image, group) pairs leave most of the GPU
idle, so there a split form runs: per-slice sums, then per-slice normalisation (H200, tests/gpu/results/
gn_probe-h200.json: SD1.5 step 7.11 → 6.85 ms, SDXL 32.6 → 31.2 ms). The kernels are in engine/group_norm_triton.py
(imported only where Triton is), built from shared Triton helpers.

``install(unet)`` gives every ``torch.nn.GroupNorm`` of the module an instance ``forward`` that uses the kernel for
CUDA channels_last inputs and PyTorch's otherwise; ``uninstall`` removes it. Nothing else changes.
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any

import torch

from modules.engine.kernel_build import launch

logger = logging.getLogger(__name__)


@functools.cache
def _kernels() -> Any:
    """The module of Triton kernels (engine/group_norm_triton.py), imported once on first use; None without Triton."""
    try:
        from modules.engine import group_norm_triton
    except ImportError:
        return None
    return group_norm_triton


TARGET_PROGRAMS = 528  # ~4 per SM of an H100/H200: below this many (image, group) pairs, the rows are split too
_MIN_BLOCK_S = 32  # the slice count's block: one value for every size at batch 1 (at most 17 slices of 32 groups)


def split_count(programs: int, hw: int, block_hw: int) -> tuple[int, int]:
    """Return (slices, rows per slice) for ``programs`` (image, group) pairs over ``hw`` rows.

    One slice when there are enough pairs to fill the GPU, else enough slices (whole ``block_hw`` multiples) to reach
    about :data:`TARGET_PROGRAMS` programs.
    """
    blocks = -(-hw // block_hw)
    wanted = min(blocks, -(-TARGET_PROGRAMS // programs))
    if wanted <= 1:
        return 1, blocks * block_hw
    rows_per = -(-blocks // wanted) * block_hw
    return -(-hw // rows_per), rows_per


def group_norm_nhwc(
    x: torch.Tensor,
    module: torch.nn.GroupNorm,
    add: torch.Tensor | None = None,
    *,
    silu: bool = False,
    splits: int | None = None,
) -> torch.Tensor:
    """``module(x)`` for a CUDA channels_last ``x`` through the Triton kernel.

    With ``add`` (N, C): ``module(x + add[:, :, None, None])``; with ``silu``: SiLU of the result. One read of ``x``
    for the statistics, one for the output, one write: the sum and the activation cost no pass of their own.
    When there are too few (image, group) pairs to fill the GPU (batch 1), each group's rows are also split into
    slices: one kernel writes per-slice sums, a second normalises each slice (``splits`` forces the slice count).
    """
    import triton

    n, c, h, w = x.shape
    cpg = c // module.num_groups
    y = torch.empty_like(x, memory_format=torch.channels_last)
    block_c = triton.next_power_of_2(cpg)
    block_hw = max(16, min(256, 4096 // block_c))
    if add is not None:
        add = add.reshape(n, c).contiguous()
    groups = module.num_groups
    parts, rows_per = split_count(n * groups, h * w, block_hw) if splits is None else (splits, -(-h * w // splits))
    add_arg = x if add is None else add
    kernels = _kernels()
    if parts == 1:
        ran = launch(
            kernels.group_norm_nhwc, (n, groups), x, y, module.weight, module.bias, add_arg, h * w, c, cpg, module.eps,
            block_hw=block_hw, block_c=block_c, has_add=add is not None, silu=silu, num_warps=8,
        )  # fmt: skip
        return y if ran else y.zero_()  # not run: a dry pass building the kernels ahead (engine/kernel_build.py)
    sums = torch.empty(2, n * groups * parts, device=x.device, dtype=torch.float32)
    grid = (n * groups, parts)
    launch(
        kernels.group_norm_partials, grid, x, add_arg, sums[0], sums[1], h * w, c, cpg, groups, rows_per, parts,
        block_hw=block_hw, block_c=block_c, has_add=add is not None, num_warps=4,
    )  # fmt: skip
    ran = launch(
        kernels.group_norm_apply, grid, x, y, module.weight, module.bias, add_arg, sums[0], sums[1], h * w, c, cpg,
        groups, rows_per, parts, module.eps, block_hw=block_hw, block_c=block_c,
        block_s=max(_MIN_BLOCK_S, triton.next_power_of_2(parts)), has_add=add is not None, silu=silu, num_warps=4,
    )  # fmt: skip
    return y if ran else y.zero_()


_MAX_ELEMENTS = 2**31 - 1  # the kernels index with 32-bit offsets (a 4096² VAE decode would pass that)


def _eligible(x: torch.Tensor, module: torch.nn.GroupNorm) -> bool:
    """Whether the kernel can take ``module(x)``: a CUDA channels_last 4-D input, the module's weights beside it.

    The weights are elsewhere under sequential offload when ``norm_silu`` is called (it bypasses the module's call
    and so the hook that brings them over): PyTorch's path then calls the module, hooks and all.
    """
    return (
        x.is_cuda
        and x.dim() == 4
        and x.numel() <= _MAX_ELEMENTS
        and module.affine
        and module.weight.device == x.device
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and not torch.is_grad_enabled()
    )


class _Forward:
    """Instance ``forward`` of one GroupNorm: the kernel when eligible, PyTorch's forward otherwise.

    It holds its module weakly: a strong reference would make a cycle, and a model switched away from would then
    wait for a full garbage collection to free its memory.
    """

    def __init__(self, module: torch.nn.GroupNorm) -> None:
        self.module = weakref.ref(module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module()
        if _eligible(x, module):
            return group_norm_nhwc(x, module)
        return type(module).forward(module, x)


class _NormSiLU:
    """Instance ``norm_silu`` of one of our GroupNorms (nets/layers.py): sum, norm and SiLU in one kernel."""

    def __init__(self, module: torch.nn.GroupNorm) -> None:
        self.module = weakref.ref(module)

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        module = self.module()
        if _eligible(x, module) and (add is None or add.shape == x.shape[:2]):
            return group_norm_nhwc(x, module, add, silu=True)
        return type(module).norm_silu(module, x, add)


def install(module: torch.nn.Module, *, fuse_silu: bool = True) -> int:
    """Route ``module``'s GroupNorms through the kernel (when Triton and CUDA are available); return how many.

    With ``fuse_silu``, the ``norm_silu`` of our own GroupNorm layers (the UNet's residual blocks) also runs as one
    kernel (add, norm, SiLU).
    """
    if not torch.cuda.is_available() or _kernels() is None:
        return 0
    count = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.GroupNorm) and "forward" not in sub.__dict__:
            sub.forward = _Forward(sub)
            if fuse_silu and hasattr(type(sub), "norm_silu"):
                sub.norm_silu = _NormSiLU(sub)
            count += 1
    logger.info("GroupNorm: %d layers use the channels_last Triton kernel", count)
    return count


def uninstall(module: torch.nn.Module) -> None:
    """Give every GroupNorm of ``module`` its own forward (and ``norm_silu``) back."""
    for sub in module.modules():
        if isinstance(sub.__dict__.get("forward"), _Forward):
            del sub.forward
        if isinstance(sub.__dict__.get("norm_silu"), _NormSiLU):
            del sub.norm_silu
