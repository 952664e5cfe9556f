"""Where a whole job's time goes beyond the UNet: W2's end-to-end gap (batch 8) by phase (GPU machine).

    python -m tests.gpu.phase_probe CHECKPOINT [--batch 8] [--size 512] [--runs 5] [--out FILE]

The checkpoint is loaded through the app's ModelManager (fp16, the default fast path). Timed, each the median of
``--runs`` after a warm-up and synchronised: the job (``generate``, 20 Euler steps, CFG 7) and the same job with 2
steps, whose difference gives one UNet step; the VAE decode of the batch's latents as the engine does it (each image
alone, ``engine/vae.py``, with its conversion to a PIL image) and as one batched ``vae.decode`` (what batching would
buy, with the largest pixel difference between the two). ``rest`` is the job minus 20 steps and the decode: text
encoding, noise, the sampler's own work, infotexts. On a CPU ``--tiny`` (tests) runs the same on a tiny checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.engine.loader import LoadedModel, LoadOptions, ModelManager, select_device
from modules.engine.pipeline import decode_latents, generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from tests.gpu.bench import timed


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    """Median wall time of ``runs`` synchronised calls of ``fn`` after one warm-up call."""
    return statistics.median(timed(fn, 1, runs))


def phases(model: LoadedModel, size: int, batch: int, runs: int) -> dict[str, Any]:
    """The job's phases in seconds for one batch (see the module's docstring)."""

    def job(steps: int) -> Callable[[], Any]:
        request = GenerationRequest(
            prompt="a photo of a cat", steps=steps, width=size, height=size, batch_size=batch, seed=1,
            sampler_name="Euler", cfg_scale=7.0,
        )  # fmt: skip
        return lambda: generate(model, request)

    e2e = median_seconds(job(20), runs)
    e2e_2 = median_seconds(job(2), runs)
    step = (e2e - e2e_2) / 18
    vae = model.components.vae
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    latents = latents.to(model.device, vae.dtype)
    decode_each = median_seconds(lambda: decode_latents(model, latents), runs)

    def batched() -> torch.Tensor:
        with torch.inference_mode():
            x = vae.decode(latents / vae.config.scaling_factor).sample
            return (255.0 * torch.clamp((x.float() + 1.0) / 2.0, 0.0, 1.0)).permute(0, 2, 3, 1).to(torch.uint8).cpu()

    decode_batched = median_seconds(batched, runs)
    each = np.stack([np.asarray(image, dtype=np.int16) for image in decode_latents(model, latents)])
    diff = np.abs(each - batched().numpy().astype(np.int16))
    return {
        "batch": batch,
        "size": size,
        "e2e_s": e2e,
        "e2e_2_steps_s": e2e_2,
        "unet_step_s": step,
        "unet_20_steps_s": 20 * step,
        "decode_each_s": decode_each,
        "decode_batched_s": decode_batched,
        "batched_vs_each_max_abs_pixel_diff": int(diff.max()),
        "rest_s": e2e - 20 * step - decode_each,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    info = CheckpointInfo(args.checkpoint, args.checkpoint.name)
    model = ModelManager().get(info, LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype))
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "checkpoint": args.checkpoint.name,
        **phases(model, args.size, args.batch, args.runs),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
