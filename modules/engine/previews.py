"""Live previews: an image of the running batch every N sampling steps, drawn while someone watches (A1111's).

A1111 keeps the latest latent of every step and decodes it when the web page or an API client asks for progress
(``shared.state.set_current_image``, in the request's thread). Here the job says whether anyone asked lately
(:meth:`JobControls.preview_wanted`), and the worker thread that owns the GPU draws the preview at the step it is
due, so nothing but the worker ever runs the model (DESIGN: one thread owns the GPU) and a job nobody watches pays
nothing. Drawing never changes what is sampled: the images are the same with and without previews.

Methods (setting ``show_progress_type``):
    ``Full``: the model's own VAE, at full size.
    ``Approx cheap``: a fixed linear map of the four latent channels to RGB at latent size (1/8 of the image's
        width), the colours the trained VAEs give each channel; SD1/SD2 share one map, SDXL has its own.
    ``Approx NN`` (A1111's default) and ``TAESD`` need decoder weights that A1111 ships or downloads; there are none
        here, so they draw as ``Approx cheap`` (README, deviations).
Content (``live_preview_content``): ``Combined`` (the guided prediction), ``Prompt`` (A1111's default: the prompt's
own prediction) or ``Negative prompt``. A period of -1 shows each finished batch instead (its decoded images).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from modules.engine.types import PreviewSettings
from modules.engine.vae import decode_latents

if TYPE_CHECKING:
    from modules.engine.loader import LoadedModel
    from modules.engine.progress import JobControls

logger = logging.getLogger(__name__)

# Latent channel → (R, G, B) in [-1, 1], for the latents as sampled (scaled by the VAE's scaling factor). Measured
# on the released VAEs by the community (the SD1 map on SD 1.4's VAE); facts of those trained weights.
_APPROX_SD = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
_APPROX_SDXL = (
    (0.3920, 0.4054, 0.4549),
    (-0.2634, -0.0196, 0.0653),
    (0.0568, 0.1687, -0.0755),
    (-0.3112, -0.2359, -0.2076),
)


def approx_cheap(latents: torch.Tensor, *, sdxl: bool) -> list[Image.Image]:
    """Images of ``latents`` (B, 4, h, w) through the linear channel map, each h × w pixels."""
    factors = torch.tensor(_APPROX_SDXL if sdxl else _APPROX_SD, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->brhw", latents[:, :4].float(), factors)
    pixels = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array, "RGB") for array in pixels]


def grid(images: list[Image.Image]) -> Image.Image:
    """The batch side by side in rows of ⌈√n⌉ (A1111's preview grid); one image stays itself."""
    if len(images) == 1:
        return images[0]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    sheet = Image.new("RGB", (cols * width, rows * height))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % cols) * width, (index // cols) * height))
    return sheet


def draw(model: LoadedModel, latents: torch.Tensor, settings: PreviewSettings) -> Image.Image:
    """The preview of one batch's ``latents`` by ``settings.method`` (a grid of the batch, or its first image)."""
    chosen = latents if settings.grid else latents[:1]
    if settings.method == "Full":
        images = decode_latents(model.components.vae, chosen)
    else:
        images = approx_cheap(chosen, sdxl=model.model_type.is_sdxl)
    return grid(images)


def show_batch(settings: PreviewSettings, controls: JobControls, images: list[Image.Image], step: int) -> None:
    """A period of -1 (A1111's "only after a batch"): the finished batch's images are the preview, when watched."""
    if settings.every_n_steps < 0 and images and controls.preview_wanted():
        controls.show_preview(grid(images if settings.grid else images[:1]), step)


@dataclass
class DenoiserRows:
    """The last model call's own predictions, kept by the denoiser for the ``Prompt``/``Negative prompt`` content.

    ``cond`` holds one row per prompt part, ``owners[k]`` the image of row k; ``uncond`` one row per image (None
    when the call had no unconditional pass: CFG scale 1, or the negative guidance skip).
    """

    cond: torch.Tensor | None = None
    owners: list[int] = field(default_factory=list)
    uncond: torch.Tensor | None = None

    def record(self, cond: torch.Tensor, owners: list[int], uncond: torch.Tensor | None) -> None:
        """Keep one call's rows (references: the next call makes new tensors)."""
        self.cond, self.owners, self.uncond = cond, owners, uncond

    def pick(self, content: str, combined: torch.Tensor) -> torch.Tensor:
        """The latents ``content`` names, per image; ``combined`` where the last call had no such rows."""
        if content == "Prompt" and self.cond is not None:
            first = {owner: k for k, owner in reversed(list(enumerate(self.owners)))}
            if len(first) == combined.shape[0]:
                return torch.stack([self.cond[first[i]] for i in range(combined.shape[0])])
        if content == "Negative prompt" and self.uncond is not None and self.uncond.shape == combined.shape:
            return self.uncond
        return combined


@dataclass
class PreviewTap:
    """Draws a batch's preview at the steps it is due, when the job wants one (called after each sampling step)."""

    model: LoadedModel
    settings: PreviewSettings
    controls: JobControls
    rows: DenoiserRows = field(default_factory=DenoiserRows)
    last_step: int = 0

    @classmethod
    def create(cls, model: LoadedModel, settings: PreviewSettings, controls: JobControls) -> PreviewTap | None:
        """A tap for one batch, or None when previews are off."""
        return cls(model, settings, controls) if settings.every_n_steps > 0 else None

    def __call__(self, step: int, denoised: torch.Tensor) -> None:
        """After sampling step ``step``: draw and hand over a preview if one is due and wanted."""
        if step - self.last_step < self.settings.every_n_steps or not self.controls.preview_wanted():
            return
        self.last_step = step
        latents = self.rows.pick(self.settings.content, denoised)
        try:
            image = draw(self.model, latents, self.settings)
        except torch.OutOfMemoryError:  # a full-size preview must never fail the job it shows
            logger.warning("Out of memory drawing a live preview (%s); drawing it cheaply", self.settings.method)
            cheap = dataclasses.replace(self.settings, method="Approx cheap")
            image = draw(self.model, latents, cheap)
        self.controls.show_preview(image, step)
