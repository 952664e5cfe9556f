"""The "NV" random source: NVIDIA's Philox4x32-10 + Box–Muller normal draws, computed with numpy on any device.

A1111's ``randn_source = NV`` reproduces on the CPU (and on Macs) the numbers ``torch.randn`` gives on a CUDA device
for a generator seeded with the same seed, so a picture made on a GPU can be remade elsewhere. Each ``randn`` call
uses one Philox counter offset (0, 1, 2, …) and one counter per output element; the first two 32-bit words of each
Philox block become one normal number through Box–Muller (the sine branch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
# 2^-32 and 2π·2^-32 as float32 values (what CUDA's curand uses), applied in float64.
_INV_2_32 = float(np.float32(2.3283064e-10))
_INV_2_32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) 32-bit halves of uint64 values."""
    return (x & np.uint64(0xFFFFFFFF)).astype(np.uint32), (x >> np.uint64(32)).astype(np.uint32)


def _round(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    lo0, hi0 = _split(counter[0].astype(np.uint64) * _M0)
    lo2, hi2 = _split(counter[2].astype(np.uint64) * _M1)
    return [hi2 ^ counter[1] ^ key[0], lo2, hi0 ^ counter[3] ^ key[1], lo0]


def philox4x32(counter: list[np.ndarray], key: list[np.ndarray], rounds: int = 10) -> list[np.ndarray]:
    """Philox4x32 with ``rounds`` rounds over vectors of counters (4 words) and keys (2 words)."""
    key = [k.copy() for k in key]
    for _ in range(rounds - 1):
        counter = _round(counter, key)
        key = [key[0] + _W0, key[1] + _W1]
    return _round(counter, key)


class PhiloxGenerator:
    """A generator for the NV source: ``randn(shape)`` draws the next block of normals for ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.offset = 0

    def initial_seed(self) -> int:
        """The seed (as ``torch.Generator.initial_seed``)."""
        return self.seed

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal float32 values of ``shape``; each call advances the offset by one."""
        n = int(np.prod(shape))
        counter = [
            np.full(n, self.offset, dtype=np.uint32),
            np.zeros(n, dtype=np.uint32),
            np.arange(n, dtype=np.uint32),
            np.zeros(n, dtype=np.uint32),
        ]
        self.offset += 1
        low, high = _split(np.full(n, self.seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
        out = philox4x32(counter, [low, high])
        u = out[0].astype(np.float64) * _INV_2_32 + _INV_2_32 / 2
        v = out[1].astype(np.float64) * _INV_2_32_2PI + _INV_2_32_2PI / 2
        normal = (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
        return torch.from_numpy(normal.reshape(tuple(shape)))
