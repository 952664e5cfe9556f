"""img2img and inpainting batches over the loaded model's derived diffusers pipelines (same weights, no reload).

A1111 behaviour kept here: init images resized by ``resize_mode``; denoising strength runs
``int(steps × min(strength, 0.999)) + 1`` steps; the mask is inverted (``inpainting_mask_invert``) and blurred
(``mask_blur_x/y``) before use; regular models inpaint by latent masking, 9-channel inpainting models through their
extra channels; the result is composited with the original through the blurred mask, so unmasked pixels come back
unchanged; "Only masked" (``inpaint_full_res``) generates the padded mask region at width×height and pastes it back
into the full-size original (so the result keeps the original's size). Not yet: masked content "fill",
"latent noise" and "latent nothing" act as "original", and resize mode 3 (latent upscale) acts as "Just resize".
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from modules.engine.loader import LoadedModel
from modules.engine.masking import Box, crop_region, expand_to_ratio
from modules.engine.prompt_encoding import PromptEmbeddings
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def resize_image(image: Image.Image, width: int, height: int, mode: int) -> Image.Image:
    """Resize ``image`` to width×height the A1111 way for ``mode`` (0 stretch, 1 crop, 2 fill, 3 as 0).

    >>> resize_image(Image.new("RGB", (100, 50)), 64, 64, 1).size
    (64, 64)
    """
    image = image.convert("RGB")
    if mode in (0, 3):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale = (max if mode == 1 else min)(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((w, h), Image.Resampling.LANCZOS)
    if mode == 1:  # crop the centre
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == 2:  # fit inside, then stretch the edge pixels into the borders
        arr = np.asarray(resized)
        pad_y, pad_x = height - h, width - w
        pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0))
        return Image.fromarray(np.pad(arr, pads, mode="edge"))
    raise InvalidRequestError(f"resize_mode must be 0–3 ({', '.join(RESIZE_MODES)}), got {mode}")


@dataclass(frozen=True)
class Img2ImgInputs:
    """Prepared init images and mask of a job.

    Attributes:
        images: Init images resized to the job's size (image k of the job uses ``images[k % len(images)]``).
        mask: The processed mask ("L", white = repaint, inverted and blurred as requested) or None.
        paste_box, originals, overlay_mask: For "Only masked": the crop box in the original image, the original
            images, and the blurred mask at the original size.
    """

    images: tuple[Image.Image, ...]
    mask: Image.Image | None
    paste_box: Box | None = None  # "Only masked": where the generated crop goes back into the original
    originals: tuple[Image.Image, ...] = ()
    overlay_mask: Image.Image | None = None  # blurred full-size mask for the final composite

    def image_for(self, index: int) -> Image.Image:
        """Init image of job image ``index``."""
        return self.images[index % len(self.images)]


def _blur(mask: Image.Image, request: GenerationRequest) -> Image.Image:
    blur = (max(request.mask_blur_x, 0), max(request.mask_blur_y, 0))
    if not any(blur):
        return mask
    return mask.filter(ImageFilter.GaussianBlur(blur if blur[0] != blur[1] else blur[0]))


def prepare(request: GenerationRequest) -> Img2ImgInputs:
    """Resize the init images and prepare the mask of ``request``.

    Raises:
        InvalidRequestError: For a resize mode outside 0–3, a mask of another size than the init image, or an empty
            mask with "Only masked".
    """
    first, size = request.init_images[0], (request.width, request.height)
    if request.mask is None:
        return Img2ImgInputs(tuple(resize_image(im, *size, request.resize_mode) for im in request.init_images), None)
    if request.mask.size != first.size:
        raise InvalidRequestError(f"mask is {request.mask.size}, but the init image is {first.size}")
    if request.inpainting_fill != 1:
        logger.info("Masked content %d is not available yet; using 'original'", request.inpainting_fill)
    mask = request.mask.convert("L")
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    if request.inpaint_full_res:
        return _prepare_only_masked(request, mask)
    images = tuple(resize_image(im, *size, request.resize_mode) for im in request.init_images)
    mask = resize_image(mask.convert("RGB"), *size, request.resize_mode).convert("L")
    return Img2ImgInputs(images, _blur(mask, request))


def _prepare_only_masked(request: GenerationRequest, mask: Image.Image) -> Img2ImgInputs:
    """A1111's "Only masked": generate the padded mask region at width×height, to paste back at full size."""
    region = crop_region(mask, request.inpaint_full_res_padding)
    if region is None:
        raise InvalidRequestError("mask is empty: paint the area to repaint (inpaint_full_res needs a mask)")
    box = expand_to_ratio(region, request.width, request.height, mask.width, mask.height)
    originals = tuple(im.convert("RGB") for im in request.init_images)
    crops = tuple(resize_image(im.crop(box), request.width, request.height, 2) for im in originals)
    crop_mask = resize_image(mask.crop(box).convert("RGB"), request.width, request.height, 2).convert("L")
    return Img2ImgInputs(crops, _blur(crop_mask, request), box, originals, _blur(mask, request))


def effective_steps(request: GenerationRequest) -> int:
    """Steps that actually run at this denoising strength.

    A1111 (k-diffusion samplers) computes ``t_enc = int(steps × min(strength, 0.999))`` and samples the last
    ``t_enc + 1`` sigmas of the full schedule, i.e. ``t_enc + 1`` steps: 16 of 20 at 0.75, 20 of 20 at 1.0.
    """
    return min(int(request.steps * min(request.denoising_strength, 0.999)) + 1, request.steps)


def sample_batch(
    model: LoadedModel,
    request: GenerationRequest,
    embeds: PromptEmbeddings,
    inputs: Img2ImgInputs,
    first_index: int,
    generators: list[torch.Generator],
    callback: Callable[..., dict[str, Any]],
) -> torch.Tensor:
    """Run one img2img/inpaint batch and return its latents (image k uses its own generator)."""
    inpaint = inputs.mask is not None or model.model_type.is_inpaint
    with warnings.catch_warnings():  # diffusers nags about steps_offset of our A1111-style "linspace" schedules
        warnings.simplefilter("ignore", FutureWarning)
        pipe = model.inpaint() if inpaint else model.img2img()
    pipe.set_progress_bar_config(disable=True)
    bs = len(generators)
    kwargs: dict[str, Any] = {
        "image": [inputs.image_for(first_index + i) for i in range(bs)],
        # diffusers runs int(steps × strength) steps: ask for exactly A1111's count (at least 1, as A1111 does)
        "strength": min((effective_steps(request) + 1e-6) / request.steps, 1.0),
        "num_inference_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "generator": generators,
        "output_type": "latent",
        "callback_on_step_end": callback,
        **embeds_kwargs(embeds, bs),
    }
    if inpaint:
        full = Image.new("L", (request.width, request.height), 255)
        kwargs.update(mask_image=[inputs.mask or full] * bs, width=request.width, height=request.height)
    with torch.inference_mode():
        return pipe(**kwargs).images


def embeds_kwargs(embeds: PromptEmbeddings, batch_size: int) -> dict[str, torch.Tensor]:
    """The pipeline's prompt-embedding arguments, expanded to ``batch_size`` (one prompt shared by the batch)."""
    kwargs = {
        "prompt_embeds": embeds.prompt_embeds.expand(batch_size, -1, -1),
        "negative_prompt_embeds": embeds.negative_prompt_embeds.expand(batch_size, -1, -1),
    }
    if embeds.pooled_prompt_embeds is not None and embeds.negative_pooled_prompt_embeds is not None:
        kwargs["pooled_prompt_embeds"] = embeds.pooled_prompt_embeds.expand(batch_size, -1)
        kwargs["negative_pooled_prompt_embeds"] = embeds.negative_pooled_prompt_embeds.expand(batch_size, -1)
    return kwargs


def finish(image: Image.Image, inputs: Img2ImgInputs, index: int) -> Image.Image:
    """Composite a generated image with its original through the blurred mask (unmasked pixels unchanged)."""
    if inputs.mask is None:
        return image
    if inputs.paste_box is None:
        return Image.composite(image, inputs.image_for(index), inputs.mask)
    original = inputs.originals[index % len(inputs.originals)]
    x1, y1, x2, y2 = inputs.paste_box
    pasted = original.copy()
    pasted.paste(image.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
    return Image.composite(pasted, original, inputs.overlay_mask)


def infotext_extras(request: GenerationRequest) -> dict[str, Any]:
    """A1111's img2img parameters that follow the fixed keys."""
    extras: dict[str, Any] = {}
    if request.mask is not None:
        blur = max(request.mask_blur_x, request.mask_blur_y)
        extras["Mask blur"] = blur if blur > 0 else None
        extras["Mask mode"] = "Inpaint not masked" if request.inpainting_mask_invert else None
        extras["Inpaint area"] = "Only masked" if request.inpaint_full_res else None
        extras["Masked area padding"] = request.inpaint_full_res_padding if request.inpaint_full_res else None
    return {k: v for k, v in extras.items() if v is not None}
