"""Where the first job's CUDA-graph capture spends its time (GPU machine).

    python -m tests.gpu.capture_timing CHECKPOINT

``torch.cuda.graph`` begins every capture with ``torch.cuda.synchronize()``, ``gc.collect()`` and
``torch.cuda.empty_cache()``; startup_profile showed its ``__enter__`` taking 1.5 s of a 2.3 s first job. This loads the
checkpoint, wraps those three calls with timers and runs a first and a second job (batch 1 then 2: two captures),
printing each call's time.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest


def timed(log: list, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.append((name, round(time.perf_counter() - start, 4)))

    return wrapper


def main() -> None:
    path = Path(sys.argv[1])
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    model = ModelManager().get(
        CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    )
    torch.cuda.synchronize()
    log: list[tuple[str, float]] = []
    gc.collect = timed(log, "gc.collect", gc.collect)
    torch.cuda.synchronize = timed(log, "cuda.synchronize", torch.cuda.synchronize)
    torch.cuda.empty_cache = timed(log, "cuda.empty_cache", torch.cuda.empty_cache)
    report = {"objects": len(gc.get_objects())}
    for batch in (1, 2):
        log.clear()
        start = time.perf_counter()
        generate(
            model,
            GenerationRequest(prompt="x", steps=20, width=512, height=512, seed=1, batch_size=batch),
        )
        report[f"job_batch{batch}_s"] = time.perf_counter() - start
        report[f"calls_batch{batch}"] = list(log)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
