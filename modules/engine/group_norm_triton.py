"""The Triton kernels of engine/group_norm.py (imported only where Triton is; group_norm.py says what they do).

A group's values are the ``hw`` rows × ``cpg`` channels of one (image, group) pair of an NHWC tensor. The single
kernel takes one pair per program: statistics over all its rows, then normalisation. The split form takes one slice
of a pair's rows per program: ``group_norm_partials`` writes the slice's sum and sum of squares, ``group_norm_apply``
adds up the slices' sums and normalises its slice. All three share the helpers below, so their arithmetic is the same.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Arguments that change with the image size. Triton compiles a variant per divisibility-by-16 of each integer
# argument; for these it must not, or a new width/height compiles new kernels in the middle of a job (measured on the
# H200: the first 768×512 job after 512² jobs took 2.80 s, 0.78 s without these variants; the step time is unchanged,
# tests/gpu/results/gn_probe-h200.json). The channel counts stay specialised.
SIZE_ARGS = ("hw", "rows_per", "splits")

# ruff: noqa: ANN001, ANN201, ANN202 (Triton functions: their arguments are typed by the launch)


@triton.jit
def _group(add_ptr, n, g, hw, channels, cpg, block_c: tl.constexpr, has_add: tl.constexpr):
    """Image ``n``, group ``g``: its offset, channel offsets and mask, and the term added before the statistics.

    The term is per channel (the ResBlock's time embedding), zeros without ``has_add``.
    """
    base = n * hw * channels + g * cpg
    c = tl.arange(0, block_c)
    c_mask = c < cpg
    if has_add:
        add = tl.load(add_ptr + n * channels + g * cpg + c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        add = tl.zeros([block_c], dtype=tl.float32)
    return base, c, c_mask, add


@triton.jit
def _sums(x_ptr, base, channels, c, c_mask, add, first, stop, limit, block_hw: tl.constexpr, block_c: tl.constexpr):
    """Sum and sum of squares (fp32) of ``x + add`` over rows ``first ≤ row < min(stop, limit)``."""
    acc = tl.zeros([block_hw, block_c], dtype=tl.float32)
    acc_sq = tl.zeros([block_hw, block_c], dtype=tl.float32)
    for start in range(first, stop, block_hw):
        rows = start + tl.arange(0, block_hw)
        mask = (rows[:, None] < limit) & c_mask[None, :]
        v = tl.load(x_ptr + base + rows[:, None] * channels + c[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.where(mask, v + add[None, :], 0.0)
        acc += v
        acc_sq += v * v
    return tl.sum(tl.sum(acc, axis=1), axis=0), tl.sum(tl.sum(acc_sq, axis=1), axis=0)


@triton.jit
def _normalise(
    x_ptr, y_ptr, w_ptr, b_ptr, base, channels, g, cpg, c, c_mask, add, mean, var, eps, first, stop, limit,
    block_hw: tl.constexpr, silu: tl.constexpr,
):  # fmt: skip
    """Write ``w · (x + add − mean) / std + b`` (then SiLU) for rows ``first ≤ row < min(stop, limit)``."""
    rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + eps)
    w = tl.load(w_ptr + g * cpg + c, mask=c_mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + g * cpg + c, mask=c_mask, other=0.0).to(tl.float32)
    scale = w * rstd
    shift = b + (add - mean) * scale
    for start in range(first, stop, block_hw):
        rows = start + tl.arange(0, block_hw)
        mask = (rows[:, None] < limit) & c_mask[None, :]
        offsets = base + rows[:, None] * channels + c[None, :]
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        out = v * scale[None, :] + shift[None, :]
        if silu:
            out = out / (1.0 + tl.exp(-out))
        tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZE_ARGS)
def group_norm_nhwc(
    x_ptr, y_ptr, w_ptr, b_ptr, add_ptr, hw, channels, cpg, eps,
    block_hw: tl.constexpr, block_c: tl.constexpr, has_add: tl.constexpr, silu: tl.constexpr,
):  # fmt: skip
    """One program per (image ``program_id(0)``, group ``program_id(1)``): statistics, then normalisation."""
    n = tl.program_id(0)
    g = tl.program_id(1)
    base, c, c_mask, add = _group(add_ptr, n, g, hw, channels, cpg, block_c, has_add)
    total, total_sq = _sums(x_ptr, base, channels, c, c_mask, add, 0, hw, hw, block_hw, block_c)
    count = hw * cpg
    mean = total / count
    var = total_sq / count - mean * mean
    _normalise(
        x_ptr, y_ptr, w_ptr, b_ptr, base, channels, g, cpg, c, c_mask, add, mean, var, eps, 0, hw, hw, block_hw, silu
    )


@triton.jit(do_not_specialize=SIZE_ARGS)
def group_norm_partials(
    x_ptr, add_ptr, sum_ptr, sq_ptr, hw, channels, cpg, groups, rows_per, splits,
    block_hw: tl.constexpr, block_c: tl.constexpr, has_add: tl.constexpr,
):  # fmt: skip
    """One program per ((image, group) ``program_id(0)``, slice ``program_id(1)``): the slice's two sums."""
    ng = tl.program_id(0)
    part = tl.program_id(1)
    base, c, c_mask, add = _group(add_ptr, ng // groups, ng % groups, hw, channels, cpg, block_c, has_add)
    first = part * rows_per
    limit = tl.minimum(hw, first + rows_per)
    total, total_sq = _sums(x_ptr, base, channels, c, c_mask, add, first, first + rows_per, limit, block_hw, block_c)
    tl.store(sum_ptr + ng * splits + part, total)
    tl.store(sq_ptr + ng * splits + part, total_sq)


@triton.jit(do_not_specialize=SIZE_ARGS)
def group_norm_apply(
    x_ptr, y_ptr, w_ptr, b_ptr, add_ptr, sum_ptr, sq_ptr, hw, channels, cpg, groups, rows_per, splits, eps,
    block_hw: tl.constexpr, block_c: tl.constexpr, block_s: tl.constexpr, has_add: tl.constexpr,
    silu: tl.constexpr,
):  # fmt: skip
    """One program per ((image, group), slice): the group's statistics from all slices' sums, then this slice."""
    ng = tl.program_id(0)
    part = tl.program_id(1)
    g = ng % groups
    base, c, c_mask, add = _group(add_ptr, ng // groups, g, hw, channels, cpg, block_c, has_add)
    k = tl.arange(0, block_s)
    count = hw * cpg
    mean = tl.sum(tl.load(sum_ptr + ng * splits + k, mask=k < splits, other=0.0), axis=0) / count
    var = tl.sum(tl.load(sq_ptr + ng * splits + k, mask=k < splits, other=0.0), axis=0) / count - mean * mean
    first = part * rows_per
    limit = tl.minimum(hw, first + rows_per)
    _normalise(
        x_ptr, y_ptr, w_ptr, b_ptr, base, channels, g, cpg, c, c_mask, add, mean, var, eps, first, first + rows_per,
        limit, block_hw, silu,
    )  # fmt: skip
