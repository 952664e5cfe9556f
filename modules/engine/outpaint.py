"""Outpainting: A1111's img2img script "Poor man's outpainting" (its arguments, canvas and mask geometry).

``script_args`` as A1111 takes them: ``[pixels=128, mask_blur=4, inpainting_fill=0 ("fill"), direction=["left",
"right", "up", "down"]]``. The canvas grows by ``pixels`` in each chosen direction, rounded up so both sides are
multiples of 64 (the extra is shared between opposite sides as A1111 shares it); the original is pasted in; the new
border is the mask, inset by ``2·mask_blur`` so the seam is repainted too, and blurred by ``2·mask_blur``.

Deviation (README): A1111 repaints the border tile by tile at width×height (a 2022 memory workaround, with
visible tile seams); here the whole expanded canvas is inpainted in one pass at its own size, with the same
mask, masked content, seed and the rest of the request.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

TITLE = "Poor man's outpainting"
DIRECTIONS = ("left", "right", "up", "down")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
MAX_CANVAS_SIDE = 4096


@dataclass(frozen=True, slots=True)
class OutpaintArgs:
    """The script's arguments (A1111's order and defaults)."""

    pixels: int = 128
    mask_blur: int = 4
    inpainting_fill: int = 0
    direction: tuple[str, ...] = DIRECTIONS

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> OutpaintArgs:
        """Parse A1111's positional ``script_args``; missing trailing ones take their defaults.

        Raises:
            InvalidRequestError: Naming the bad argument.
        """
        defaults = cls()
        values = list(args) + [None] * (4 - len(args))
        if len(args) > 4:
            raise InvalidRequestError(
                f"script_args: {TITLE} takes 4 arguments (pixels, mask_blur, masked content, "
                f"direction), got {len(args)}"
            )
        try:
            pixels = int(values[0]) if values[0] is not None else defaults.pixels
            blur = int(values[1]) if values[1] is not None else defaults.mask_blur
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"script_args: pixels and mask_blur must be integers ({exc})") from exc
        fill = values[2] if values[2] is not None else defaults.inpainting_fill
        if isinstance(fill, str) and fill in MASKED_CONTENT:
            fill = MASKED_CONTENT.index(fill)
        direction = tuple(values[3]) if values[3] is not None else defaults.direction
        parsed = cls(pixels, blur, fill if isinstance(fill, int) else -1, direction)
        parsed.validate()
        return parsed

    def validate(self) -> None:
        """Raise InvalidRequestError for out-of-range arguments."""
        problems = common_problems(self.pixels, self.mask_blur, self.direction)
        if self.inpainting_fill not in range(len(MASKED_CONTENT)):
            problems.append(f"masked content must be 0–3 or one of {', '.join(MASKED_CONTENT)}")
        if problems:
            raise InvalidRequestError(f"script_args ({TITLE}): " + "; ".join(problems))


def common_problems(pixels: int, mask_blur: int, direction: Sequence[str]) -> list[str]:
    """Range problems of the arguments both outpainting scripts share (A1111's slider ranges)."""
    problems = []
    if not 8 <= pixels <= 256:
        problems.append(f"pixels must be between 8 and 256, got {pixels}")
    if not 0 <= mask_blur <= 64:
        problems.append(f"mask_blur must be between 0 and 64, got {mask_blur}")
    if not direction or any(d not in DIRECTIONS for d in direction):
        problems.append(f"direction must be a non-empty list of {', '.join(DIRECTIONS)}, got {list(direction)}")
    return problems


def kept_rect(size: tuple[int, int], sides: tuple[int, int, int, int], inset: int) -> tuple[int, int, int, int]:
    """The original image's rectangle on the canvas, shrunk by ``inset`` on each expanded side.

    ``sides`` are the expansions (left, right, up, down); ``size`` is the canvas size.
    """
    (w, h), (left, right, up, down) = size, sides
    return (
        left + (inset if left > 0 else 0),
        up + (inset if up > 0 else 0),
        w - right - (inset if right > 0 else 0),
        h - down - (inset if down > 0 else 0),
    )


def script_info() -> dict[str, Any]:
    """The ``/sdapi/v1/script-info`` entry (A1111's field shape: label, value, min/max/step or choices)."""
    return {
        "name": TITLE.lower(),
        "is_alwayson": False,
        "is_img2img": True,
        "args": [
            {"label": "Pixels to expand", "value": 128, "minimum": 8, "maximum": 256, "step": 8, "choices": None},
            {"label": "Mask blur", "value": 4, "minimum": 0, "maximum": 64, "step": 1, "choices": None},
            {"label": "Masked content", "value": "fill", "choices": list(MASKED_CONTENT)},
            {"label": "Outpainting direction", "value": list(DIRECTIONS), "choices": list(DIRECTIONS)},
        ],
    }


def canvas_geometry(width: int, height: int, args: OutpaintArgs) -> tuple[int, int, int, int, int, int]:
    """(target_w, target_h, left, right, up, down) as A1111 computes them."""
    left = args.pixels if "left" in args.direction else 0
    right = args.pixels if "right" in args.direction else 0
    up = args.pixels if "up" in args.direction else 0
    down = args.pixels if "down" in args.direction else 0
    target_w = math.ceil((width + left + right) / 64) * 64
    target_h = math.ceil((height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - width) // (left + right)
    if right > 0:
        right = target_w - width - left
    if up > 0:
        up = up * (target_h - height) // (up + down)
    if down > 0:
        down = target_h - height - up
    return target_w, target_h, left, right, up, down


def expand(request: GenerationRequest, args: OutpaintArgs) -> GenerationRequest:
    """The inpainting request over the expanded canvas (size, init image, mask, blur, masked content).

    Raises:
        InvalidRequestError: Without an init image, or when the canvas would exceed 4096 pixels a side.
    """
    if not request.init_images:
        raise InvalidRequestError(f"{TITLE} needs an init image")
    source = request.init_images[0].convert("RGB")
    target_w, target_h, left, right, up, down = canvas_geometry(source.width, source.height, args)
    if max(target_w, target_h) > MAX_CANVAS_SIDE:
        raise InvalidRequestError(f"{TITLE}: the canvas would be {target_w}x{target_h}, above {MAX_CANVAS_SIDE}")
    canvas = Image.new("RGB", (target_w, target_h))
    canvas.paste(source, (left, up))
    mask = Image.new("L", (target_w, target_h), 255)
    inset = args.mask_blur * 2
    ImageDraw.Draw(mask).rectangle(kept_rect(mask.size, (left, right, up, down), inset), fill=0)
    return dataclasses.replace(
        request,
        init_images=(canvas,),
        mask=mask,
        width=target_w,
        height=target_h,
        resize_mode=0,
        mask_blur_x=inset,
        mask_blur_y=inset,
        inpainting_fill=args.inpainting_fill,
        inpaint_full_res=False,
        inpainting_mask_invert=0,
    )
