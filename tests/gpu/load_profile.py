"""Where a warm load of a checkpoint goes (W5: imports done, file in the page cache): phases and a cProfile.

Run on the GPU machine: ``python -m tests.gpu.load_profile CHECKPOINT [--switch-from OTHER]``. With ``--switch-from``
the profiled load is a switch (W5): OTHER is loaded and has run a job, so freeing it is part of the time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--switch-from", type=Path, help="a checkpoint loaded (and used) before the profiled load")
    args = parser.parse_args()
    path = args.checkpoint
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    manager = ModelManager()
    manager.get(CheckpointInfo(path, path.name), options)  # imports, CUDA context, kernels
    manager.unload()
    if args.switch_from is not None:
        other = manager.get(CheckpointInfo(args.switch_from, args.switch_from.name), options)
        generate(other, GenerationRequest(prompt="x", steps=2, width=512, height=512, seed=1, sampler_name="Euler"))
        del other
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
    target_s = 1.3 * read_s + 0.3
    print(json.dumps({"switch_from": str(args.switch_from), "bytes": size, "read_s": read_s, "load_s": load_s,
                      "target_s": target_s}))  # fmt: skip
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
    print(out.getvalue()[-12000:])


if __name__ == "__main__":
    main()
