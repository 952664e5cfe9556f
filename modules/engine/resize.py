"""A1111's four img2img resize modes, on PIL images (modes 0–2) and on latents (mode 3).

0 "Just resize" stretches to width×height; 1 "Crop and resize" scales to cover the target and crops the centre;
2 "Resize and fill" scales to fit inside the target and fills the borders by stretching the edge pixels outwards;
3 "Just resize (latent upscale)" keeps the image's own size in pixel space (rounded down to a multiple of 8 so the
VAE can encode it) and resizes the *latent* bilinearly to width/8×height/8 instead.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LATENT_UPSCALE = 3
LATENT_FACTOR = 8  # pixels per latent cell of the SD/SDXL VAEs


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """Resize ``image`` to width×height the A1111 way for ``mode`` (3 acts as 0 here; see ``prepare_for_latent``).

    >>> resize_image(Image.new("RGB", (100, 50)), 64, 64, 1).size
    (64, 64)

    Raises:
        InvalidRequestError: ``mode`` is not 0–3.
    """
    if mode not in range(len(RESIZE_MODES)):
        raise InvalidRequestError(f"resize_mode must be 0–3 ({', '.join(RESIZE_MODES)}), got {mode}")
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    if mode in (0, LATENT_UPSCALE):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == 1:
        return _crop_and_resize(image, width, height)
    return _resize_and_fill(image, width, height)


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return image.resize((w, h), Image.Resampling.LANCZOS)


def _crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width×height, then cut the centre out."""
    resized = _scaled(image, max(width / image.width, height / image.height))
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image fits inside width×height, centre it, and repeat its edge pixels into the borders."""
    resized = _scaled(image, min(width / image.width, height / image.height))
    arr = np.asarray(resized)
    pad_y, pad_x = max(height - arr.shape[0], 0), max(width - arr.shape[1], 0)
    pads = [(pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)] + [(0, 0)] * (arr.ndim - 2)
    return Image.fromarray(np.pad(arr, pads, mode="edge")[:height, :width])


def prepare_for_latent(image: Image.Image) -> Image.Image:
    """Mode 3's pixel image: the image's own size, rounded down to a multiple of 8 (at least 8) for the VAE.

    >>> prepare_for_latent(Image.new("RGB", (100, 50))).size
    (96, 48)
    """
    w = max(image.width // LATENT_FACTOR, 1) * LATENT_FACTOR
    h = max(image.height // LATENT_FACTOR, 1) * LATENT_FACTOR
    image = image.convert("RGB")
    return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.LANCZOS)


def resize_latent(latent: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize a (B, C, h, w) latent bilinearly to the latent size of a width×height image (A1111's mode 3).

    >>> resize_latent(torch.zeros(1, 4, 12, 6), 64, 32).shape
    torch.Size([1, 4, 4, 8])
    """
    size = (height // LATENT_FACTOR, width // LATENT_FACTOR)
    if tuple(latent.shape[-2:]) == size:
        return latent
    return torch.nn.functional.interpolate(latent, size=size, mode="bilinear")
