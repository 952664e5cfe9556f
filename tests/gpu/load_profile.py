"""Where a warm load of a checkpoint goes (W5: imports done, file in the page cache): phases and a cProfile.

Run on the GPU machine: ``python -m tests.gpu.load_profile CHECKPOINT``.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.types import CheckpointInfo


def main() -> None:
    path = Path(sys.argv[1])
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    manager = ModelManager()
    manager.get(CheckpointInfo(path, path.name), options)  # imports, CUDA context, kernels
    manager.unload()
    t0 = time.perf_counter()
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass
    read_s = time.perf_counter() - t0
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    profiler.enable()
    manager.get(CheckpointInfo(path, path.name), options)
    torch.cuda.synchronize()
    profiler.disable()
    load_s = time.perf_counter() - t0
    size = path.stat().st_size
    print(json.dumps({"bytes": size, "read_s": read_s, "load_s": load_s, "target_s": 1.3 * read_s + 0.3}))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
    print(out.getvalue()[-12000:])


if __name__ == "__main__":
    main()
