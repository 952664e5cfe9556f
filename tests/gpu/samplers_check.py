"""Every sampler (all run in the own loop) on CUDA fp16 with real-size random SD1.5 and SDXL checkpoints.

Run on the GPU machine: ``python -m tests.gpu.samplers_check [--skip-sdxl]``. For each sampler: seconds for 512²
20 steps (after a warm-up), finiteness, and batch image 1 == a single job with seed+1 (max pixel difference).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.samplers import SAMPLERS
from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest
from tests.support.tiny_checkpoints import write_checkpoint


def _load(manager: ModelManager, path: Path) -> object:
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    return manager.get(CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype))


def _check(model: object, size: int, sampler: str, prompt: str) -> dict[str, float]:
    base = {"prompt": prompt, "steps": 20, "width": size, "height": size, "sampler_name": sampler}
    generate(model, GenerationRequest(**base, seed=1))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    single = generate(model, GenerationRequest(**base, seed=2), GenerationOptions(eta_noise_seed_delta=31337))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    batch = generate(
        model, GenerationRequest(**base, seed=1, batch_size=2), GenerationOptions(eta_noise_seed_delta=31337)
    )
    a = np.asarray(batch.images[1], dtype=np.int16)
    b = np.asarray(single.images[0], dtype=np.int16)
    return {
        "s": round(seconds, 3),
        "finite": bool(np.isfinite(a).all()),
        "batch_vs_single_max_diff": int(np.abs(a - b).max()),
        "std": float(a.std()),
    }


def run(workdir: Path, skip_sdxl: bool) -> dict[str, object]:
    manager = ModelManager()
    results: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    sd15 = _load(manager, write_checkpoint("sd1", workdir / "sd15.safetensors", size="full", write_yaml=False))
    results["sd15"] = {s.name: _check(sd15, 512, s.name, "a photo of a cat") for s in SAMPLERS}
    results["sd15_prompt_editing"] = _check(sd15, 512, "DPM++ 2M", "a [cat:dog:0.4] AND [red|blue] sky :0.6")
    del sd15
    if not skip_sdxl:
        sdxl = _load(manager, write_checkpoint("sdxl", workdir / "sdxl.safetensors", size="full", write_yaml=False))
        results["sdxl"] = {
            name: _check(sdxl, 1024, name, "a [cat:dog:0.4] AND sky :0.6")
            for name in ("DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC", "LCM")
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-sdxl", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), args.skip_sdxl)
    text = json.dumps(results, indent=1)
    print(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "samplers_check.json").write_text(text)


if __name__ == "__main__":
    main()
