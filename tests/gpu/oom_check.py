"""Memory modes and a real out-of-memory on the GPU machine (real-size random SD1.5, fp16).

    python -m tests.gpu.oom_check --out tests/gpu/results/oom_check-h100.json

1. The same job in each memory mode (full / model offload / sequential offload): time, peak VRAM, max pixel diff.
2. A real OOM: the process is limited to a small share of the GPU (``set_per_process_memory_fraction``), so a
   1024² job runs out of memory in full mode; ``generate`` retries with model offload (result and mode recorded).
3. An oversized job (too big even offloaded) ends in a readable OutOfMemoryError, and the next job works.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.engine.loader import LoadOptions, ModelManager
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from modules.errors import OutOfMemoryError
from tests.support.tiny_checkpoints import write_checkpoint

logger = logging.getLogger("oom_check")


def timed_job(model: Any, request: GenerationRequest) -> tuple[np.ndarray, float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    image = np.asarray(generate(model, request).images[0], dtype=np.int16)
    torch.cuda.synchronize()
    return image, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint("sd1", Path(tmp) / "sd15.safetensors", size="full", write_yaml=False)
        opts = LoadOptions(device="cuda", dtype="float16", vae_dtype="float16")
        manager = ModelManager()
        model = manager.get(CheckpointInfo(path, path.name), opts)
        report["auto_mode_on_idle_gpu"] = model.memory_mode
        req = GenerationRequest(prompt="a house", steps=20, width=512, height=512, seed=5, sampler_name="Euler a")
        generate(model, req)  # warm-up (graph capture)
        modes = {}
        reference = None
        for mode in ("full", "model", "sequential"):
            model.set_memory_mode(mode)
            image, seconds, peak = timed_job(model, req)
            if mode == "full":
                reference = image
            diff = float(np.abs(image - reference).max())
            modes[mode] = {"seconds": seconds, "peak_allocated_gb": peak, "max_abs_pixel_diff_vs_full": diff}
            logger.info("%s: %s", mode, modes[mode])
        model.set_memory_mode("full")
        report["modes_512"] = modes

        big = GenerationRequest(
            prompt="a house", steps=4, width=1024, height=1024, batch_size=4, seed=6, sampler_name="Euler a"
        )
        peaks = {}
        for mode in ("full", "model"):  # what the big job reserves in each mode, unlimited
            model.set_memory_mode(mode)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            generate(model, big)
            peaks[mode] = torch.cuda.max_memory_allocated()
        model.set_memory_mode("full")
        report["big_job_peak_allocated_gb"] = {k: v / 1e9 for k, v in peaks.items()}
        total = torch.cuda.get_device_properties(0).total_memory
        limit = peaks["model"] + 0.25 * (peaks["full"] - peaks["model"])  # too little for full, enough offloaded
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(limit / total)
        report["memory_limit_gb"] = limit / 1e9
        modes_seen: list[str] = []
        handle = model.components.unet.register_forward_pre_hook(lambda m, a: modes_seen.append(model.memory_mode))
        try:
            t0 = time.perf_counter()
            result = generate(model, big)
            report["real_oom_retry"] = {
                "ok": True,
                "seconds": time.perf_counter() - t0,
                "modes_of_unet_calls": sorted(set(modes_seen)),
                "mode_after": model.memory_mode,
                "size": list(result.images[0].size),
            }
        except OutOfMemoryError as exc:
            report["real_oom_retry"] = {"ok": False, "error": str(exc), "modes_of_unet_calls": sorted(set(modes_seen))}
        finally:
            handle.remove()
        logger.info("retry: %s", report["real_oom_retry"])
        huge = GenerationRequest(prompt="a house", steps=2, width=2048, height=2048, batch_size=8, seed=7)
        try:
            generate(model, huge)
            report["oversized"] = {"error": None}
        except OutOfMemoryError as exc:
            report["oversized"] = {"error": str(exc)}
        logger.info("oversized: %s", report["oversized"])
        torch.cuda.set_per_process_memory_fraction(1.0)
        after, seconds, _ = timed_job(model, req)
        diff = float(np.abs(after - reference).max())
        report["next_job_after_oom"] = {"seconds": seconds, "max_abs_pixel_diff_vs_full": diff}
        manager.unload()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
