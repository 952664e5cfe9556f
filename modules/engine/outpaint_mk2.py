"""Outpainting: A1111's img2img script "Outpainting mk2" (arguments, canvas geometry and its FFT-matched noise fill).

``script_args`` as A1111 takes them: ``[info (ignored), pixels=128, mask_blur=8, direction=["left", "right", "up",
"down"], noise_q=1.0 (fall-off exponent), color_variation=0.05]``. The new border is not left black: it is filled
with noise whose spectrum follows the visible image's (``|noise_fft|² · |src_fft|^noise_q`` with the source's phase)
and whose colours are histogram-matched to the visible pixels, then inpainted with masked content "original" — the
fill gives the sampler colours and structure to continue. The noise uses a fixed seed (A1111: the output follows
only the job's seed).

Deviation (README): A1111 runs one inpainting pass per direction (left, right, up, down, each at most width×height);
here the four borders are filled and inpainted in one pass over the whole expanded canvas, with the same masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modules.engine.outpaint import (
    DIRECTIONS,
    MAX_CANVAS_SIDE,
    OutpaintArgs,
    canvas_geometry,
    common_problems,
    kept_rect,
)
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

TITLE = "Outpainting mk2"
_ORIGINAL = 1  # masked content "original": the noise-filled canvas is the starting point


@dataclass(frozen=True, slots=True)
class Mk2Args:
    """The script's arguments (A1111's order and defaults, without the leading info text)."""

    pixels: int = 128
    mask_blur: int = 8
    direction: tuple[str, ...] = DIRECTIONS
    noise_q: float = 1.0
    color_variation: float = 0.05

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> Mk2Args:
        """Parse A1111's positional ``script_args`` (the first is the script's info text and is ignored).

        Raises:
            InvalidRequestError: Naming the bad argument.
        """
        if len(args) > 6:
            raise InvalidRequestError(
                f"script_args: {TITLE} takes 6 arguments (info, pixels, mask_blur, direction, noise_q, "
                f"color_variation), got {len(args)}"
            )
        values = [*list(args)[1:], *[None] * 5][:5]
        d = cls()
        try:
            parsed = cls(
                int(values[0]) if values[0] is not None else d.pixels,
                int(values[1]) if values[1] is not None else d.mask_blur,
                tuple(values[2]) if values[2] is not None else d.direction,
                float(values[3]) if values[3] is not None else d.noise_q,
                float(values[4]) if values[4] is not None else d.color_variation,
            )
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"script_args ({TITLE}): {exc}") from exc
        parsed.validate()
        return parsed

    def validate(self) -> None:
        """Raise InvalidRequestError for out-of-range arguments (A1111's slider ranges)."""
        problems = common_problems(self.pixels, self.mask_blur, self.direction)
        if not 0.0 <= self.noise_q <= 4.0:
            problems.append(f"noise_q (fall-off exponent) must be between 0 and 4, got {self.noise_q}")
        if not 0.0 <= self.color_variation <= 1.0:
            problems.append(f"color_variation must be between 0 and 1, got {self.color_variation}")
        if problems:
            raise InvalidRequestError(f"script_args ({TITLE}): " + "; ".join(problems))


def script_info() -> dict[str, Any]:
    """The ``/sdapi/v1/script-info`` entry."""
    return {
        "name": TITLE.lower(),
        "is_alwayson": False,
        "is_img2img": True,
        "args": [
            {"label": "Info", "value": None, "choices": None},
            {"label": "Pixels to expand", "value": 128, "minimum": 8, "maximum": 256, "step": 8, "choices": None},
            {"label": "Mask blur", "value": 8, "minimum": 0, "maximum": 64, "step": 1, "choices": None},
            {"label": "Outpainting direction", "value": list(DIRECTIONS), "choices": list(DIRECTIONS)},
            {"label": "Fall-off exponent (lower=higher detail)", "value": 1.0, "minimum": 0.0, "maximum": 4.0,
             "step": 0.01, "choices": None},
            {"label": "Color variation", "value": 0.05, "minimum": 0.0, "maximum": 1.0, "step": 0.01,
             "choices": None},
        ],
    }  # fmt: skip


def _fft2(data: np.ndarray) -> np.ndarray:
    """Per-channel orthonormal 2-D FFT with the zero frequency centred."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(data, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def _ifft2(data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_fft2`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(data, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def _falloff_window(rows: int, cols: int, std: float = 3.14) -> np.ndarray:
    """A1111's low-pass window for the starting noise: ``(1/((x²+1)(y²+1)))^(std/π)`` over aspect-scaled −1…1."""
    short = min(rows, cols)
    y = (np.arange(rows) / rows * 2.0 - 1.0) * (rows / short)
    x = (np.arange(cols) / cols * 2.0 - 1.0) * (cols / short)
    return (1.0 / ((y[:, None] ** 2 + 1.0) * (x[None, :] ** 2 + 1.0))) ** (std / 3.14)


def match_histograms(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map each channel of ``values`` (N, C) onto the distribution of ``reference`` (M, C) by quantiles."""
    out = np.empty_like(values)
    for c in range(values.shape[1]):
        _, src_index, src_counts = np.unique(values[:, c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(reference[:, c], return_counts=True)
        src_quantiles = np.cumsum(src_counts) / values.shape[0]
        ref_quantiles = np.cumsum(ref_counts) / reference.shape[0]
        out[:, c] = np.interp(src_quantiles, ref_quantiles, ref_values)[src_index.ravel()]
    return out


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float, color_variation: float) -> np.ndarray:
    """Fill the masked area of ``image`` (H, W, 3 in 0…1; ``mask`` H, W in 0…1, 1 = new) with spectrum-matched noise.

    Returns:
        The image with the masked area replaced by the noise (unmasked pixels unchanged), clipped to 0…1.
    """
    mask_rgb = np.repeat(mask[:, :, None], 3, axis=2)
    fill_area, reference_area = mask > 1e-6, mask < 1e-3
    windowed = image * (1.0 - mask_rgb)
    windowed = windowed / max(float(windowed.max()), 1e-8) + float(image.mean()) * mask_rgb
    src_fft = _fft2(windowed)
    src_dist = np.abs(src_fft)
    src_phase = src_fft / np.maximum(src_dist, 1e-12)

    rng = np.random.default_rng(0)
    noise = rng.random(image.shape)
    grey = noise.mean(axis=2, keepdims=True)
    noise = noise * color_variation + (1.0 - color_variation) * grey
    noise = np.real(_ifft2(_fft2(noise) * _falloff_window(*image.shape[:2])[:, :, None]))
    shaped = np.real(_ifft2(np.abs(_fft2(noise)) ** 2 * src_dist**noise_q * src_phase))
    shaped -= shaped.min()
    shaped /= max(float(shaped.max()), 1e-8)
    if fill_area.any() and reference_area.any():
        shaped[fill_area] = match_histograms(shaped[fill_area], image[reference_area])
    return np.clip(image * (1.0 - mask_rgb) + shaped * mask_rgb, 0.0, 1.0)


def expand(request: GenerationRequest, args: Mk2Args) -> GenerationRequest:
    """The inpainting request over the expanded, noise-filled canvas.

    Raises:
        InvalidRequestError: Without an init image, or when the canvas would exceed 4096 pixels a side.
    """
    if not request.init_images:
        raise InvalidRequestError(f"{TITLE} needs an init image")
    source = request.init_images[0].convert("RGB")
    geometry = OutpaintArgs(pixels=args.pixels, direction=args.direction)
    target_w, target_h, left, right, up, down = canvas_geometry(source.width, source.height, geometry)
    if max(target_w, target_h) > MAX_CANVAS_SIDE:
        raise InvalidRequestError(f"{TITLE}: the canvas would be {target_w}x{target_h}, above {MAX_CANVAS_SIDE}")
    canvas = Image.new("RGB", (target_w, target_h))
    canvas.paste(source, (left, up))
    sides = (left, right, up, down)
    new_area = Image.new("L", canvas.size, 255)
    ImageDraw.Draw(new_area).rectangle(kept_rect(canvas.size, sides, 0), fill=0)
    mask = Image.new("L", canvas.size, 255)
    ImageDraw.Draw(mask).rectangle(kept_rect(canvas.size, sides, args.mask_blur), fill=0)
    pixels = np.asarray(canvas, dtype=np.float64) / 255.0
    filled = matched_noise(pixels, np.asarray(new_area, dtype=np.float64) / 255.0, args.noise_q, args.color_variation)
    canvas = Image.fromarray((filled * 255.0).astype(np.uint8), mode="RGB")
    return dataclasses.replace(
        request,
        init_images=(canvas,),
        mask=mask,
        width=target_w,
        height=target_h,
        resize_mode=0,
        mask_blur_x=args.mask_blur,
        mask_blur_y=args.mask_blur,
        inpainting_fill=_ORIGINAL,
        inpaint_full_res=False,
        inpainting_mask_invert=0,
    )
