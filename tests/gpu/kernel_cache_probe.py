"""What a brand-new install pays for our Triton kernels: the first image with an empty Triton cache (GPU machine).

    python -m tests.gpu.kernel_cache_probe CHECKPOINT [--size 512] [--out FILE]

Triton compiles each kernel variant (engine/group_norm_triton.py, engine/geglu.py: one per dtype and block shape)
the first time a process needs it and keeps it on disk (``TRITON_CACHE_DIR``); a later process loads it from there.
This probe runs W6 (a new process: import, load, first image, second image, then a batch-8 job, which takes the
unsplit GroupNorm kernels) twice against one new, empty cache directory: ``cold`` is the first start after an install,
``warm`` a restart; then the same pair against another new directory with the app's start-up warm-up after the load
(``pipeline.warm_up``: its dry pass builds the kernels on several threads, engine/kernel_build.py). Each run lists the
kernels Triton compiled, with their seconds and threads (``triton.compile`` wrapped in the child only). The app
itself keeps the cache in ``<data dir>/cache/triton`` (modules/context.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def _child(path: Path, size: int, warm_up: bool) -> dict:
    """In a new process: the phases of W6 (with ``warm_up``: the app's start-up warm-up after the load) and the
    kernels Triton compiled meanwhile."""
    t0 = time.perf_counter()
    import torch
    import triton
    import triton.compiler.compiler as triton_compiler
    import triton.runtime.jit as triton_jit

    from modules.engine.loader import LoadOptions, ModelManager, select_device
    from modules.engine.pipeline import generate
    from modules.engine.pipeline import warm_up as start_up_warm_up
    from modules.engine.types import CheckpointInfo, GenerationRequest

    compiled: list[dict] = []
    original = triton_compiler.compile

    def timed_compile(src: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(src, *args, **kwargs)
        finally:
            fn = getattr(src, "fn", None)
            constants = getattr(src, "constants", {}) or {}
            compiled.append({
                "kernel": getattr(fn, "__name__", str(fn)),
                "constexprs": {str(k): str(v) for k, v in constants.items()},
                "s": round(time.perf_counter() - start, 3),
                "thread": threading.current_thread().name,
            })  # fmt: skip

    for module in (triton_compiler, triton_jit, triton.compiler, triton):
        if getattr(module, "compile", None) is original:
            module.compile = timed_compile
    t_import = time.perf_counter() - t0
    device, dtype, vae_dtype = select_device(use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False,
                                             precision="autocast")  # fmt: skip
    model = ModelManager().get(
        CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    )
    torch.cuda.synchronize()
    t_load = time.perf_counter() - t0
    if warm_up:
        start_up_warm_up(model)
    t_warm_up = time.perf_counter() - t0
    request = GenerationRequest(prompt="x", steps=20, width=size, height=size, seed=1, sampler_name="Euler")
    generate(model, request)
    t_first = time.perf_counter() - t0
    compiled_by_first = len(compiled)
    t1 = time.perf_counter()
    generate(model, request)
    t_second = time.perf_counter() - t1
    t2 = time.perf_counter()
    generate(model, replace(request, batch_size=8))
    t_batch8 = time.perf_counter() - t2
    return {
        "triton": triton.__version__,
        "import_s": t_import,
        "load_done_s": t_load,
        "warm_up_done_s": t_warm_up if warm_up else None,
        "first_image_s": t_first,
        "second_image_s": t_second,
        "first_batch8_job_s": t_batch8,
        "kernels_compiled_by_first_image": compiled_by_first,
        "kernel_compile_s_by_first_image": round(sum(k["s"] for k in compiled[:compiled_by_first]), 3),
        "kernels_compiled": compiled,
    }


def run(path: Path, size: int, cache_dir: Path, *, warm_up: bool = False) -> dict:
    """W6 in a new process against ``cache_dir`` (``TRITON_CACHE_DIR``), with or without the start-up warm-up."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "tests.gpu.kernel_cache_probe", str(path), "--size", str(size), "--child"]
        + (["--warm-up"] if warm_up else []),
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"child failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.checkpoint, args.size, args.warm_up)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cache, warm_up in (
            ("cold", "a", False), ("warm", "a", False), ("cold_warm_up", "b", True), ("warm_warm_up", "b", True)
        ):  # fmt: skip
            results[name] = run(args.checkpoint, args.size, Path(tmp) / cache, warm_up=warm_up)
            print(name, {k: v for k, v in results[name].items() if k != "kernels_compiled"}, flush=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
