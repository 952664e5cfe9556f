"""Real-size random SD1.5 checkpoint on CUDA: img2img, inpainting and txt2img + hires fix 512→1024 (issue 4).

Run on the GPU machine: ``python -m tests.gpu.img2img_hires [--out results.json]``. Times each job (median of
``runs`` after a warm-up) and records the peak CUDA memory it allocated/reserved. Weights are random, so the
pictures are noise; sizes, finiteness and that unmasked pixels are kept are checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from tests.support.tiny_checkpoints import write_checkpoint

logger = logging.getLogger(__name__)


def _timed(model: Any, req: GenerationRequest, runs: int, **kwargs: Any) -> tuple[dict[str, float], Any]:
    generate(model, req, **kwargs)  # warm-up (CUDA graphs are captured for new shapes here)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = generate(model, req, **kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    for image in res.images:
        assert np.isfinite(np.asarray(image, dtype=np.float32)).all()
    stats = {
        "median_s": float(np.median(times)),
        "min_s": float(min(times)),
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
        "size": "x".join(map(str, res.images[0].size)),
    }
    return stats, res


def run(workdir: Path, runs: int = 3, upscaler: Any = None) -> dict[str, object]:
    """Write the checkpoint, load it in fp16 and time the img2img/inpaint/hires jobs."""
    path = workdir / "sd15-random.safetensors"
    write_checkpoint("sd1", path, size="full", write_yaml=False)
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    assert device.startswith("cuda"), f"no CUDA device (got {device})"
    model = ModelManager().get(
        CheckpointInfo(path, path.name), LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    )
    rng = np.random.RandomState(0)
    init = Image.fromarray((rng.rand(512, 512, 3) * 255).astype("uint8"))
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    base = {"prompt": "a photo of a cat", "steps": 20, "seed": 1, "sampler_name": "DPM++ 2M"}
    results: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["img2img_512_d0.75"], _ = _timed(model, GenerationRequest(**base, init_images=(init,)), runs)
    inpaint = GenerationRequest(**base, init_images=(init,), mask=mask, denoising_strength=1.0)
    results["inpaint_512_whole"], res = _timed(model, inpaint, runs)
    out = np.asarray(res.images[0]).astype(int)
    results["inpaint_unmasked_max_diff"] = int(np.abs(out[:64, :64] - np.asarray(init)[:64, :64]).max())
    hr = {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.7}
    results["txt2img_512_hires_1024_latent"], _ = _timed(model, GenerationRequest(**base, **hr), runs)
    if upscaler is not None:
        req = GenerationRequest(**base, **hr, hr_upscaler="Lanczos")
        results["txt2img_512_hires_1024_lanczos"], _ = _timed(
            model, req, runs, upscaler=upscaler, upscaler_names=["Lanczos"]
        )
    results["txt2img_512_plain"], _ = _timed(model, GenerationRequest(**base), runs)
    return results


def _registry() -> Any:
    """The app's upscaler registry when it is importable (built-ins only), else None."""
    try:
        from modules.engine.upscalers import UpscalerRegistry
    except ImportError:
        return None
    return UpscalerRegistry([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), upscaler=_registry())
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    elif os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "img2img_hires.json").write_text(text)


if __name__ == "__main__":
    main()
