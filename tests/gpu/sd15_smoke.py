"""Real-size random SD1.5-architecture checkpoint through the engine on CUDA: fp16, 512x512, 20 steps.

Run on the GPU machine: ``python -m tests.gpu.sd15_smoke [--out results.json]`` (also wrapped by a ``gpu`` test).
Writes a full-size single-file checkpoint in the original LDM layout, loads it with the app's ModelManager (the
same path the UI and API use) and times generation. Weights are random, so the image is noise; speed does not
depend on weight values (performance.md §7).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest
from tests.support.tiny_checkpoints import write_checkpoint

logger = logging.getLogger(__name__)


def run(workdir: Path, runs: int = 5) -> dict[str, object]:
    """Make the file, load it on CUDA in fp16, warm up, and time ``runs`` generations of 512x512, 20 steps."""
    path = workdir / "sd15-random.safetensors"
    t0 = time.perf_counter()
    write_checkpoint("sd1", path, size="full", write_yaml=False)
    make_s = time.perf_counter() - t0
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    assert device.startswith("cuda"), f"no CUDA device (got {device})"
    manager = ModelManager()
    t0 = time.perf_counter()
    model = manager.get(CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    results: dict[str, object] = {"file_bytes": path.stat().st_size, "make_s": make_s, "load_s": load_s}
    for sampler in ("Euler", "DPM++ 2M"):
        req = GenerationRequest(
            prompt="a photo of a cat", steps=20, width=512, height=512, seed=1, sampler_name=sampler
        )
        generate(model, req, GenerationOptions())  # warm-up
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = generate(model, req)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        arr = np.asarray(res.images[0])
        assert res.images[0].size == (512, 512)
        results[sampler] = {
            "median_s": float(np.median(times)),
            "min_s": float(min(times)),
            "it_per_s_e2e": 20 / float(np.median(times)),
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
            "pixel_std": float(arr.std()),
        }
    results["device"] = torch.cuda.get_device_name()
    results["torch"] = torch.__version__
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp))
    text = json.dumps(results, indent=2)
    logger.info("%s", text)
    if args.out:
        args.out.write_text(text)
    elif os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "sd15_smoke.json").write_text(text)


if __name__ == "__main__":
    main()
