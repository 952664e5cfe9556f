"""How fast the app's VAE decodes and encodes, in each layout the engine could use (GPU machine; feeds accel.py).

    python -m tests.gpu.vae_probe CHECKPOINT [CHECKPOINT ...] [--sizes 512 1024] [--compile] [--runs 10] [--out FILE]

Each checkpoint is loaded through the app's ModelManager (fp16 VAE, prepared as for a job: ``accel.prepare_vae``).
For each image size (default: the family's native size; SD1/SD2 also at 1024², a hires fix's decode) the same
random latents are decoded by the engine's own path (``engine/vae.py`` ``decode_latents``: decode, NaN check, PIL
image) with the VAE

- ``contiguous``: NCHW with PyTorch's GroupNorm and separate SiLU (the engine before ``prepare_vae``);
- ``channels_last``: NHWC, PyTorch's GroupNorm;
- ``engine``: NHWC with the Triton GroupNorm (+SiLU) kernel: what ``prepare_vae`` installs;
- ``compiled`` (with ``--compile``): ``torch.compile`` of the decoder (inductor, NHWC, PyTorch's GroupNorm, no graphs),
  its compile seconds and its decode alone.

With ``--profile`` the ``engine`` and ``compiled`` decodes are also profiled (torch.profiler): kernel time by class
and the largest kernels, as ``tests.gpu.unet_profile`` does for the UNet.

Each time is the median of ``--runs`` synchronised calls after a warm-up, with the peak memory allocated during the
runs and the largest pixel difference to ``contiguous``. The encoder (img2img's first step, ``encode_pixels``) is
timed for ``contiguous`` and ``engine``. On a CPU (the tests) the same runs in float32 with PyTorch's kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.engine import group_norm
from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.types import CheckpointInfo
from modules.engine.vae import decode_latents, encode_pixels
from tests.gpu.bench import timed
from tests.gpu.unet_profile import kernel_profile


def _median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median milliseconds of ``runs`` calls after a warm-up, and the peak GB allocated while they ran."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ms = 1000.0 * statistics.median(timed(fn, 0, runs))
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0
    return ms, peak


def _layout(vae: torch.nn.Module, name: str) -> None:
    """Put ``vae`` in one of the layouts of the module's docstring (``contiguous``/``channels_last``/``engine``)."""
    group_norm.uninstall(vae)
    if name == "contiguous":
        vae.to(memory_format=torch.contiguous_format)
        return
    vae.to(memory_format=torch.channels_last)
    if name == "engine":
        group_norm.install(vae)


def _pixels(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def probe_size(vae: Any, side: int, runs: int, *, compile: bool, profile: bool = False) -> dict[str, Any]:
    """The decode (and encode) timings of one square image size; see the module's docstring."""
    device = next(vae.parameters()).device
    f = vae.scale_factor
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, vae.config.latent_channels, side // f, side // f, generator=generator)
    latents = (latents * vae.config.scaling_factor).to(device, vae.dtype)
    pixels = torch.rand(1, 3, side, side, generator=generator) * 2.0 - 1.0
    result: dict[str, Any] = {"size": side}
    reference = None
    for name in ("contiguous", "channels_last", "engine"):
        _layout(vae, name)
        ms, peak = _median_ms(lambda: decode_latents(vae, latents), runs)
        images = _pixels(decode_latents(vae, latents))
        reference = images if reference is None else reference
        result[name] = {
            "decode_ms": ms,
            "peak_allocated_gb": peak,
            "max_abs_pixel_diff": int(np.abs(images - reference).max()),
            "mean_abs_pixel_diff": float(np.abs(images - reference).mean()),
        }
        if name != "channels_last":
            result[name]["encode_ms"] = _median_ms(lambda: encode_pixels(vae, pixels), runs)[0]
        if profile and name == "engine":
            result[name]["profile"] = kernel_profile(lambda: decode_latents(vae, latents))
    if compile:
        _layout(vae, "channels_last")
        decoder = torch.compile(vae.decoder)
        z = latents / vae.config.scaling_factor

        def decode() -> torch.Tensor:
            with torch.inference_mode():
                return decoder(vae.post_quant_conv(z))

        started = time.perf_counter()
        decode()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
        ms, peak = _median_ms(decode, runs)
        with torch.inference_mode():
            x = torch.clamp((decode().float() + 1.0) / 2.0, 0.0, 1.0)
        images = (255.0 * x).permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy().astype(np.int16)
        result["compiled"] = {
            "compile_s": compile_s,
            "decode_ms": ms,
            "peak_allocated_gb": peak,
            "max_abs_pixel_diff": int(np.abs(images - reference).max()),
        }
        if profile:
            result["compiled"]["profile"] = kernel_profile(decode)
    _layout(vae, "engine" if device.type == "cuda" else "contiguous")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--sizes", nargs="*", type=int, help="image sides (default: native, and 1024 for SD1/SD2)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="kernel profiles of the engine's and compiled decode")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    for path in args.checkpoints:
        manager = ModelManager()
        options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
        model = manager.get(CheckpointInfo(path, path.name), options)
        sizes = args.sizes or ([1024] if model.model_type.is_sdxl else [512, 1024])
        vae = model.components.vae
        report[path.name] = [
            probe_size(vae, side, args.runs, compile=args.compile, profile=args.profile) for side in sizes
        ]
        print(json.dumps(report[path.name], indent=1), flush=True)
        del model, vae
        manager.unload()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
