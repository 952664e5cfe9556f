"""img2img and inpainting: init images, masks and latents prepared for the own sampling loop (``kloop``).

A1111 behaviour kept here:

- Init images are resized by ``resize_mode`` (``modules.engine.resize``); mode 3 encodes the image at its own size and
  resizes the latent. With a mask, mode 3 acts as "Just resize" (the mask and the paste-back need pixel sizes).
- Denoising strength runs ``int(steps × min(strength, 0.999)) + 1`` steps (see ``effective_steps``).
- The mask is binarised (``mask_round``), inverted (``inpainting_mask_invert``) and Gaussian-blurred per axis
  (``mask_blur_x/y``) at the init image's size, then resized like the image.
- Masked content: 0 "fill" pre-fills the masked area with the blurred surrounding colours; 1 "original" keeps it;
  2 "latent noise" / 3 "latent nothing" also pre-fill, then replace the masked part of the initial latent by
  unit noise (seeded with the image's seed) or zeros. Regular models inpaint by latent masking and 9-channel
  inpainting models through their extra channels.
- "Only masked" (``inpaint_full_res``) generates the padded, aspect-expanded mask region at width×height and pastes
  it back into the full-size original. The result is composited with the original through the blurred mask
  (doubled and clipped for "Whole picture"), so pixels outside the blurred mask come back byte-identical.

Per-image ``torch.Generator``s seeded with each image's seed make batch image i equal a single job with seed+i.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from modules.engine.denoiser import MaskBlend
from modules.engine.kloop import BatchSetup
from modules.engine.loader import LoadedModel
from modules.engine.masking import Box, binary_mask, blur_mask, crop_region, expand_to_ratio, fill_masked, overlay_mask
from modules.engine.offload import execution_device
from modules.engine.resize import LATENT_UPSCALE, prepare_for_latent, resize_image, resize_latent
from modules.engine.rng import Generator, NoiseSpec
from modules.engine.rng_philox import PhiloxGenerator
from modules.engine.types import GenerationRequest
from modules.engine.vae import encode_pixels, pixels_from_images
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
_ORIGINAL, _LATENT_NOISE, _LATENT_NOTHING = 1, 2, 3


@dataclass(frozen=True)
class Img2ImgInputs:
    """Prepared init images and mask of a job.

    Attributes:
        images: What sampling starts from, at width×height (or the image's own size for latent upscale), already
            pre-filled for masked content "fill"/"latent noise"/"latent nothing". Job image k uses ``images[k % n]``.
        mask: The blurred mask at the generation size ("L", white = repaint), or None for plain img2img.
        overlay: Paste-back mask: at the generation size ("Whole picture") or the original size ("Only masked").
        bases: Images the result is composited onto (resized init images, or the originals for "Only masked").
        paste_box: "Only masked": the crop box in the original image.
        latent_upscale: Resize mode 3 without a mask: encode ``images`` as they are and resize the latent.
        masked_content: ``inpainting_fill`` (0–3).
    """

    images: tuple[Image.Image, ...]
    mask: Image.Image | None = None
    overlay: Image.Image | None = None
    bases: tuple[Image.Image, ...] = ()
    paste_box: Box | None = None
    latent_upscale: bool = False
    masked_content: int = _ORIGINAL

    def image_for(self, index: int) -> Image.Image:
        """Init image of job image ``index``."""
        return self.images[index % len(self.images)]

    @property
    def needs_latents(self) -> bool:
        """Whether the initial latents are built here instead of from noise."""
        latent_fill = self.mask is not None and self.masked_content in (_LATENT_NOISE, _LATENT_NOTHING)
        return self.latent_upscale or latent_fill


def prepare(request: GenerationRequest) -> Img2ImgInputs:
    """Resize the init images and prepare the mask of ``request``.

    Raises:
        InvalidRequestError: For a resize mode outside 0–3, masked content outside 0–3, a mask of another size than
            the init image, or an empty mask with "Only masked".
    """
    size = (request.width, request.height)
    originals = tuple(im.convert("RGB") for im in request.init_images)
    if request.mask is None:
        if request.resize_mode == LATENT_UPSCALE:
            return Img2ImgInputs(tuple(prepare_for_latent(im) for im in originals), latent_upscale=True)
        return Img2ImgInputs(tuple(resize_image(im, *size, request.resize_mode) for im in originals))
    if request.mask.size != originals[0].size:
        raise InvalidRequestError(f"mask is {request.mask.size}, but the init image is {originals[0].size}")
    if request.inpainting_fill not in range(len(MASKED_CONTENT)):
        raise InvalidRequestError(f"inpainting_fill must be 0–3 ({', '.join(MASKED_CONTENT)})")
    mask = binary_mask(request.mask, request.mask_round)
    if request.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    blurred = blur_mask(mask, request.mask_blur_x, request.mask_blur_y)
    if request.inpaint_full_res:
        inputs = _prepare_only_masked(request, originals, blurred)
    else:
        mode = 0 if request.resize_mode == LATENT_UPSCALE else request.resize_mode
        bases = tuple(resize_image(im, *size, mode) for im in originals)
        gen_mask = resize_image(blurred, *size, mode)
        inputs = Img2ImgInputs(bases, gen_mask, overlay_mask(gen_mask), bases)
    if request.inpainting_fill != _ORIGINAL:
        filled = tuple(fill_masked(im, inputs.mask) for im in inputs.images)
        inputs = Img2ImgInputs(filled, inputs.mask, inputs.overlay, inputs.bases, inputs.paste_box)
    return Img2ImgInputs(
        inputs.images, inputs.mask, inputs.overlay, inputs.bases, inputs.paste_box, False, request.inpainting_fill
    )


def _prepare_only_masked(
    request: GenerationRequest, originals: tuple[Image.Image, ...], blurred: Image.Image
) -> Img2ImgInputs:
    """A1111's "Only masked": generate the padded mask region at width×height, to paste back at full size."""
    region = crop_region(blurred, request.inpaint_full_res_padding)
    if region is None:
        raise InvalidRequestError("mask is empty: paint the area to repaint (inpaint_full_res needs a mask)")
    box = expand_to_ratio(region, request.width, request.height, blurred.width, blurred.height)
    crops = tuple(resize_image(im.crop(box), request.width, request.height, 2) for im in originals)
    crop_mask = resize_image(blurred.crop(box), request.width, request.height, 2)
    return Img2ImgInputs(crops, crop_mask, blurred, originals, box)


def effective_steps(request: GenerationRequest) -> int:
    """Steps that actually run at this denoising strength.

    A1111 (k-diffusion samplers) computes ``t_enc = int(steps × min(strength, 0.999))`` and samples the last
    ``t_enc + 1`` sigmas of the full schedule, i.e. ``t_enc + 1`` steps: 16 of 20 at 0.75, 20 of 20 at 1.0.
    """
    return min(int(request.steps * min(request.denoising_strength, 0.999)) + 1, request.steps)


def kloop_setup(
    model: LoadedModel,
    request: GenerationRequest,
    inputs: Img2ImgInputs,
    first_index: int,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    seeds: list[int],
    spec: NoiseSpec,
) -> BatchSetup:
    """The own loop's batch: init latents, latent mask and 9-channel image conditioning.

    A1111: the latent mask keeps ``init`` outside the (rounded) mask after every step and at the end; 9-channel
    models get the rounded mask + the masked image's latents (everything masked when there is no mask).
    """
    parts = model.components
    bs = len(seeds)
    images = [inputs.image_for(first_index + i) for i in range(bs)]
    with torch.inference_mode():
        init = init_latents(parts, request, inputs, images, generators).float()
        h, w = init.shape[-2:]
        mask = None
        if inputs.mask is not None:
            cells = latent_mask(inputs.mask, w, h, request.mask_round).to(init)
            mask = MaskBlend(init, 1.0 - cells)
        image_cond = None
        if model.model_type.is_inpaint:
            full = inputs.mask or Image.new("L", (request.width, request.height), 255)
            masked = encode_pixels(parts.vae, _masked_pixels(images, full)).float()
            cond_mask = latent_mask(full, w, h, True).to(masked).expand(bs, -1, -1, -1)
            image_cond = torch.cat([cond_mask, masked], dim=1)
        elif model.model_type.is_edit:  # A1111's edit_image_conditioning: the source image's unscaled latents
            image_cond = torch.cat([encode_pixels(parts.vae, pixels_from_images(im)) for im in images])
            image_cond = image_cond.float() / parts.vae.config.scaling_factor
            if image_cond.shape[-2:] != init.shape[-2:]:  # "Just resize (latent upscale)"
                image_cond = resize_latent(image_cond, request.width, request.height)
    return BatchSetup(
        noise,
        generators,
        seeds,
        spec,
        init=init,
        denoising_strength=request.denoising_strength,
        image_cond=image_cond,
        mask=mask,
        image_cfg_scale=request.image_cfg_scale if model.model_type.is_edit else None,
    )


def init_latents(
    parts: Any,
    request: GenerationRequest,
    inputs: Img2ImgInputs,
    images: list[Image.Image],
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Encode ``images`` to scaled latents (the distribution's mode) and apply latent upscale / masked content.

    "latent noise" draws unit noise from a copy of each image's generator (same seed, so the sampler's own
    draws are unchanged); "latent nothing" zeroes the masked latent cells.
    """
    vae = parts.vae
    latents = []
    for image, gen in zip(images, generators, strict=True):
        pixels = pixels_from_images(image).to(execution_device(vae), vae.dtype)
        latent = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        if inputs.latent_upscale:
            latent = resize_latent(latent, request.width, request.height)
        if inputs.mask is not None and inputs.masked_content in (_LATENT_NOISE, _LATENT_NOTHING):
            cells = latent_mask(inputs.mask, latent.shape[-1], latent.shape[-2], request.mask_round).to(latent)
            fill = torch.zeros_like(latent)
            if inputs.masked_content == _LATENT_NOISE:
                fill = _seed_noise(gen, latent.shape).to(latent)
            latent = latent * (1 - cells) + fill * cells
        latents.append(latent)
    return torch.cat(latents)


def _seed_noise(gen: Generator, shape: Sequence[int]) -> torch.Tensor:
    """Unit noise from a fresh copy of ``gen`` (same seed), so the sampler's own draws are unchanged."""
    if isinstance(gen, PhiloxGenerator):
        return PhiloxGenerator(gen.initial_seed()).randn(shape)
    copy = torch.Generator(device=gen.device).manual_seed(gen.initial_seed())
    return torch.randn(tuple(shape), generator=copy, device=gen.device)


def latent_mask(mask: Image.Image, width: int, height: int, round_mask: bool) -> torch.Tensor:
    """The mask at latent resolution as a (1, 1, h, w) tensor in 0–1, rounded to 0/1 when ``round_mask`` (A1111)."""
    cells = np.asarray(mask.convert("L").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    tensor = torch.from_numpy(cells)[None, None]
    return torch.round(tensor) if round_mask else tensor


def _masked_pixels(images: list[Image.Image], mask: Image.Image) -> torch.Tensor:
    """The init images in -1…1 with the masked pixels zeroed (the 9-channel UNet's masked-image input)."""
    pixels = pixels_from_images(images)
    keep = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255 < 0.5)
    return pixels * keep[None, None].to(pixels)


def finish(image: Image.Image, inputs: Img2ImgInputs, index: int) -> Image.Image:
    """Composite a generated image with its original through the paste-back mask (unmasked pixels unchanged)."""
    if inputs.mask is None or inputs.overlay is None:
        return image
    base = inputs.bases[index % len(inputs.bases)]
    if inputs.paste_box is None:
        return Image.composite(image, base, inputs.overlay)
    x1, y1, x2, y2 = inputs.paste_box
    pasted = base.copy()
    pasted.paste(image.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
    return Image.composite(pasted, base, inputs.overlay)


def infotext_extras(request: GenerationRequest) -> dict[str, Any]:
    """A1111's inpainting parameters that follow the fixed keys (its ``extra_generation_params``), in §5.1 order.

    ``Mask blur`` is written only when x and y blur are equal and positive (A1111's ``mask_blur`` property).
    """
    if request.mask is None:
        return {}
    same_blur = request.mask_blur_x == request.mask_blur_y
    extras: dict[str, Any] = {
        "Mask blur": request.mask_blur_x if same_blur and request.mask_blur_x > 0 else None,
        "Inpaint area": "Only masked" if request.inpaint_full_res else None,
        "Masked area padding": request.inpaint_full_res_padding if request.inpaint_full_res else None,
        "Masked content": MASKED_CONTENT[request.inpainting_fill] if request.inpainting_fill != _ORIGINAL else None,
        "Mask mode": "Inpaint not masked" if request.inpainting_mask_invert else None,
    }
    return {k: v for k, v in extras.items() if v is not None}
