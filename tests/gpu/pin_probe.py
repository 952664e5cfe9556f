"""What page-locked host memory costs to take and what it gains in copies (GPU machine).

    python -m tests.gpu.pin_probe [ALLOCATOR_SETTINGS…]

For each allocator setting ("" = PyTorch's defaults), in a new process each (the settings apply to allocations made
after them): the time to take 23 slabs of 256 MB of pinned memory (what the originals of an SDXL LoRA's layers fill,
engine/weights.py), then one copy of a 256 MB fp16 tensor into every slab and back, against the same copies with
fresh pageable memory (which the kernel also has to fault in on first touch).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import torch

SLABS, SLAB_BYTES = 23, 256 << 20


def _seconds(work: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(settings: str) -> str:
    if settings:
        torch._C._accelerator_setAllocatorSettings(settings)
    source = torch.randn(SLAB_BYTES // 2, device="cuda", dtype=torch.float16)
    slabs: list[torch.Tensor] = []
    take = _seconds(lambda: slabs.extend(torch.empty(SLAB_BYTES, dtype=torch.uint8, pin_memory=True)
                                         for _ in range(SLABS)))  # fmt: skip
    out = _seconds(lambda: [s.view(torch.float16).copy_(source, non_blocking=True) for s in slabs])
    back = _seconds(lambda: [source.copy_(s.view(torch.float16), non_blocking=True) for s in slabs])
    pageable = [torch.empty(SLAB_BYTES, dtype=torch.uint8) for _ in range(SLABS)]
    out_pageable = _seconds(lambda: [s.view(torch.float16).copy_(source) for s in pageable])
    back_pageable = _seconds(lambda: [source.copy_(s.view(torch.float16)) for s in pageable])
    gigabytes = SLABS * SLAB_BYTES / 1e9
    return (
        f"{settings or 'defaults'}: take {gigabytes:.1f} GB pinned {take:.2f} s; copies out {out:.3f} s, back "
        f"{back:.3f} s | pageable: out {out_pageable:.3f} s, back {back_pageable:.3f} s"
    )


def main(argv: list[str]) -> int:
    if len(argv) == 1 and argv[0].startswith("--one="):
        print(measure(argv[0].removeprefix("--one=")), flush=True)
        return 0
    for settings in argv or [""]:
        subprocess.run([sys.executable, "-m", "tests.gpu.pin_probe", f"--one={settings}"], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
