"""VAE decode/encode between latents and PIL images, with A1111's rounding and fp16-NaN fallback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine.offload import execution_device

logger = logging.getLogger(__name__)


def pixels_from_images(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """RGB images (all of one size) as a float32 (B, 3, H, W) batch in −1…1.

    A size that is not a multiple of 8 is first resized down to one (Lanczos), as the VAE's latents need.
    """
    batch = [images] if isinstance(images, Image.Image) else list(images)
    arrays = []
    for image in batch:
        image = image.convert("RGB")
        width, height = image.width - image.width % 8, image.height - image.height % 8
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0 * 2.0 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def decode_latents(vae: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Decode each latent alone with the VAE to an RGB image (A1111: clamp, then truncate to uint8).

    An fp16 VAE that produces NaNs is switched to fp32 once and the decode retried (A1111's auto VAE precision).
    Running out of memory switches the VAE to tiled decoding (for good) and retries, so a large hires image that
    does not fit decodes in tiles instead of failing.
    """
    scale = vae.config.scaling_factor
    images = []
    with torch.inference_mode():
        for latent in latents:
            x = _decode_or_tile(vae, latent[None].to(execution_device(vae), vae.dtype) / scale)
            if not torch.isfinite(x).all() and vae.dtype != torch.float32:
                logger.warning("The VAE produced NaNs in %s; switching it to float32 for this model", vae.dtype)
                vae.to(torch.float32)
                x = vae.decode(latent[None].to(execution_device(vae), torch.float32) / scale).sample
            x = torch.clamp((x.float() + 1.0) / 2.0, 0.0, 1.0)
            arr = (255.0 * x[0]).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
            images.append(Image.fromarray(arr, "RGB"))
    return images


def _decode_or_tile(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z)``; on out of memory, free the cache, enable tiled decoding and try once more."""
    try:
        return vae.decode(z).sample
    except torch.OutOfMemoryError:
        if getattr(vae, "use_tiling", False):
            raise
        logger.warning("Out of memory decoding %s latents; switching the VAE to tiled decoding", tuple(z.shape))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        vae.enable_tiling()
        return vae.decode(z).sample


def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Encode a (B, 3, H, W) batch in −1…1 to scaled latents (the mode), one image at a time."""
    with torch.inference_mode():
        latents = [vae.encode(p[None].to(execution_device(vae), vae.dtype)).latent_dist.mode() for p in pixels]
    return torch.cat(latents) * vae.config.scaling_factor


def encode_images(vae: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """Encode RGB images (all of one size) to scaled latents: the distribution's mode, one image at a time.

    A1111 samples the posterior with the global RNG; the mode is the deterministic equivalent (see README).
    """
    scale = vae.config.scaling_factor
    latents = []
    with torch.inference_mode():
        for image in images:
            arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            pixels = torch.from_numpy(arr).permute(2, 0, 1)[None].to(execution_device(vae), vae.dtype)
            dist = vae.encode(pixels).latent_dist
            if not torch.isfinite(dist.mean).all() and vae.dtype != torch.float32:
                logger.warning("The VAE encoder produced NaNs in %s; switching it to float32", vae.dtype)
                vae.to(torch.float32)
                dist = vae.encode(pixels.float()).latent_dist
            latents.append(dist.mode() * scale)
    return torch.cat(latents)
