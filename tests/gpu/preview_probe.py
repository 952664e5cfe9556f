"""What live previews cost a watched job, by method (GPU machine).

    python -m tests.gpu.preview_probe CHECKPOINT… [--runs 5] [--out FILE]

For each checkpoint (loaded through the app's ModelManager: fp16 and CUDA graphs on a GPU) a job at the native size
(20 Euler steps, batch 1) is timed unwatched, then watched with a preview every 10 steps (two per job) drawn by
"Approx cheap" and by "Full", with "Prompt" content (A1111's default). Each watched job's image must equal the
unwatched one (previews never change what is sampled).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.progress import NoControls
from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest, PreviewSettings
from tests.gpu import probe_cli


class _Watcher(NoControls):
    def __init__(self) -> None:
        self.shown: list[tuple[int, tuple[int, int]]] = []

    def preview_wanted(self) -> bool:
        return True

    def show_preview(self, image: Image.Image, step: int) -> None:
        self.shown.append((step, image.size))


def probe(path: Path, *, runs: int, size: int | None = None, steps: int = 20) -> dict[str, Any]:
    """The figures of one checkpoint (see the module's docstring); ``size``/``steps`` shrink it for tests."""
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    model = ModelManager().get(CheckpointInfo(path, path.name), options)
    side = size or (1024 if model.model_type.is_sdxl else 512)
    request = GenerationRequest(
        prompt="a photo of a cat", negative_prompt="blurry", steps=steps, width=side, height=side, seed=1,
        sampler_name="Euler",
    )  # fmt: skip

    def job(method: str | None) -> tuple[float, np.ndarray, list]:
        controls = _Watcher() if method else NoControls()
        every = steps // 2 if method else 0
        options = GenerationOptions(preview=PreviewSettings(every_n_steps=every, method=method or "Full"))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        image = generate(model, request, options, controls).images[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, np.asarray(image), getattr(controls, "shown", [])

    result: dict[str, Any] = {"checkpoint": path.name, "device": device, "size": side, "steps": steps}
    job(None)
    plain = job(None)[1]
    for method in (None, "Approx cheap", "Full"):
        job(method)  # the method's first use (kernels, the decoder's graph)
        times, last = [], None
        for _ in range(runs):
            seconds, image, shown = job(method)
            times.append(seconds)
            last = (image, shown)
        key = method or "unwatched"
        result[f"{key}_s"] = statistics.median(times)
        result[f"{key}_same_image"] = bool(np.array_equal(last[0], plain))
        result[f"{key}_previews"] = last[1]
    return result


def main(argv: list[str] | None = None) -> int:
    args = probe_cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return probe_cli.report([probe(path, runs=args.runs) for path in args.checkpoints], args.out)


if __name__ == "__main__":
    raise SystemExit(main())
