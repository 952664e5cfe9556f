"""Where a fresh process spends its time before the first image (W6): cProfile of import + load + first image.

Run on the GPU machine: ``python -m tests.gpu.startup_profile CHECKPOINT [--warm-up]`` (twice: the first run also
compiles bytecode and fills the Triton cache, the second is what a restarted UI sees). Prints the phases and the
functions with the largest cumulative time. ``--warm-up`` adds the app's start-up warm-up between load and first job.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path


def main() -> None:
    path = Path(sys.argv[1])
    warm = "--warm-up" in sys.argv[2:]  # as the app's start-up load does (engine/pipeline.py warm_up)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    import torch

    from modules.engine.loader import LoadOptions, ModelManager, select_device
    from modules.engine.pipeline import generate, warm_up
    from modules.engine.types import CheckpointInfo, GenerationRequest

    t_import = time.perf_counter() - t0
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    model = ModelManager().get(
        CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    )
    torch.cuda.synchronize()
    t_load = time.perf_counter() - t0
    t_warm = warm_up(model) if warm else None
    t_job = time.perf_counter()
    generate(model, GenerationRequest(prompt="x", steps=20, width=512, height=512, seed=1, sampler_name="Euler"))
    t_first = time.perf_counter() - t0
    t_job = time.perf_counter() - t_job
    profiler.disable()
    phases = {"import_s": t_import, "load_done_s": t_load, "warm_up_s": t_warm, "first_job_s": t_job}
    print(json.dumps({**phases, "first_image_s": t_first}))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
    print(out.getvalue()[-9000:])
    out = io.StringIO()  # C calls (CUDA, compile, hashing…) show their own time here
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue()[-6000:])


if __name__ == "__main__":
    main()
