"""Extras (A1111's postprocessing upscale): upscaler 1, optionally blended with upscaler 2, by a scale or to a size.

A1111 behaviour (scripts/postprocessing_upscale.py, modules/upscaler.py):

- Scale by (``resize_mode`` 0): the target is ``(w·s)//8·8 × (h·s)//8·8``. Scale to (1): the scale is
  ``max(W/w, H/h)``, so the image covers W×H; with ``upscaling_crop`` it is then centre-cropped to W×H.
- Upscaler 1 "None" leaves the image as it is; upscaler 2 is blended in with ``extras_upscaler_2_visibility``.
- Info keys in order: ``Postprocess upscale by`` / ``Postprocess upscale to``, ``Postprocess upscaler``,
  ``Postprocess upscaler 2``, ``Postprocess crop to``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.engine.upscalers import UpscalerRegistry
from modules.errors import InvalidRequestError

MAX_EXTRAS_SIDE = 16384


@dataclass(frozen=True, slots=True)
class ExtrasOptions:
    """A1111's extras fields (API names and defaults)."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0

    def validate(self, names: list[str]) -> None:
        """Raise InvalidRequestError naming every bad field."""
        problems = []
        if self.resize_mode not in (0, 1):
            problems.append(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if self.resize_mode == 0 and not 0 < self.upscaling_resize <= 8:
            problems.append(f"upscaling_resize must be above 0 and at most 8, got {self.upscaling_resize}")
        if self.resize_mode == 1:
            for field in ("upscaling_resize_w", "upscaling_resize_h"):
                if not 1 <= getattr(self, field) <= MAX_EXTRAS_SIDE:
                    problems.append(f"{field} must be between 1 and {MAX_EXTRAS_SIDE}, got {getattr(self, field)}")
        if not 0 <= self.extras_upscaler_2_visibility <= 1:
            visibility = self.extras_upscaler_2_visibility
            problems.append(f"extras_upscaler_2_visibility must be between 0 and 1, got {visibility}")
        for field in ("upscaler_1", "upscaler_2"):
            name = getattr(self, field)
            if name not in names:
                problems.append(f"{field}: could not find upscaler named {name!r}; known: {', '.join(names)}")
        if problems:
            raise InvalidRequestError("; ".join(problems))


def _upscale(
    registry: UpscalerRegistry, image: Image.Image, name: str, opts: ExtrasOptions, info: dict[str, Any]
) -> Image.Image:
    """One upscaler's result at the extras target (A1111's ``upscale``), cropped for "scale to" + crop."""
    if opts.resize_mode == 1:
        scale = max(opts.upscaling_resize_w / image.width, opts.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{opts.upscaling_resize_w}x{opts.upscaling_resize_h}"
    else:
        scale = opts.upscaling_resize
        info["Postprocess upscale by"] = int(scale) if float(scale).is_integer() else scale
    width, height = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
    if width < 8 or height < 8:
        raise InvalidRequestError(f"the upscaled image would be {width}x{height}: choose a larger scale")
    if max(width, height) > MAX_EXTRAS_SIDE:
        raise InvalidRequestError(
            f"the upscaled image would be {width}x{height}, above {MAX_EXTRAS_SIDE} pixels a side"
        )
    result = registry.upscale(image, width, height, name)
    if opts.resize_mode == 1 and opts.upscaling_crop:
        w, h = opts.upscaling_resize_w, opts.upscaling_resize_h
        cropped = Image.new("RGB", (w, h))
        cropped.paste(result, (w // 2 - result.width // 2, h // 2 - result.height // 2))
        result = cropped
        info["Postprocess crop to"] = f"{w}x{h}"
    return result


def run_extras(
    registry: UpscalerRegistry, image: Image.Image, opts: ExtrasOptions
) -> tuple[Image.Image, dict[str, Any]]:
    """Upscale one image; returns the result and A1111's ``Postprocess …`` info (empty when nothing was done).

    Raises:
        InvalidRequestError: For a bad field or an unknown upscaler.
        UpscalerLoadError: An upscaler model file cannot be used.
    """
    opts.validate(registry.names())
    image = image.convert("RGB")
    info: dict[str, Any] = {}
    if opts.upscaler_1 == "None":  # A1111: without upscaler 1 the step does nothing
        return image, info
    first = _upscale(registry, image, opts.upscaler_1, opts, info)
    info_order = {k: info.pop(k) for k in list(info) if k != "Postprocess crop to"}
    crop = info.pop("Postprocess crop to", None)
    info = {**info_order, "Postprocess upscaler": opts.upscaler_1}
    if opts.upscaler_2 != "None" and opts.extras_upscaler_2_visibility > 0:
        second = _upscale(registry, image, opts.upscaler_2, opts, {})
        first = Image.blend(first, second.convert(first.mode), opts.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = opts.upscaler_2
    if crop is not None:
        info["Postprocess crop to"] = crop
    return first, info


def format_info(info: dict[str, Any]) -> str:
    """``Key: value, Key: value`` as A1111 writes the extras infotext."""
    return ", ".join(f"{k}: {v}" for k, v in info.items())
