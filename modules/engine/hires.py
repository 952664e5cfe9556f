"""Hires. fix: upscale the first pass (in latent space or as an image) and run an img2img second pass over it.

A1111 behaviour kept here (StableDiffusionProcessingTxt2Img):

- Target: ``width·hr_scale × height·hr_scale``, or ``hr_resize_x/y`` (one of them 0 = keep the aspect; both set =
  cover that box, then crop the latent symmetrically: ``truncate_x/y`` cells).
- Latent upscalers interpolate the latents (``Latent`` = bilinear, ``(antialiased)``, ``(bicubic)``, ``(nearest)``,
  ``(nearest-exact)``); any other upscaler decodes, upscales the image to the target, and encodes again.
- The second pass runs exactly ``hr_second_pass_steps`` (0 = ``steps``) steps: the schedule has
  ``int(hires_steps / min(denoising, 0.999))`` steps and sampling starts at the right one (A1111's
  ``img2img_fix_steps`` arithmetic, which it always uses for hires). Its noise comes from fresh per-image
  generators seeded with each image's seed (A1111's ``ImageRNG`` of the new latent shape).
- Infotext: ``Denoising strength`` plus ``Hires sampler``/``Hires schedule type``/``Hires prompt``/``Hires negative
  prompt`` (only when they differ), ``Hires upscale`` or ``Hires resize``, ``Hires steps`` (when set) and
  ``Hires upscaler``, in A1111's insertion order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from torch.nn import functional

from modules.engine import kloop
from modules.engine.loader import LoadedModel
from modules.engine.previews import PreviewTap
from modules.engine.progress import JobControls
from modules.engine.refiner import RefinerRun
from modules.engine.rng import NoiseSpec, batch_noise
from modules.engine.sampler_params import resolve_params
from modules.engine.samplers import SamplerSpec, ScheduleSpec, resolve_sampler
from modules.engine.types import LATENT_UPSCALE_MODES, GenerationOptions, GenerationRequest, StepInfo
from modules.engine.vae import decode_latents, encode_images
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_LATENT_MODES: dict[str, tuple[str, bool]] = dict(
    zip(
        LATENT_UPSCALE_MODES,
        (
            ("bilinear", False),
            ("bilinear", True),
            ("bicubic", False),
            ("bicubic", True),
            ("nearest", False),
            ("nearest-exact", False),
        ),
        strict=True,
    )
)
SAME_SAMPLER = ("", "Use same sampler")
SAME_SCHEDULER = ("", "Use same scheduler")
SAME_CHECKPOINT = ("", "Use same checkpoint")
MAX_HIRES_SIDE = 8192


class ImageUpscaler(Protocol):
    """Upscales an image to an exact size with a named upscaler (the app's upscaler registry)."""

    def upscale(self, image: Image.Image, width: int, height: int, name: str) -> Image.Image:
        """Return ``image`` upscaled by upscaler ``name`` and resized to exactly width×height."""


@dataclass(frozen=True, slots=True)
class HiresTarget:
    """Where the second pass goes: the upscaled size and the latent cells cropped from it (A1111's truncate)."""

    upscale_width: int
    upscale_height: int
    truncate_x: int = 0
    truncate_y: int = 0

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the second-pass latent after cropping."""
        return self.upscale_height // 8 - self.truncate_y, self.upscale_width // 8 - self.truncate_x

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the final images."""
        h, w = self.latent_size
        return w * 8, h * 8


def target(request: GenerationRequest) -> HiresTarget:
    """The second pass's size, as A1111's ``calculate_target_resolution``.

    >>> target(GenerationRequest(enable_hr=True, hr_scale=2)).size
    (1024, 1024)
    >>> t = target(GenerationRequest(width=512, height=768, enable_hr=True, hr_resize_x=1024, hr_resize_y=1024))
    >>> (t.upscale_width, t.upscale_height, t.truncate_y, t.size)
    (1024, 1536, 64, (1024, 1024))
    """
    w, h = request.width, request.height
    rx, ry = request.hr_resize_x, request.hr_resize_y
    if rx == 0 and ry == 0:
        return HiresTarget(int(w * request.hr_scale), int(h * request.hr_scale))
    if ry == 0:
        return HiresTarget(rx, rx * h // w)
    if rx == 0:
        return HiresTarget(ry * w // h, ry)
    if w / h < rx / ry:
        up_w, up_h = rx, rx * h // w
    else:
        up_w, up_h = ry * w // h, ry
    return HiresTarget(up_w, up_h, (up_w - rx) // 8, (up_h - ry) // 8)


def hires_steps(request: GenerationRequest) -> int:
    """Steps the second pass runs: ``hr_second_pass_steps``, or ``steps`` when 0."""
    return request.hr_second_pass_steps or request.steps


def schedule_steps(request: GenerationRequest) -> int:
    """Length of the second pass's full schedule (A1111: ``int(hires_steps / min(denoising, 0.999))``)."""
    return int(hires_steps(request) / min(request.denoising_strength, 0.999))


def validate(request: GenerationRequest, upscaler_names: list[str] | None) -> None:
    """Check the hires fields of ``request``.

    Raises:
        InvalidRequestError: For a bad scale/resize/steps, a too large target, or an unknown upscaler.
    """
    problems = []
    if not 0 < request.hr_scale <= 8:
        problems.append(f"hr_scale must be above 0 and at most 8, got {request.hr_scale}")
    for name in ("hr_resize_x", "hr_resize_y"):
        if not 0 <= getattr(request, name) <= MAX_HIRES_SIDE:
            problems.append(f"{name} must be between 0 and {MAX_HIRES_SIDE}, got {getattr(request, name)}")
    if not 0 <= request.hr_second_pass_steps <= 500:
        problems.append(f"hr_second_pass_steps must be between 0 and 500, got {request.hr_second_pass_steps}")
    if problems:
        raise InvalidRequestError("; ".join(problems))
    t = target(request)
    w, h = t.size
    if not (64 <= w <= MAX_HIRES_SIDE and 64 <= h <= MAX_HIRES_SIDE):
        raise InvalidRequestError(f"hires fix target {w}x{h} is outside 64–{MAX_HIRES_SIDE} pixels per side")
    name = request.hr_upscaler
    if name not in _LATENT_MODES:
        known = list(LATENT_UPSCALE_MODES) + [n for n in (upscaler_names or []) if n not in _LATENT_MODES]
        if upscaler_names is None or name not in upscaler_names:
            raise InvalidRequestError(f"hr_upscaler: could not find upscaler named {name!r}; known: {', '.join(known)}")


def upscale_latents(
    model: LoadedModel,
    request: GenerationRequest,
    latents: torch.Tensor,
    upscaler: ImageUpscaler | None,
) -> torch.Tensor:
    """The first-pass latents brought to the second pass's size (latent interpolation or image upscaler)."""
    t = target(request)
    up_h, up_w = t.upscale_height // 8, t.upscale_width // 8
    if request.hr_upscaler in _LATENT_MODES:
        mode, antialias = _LATENT_MODES[request.hr_upscaler]
        kwargs: dict[str, Any] = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        upscaled = functional.interpolate(latents.float(), size=(up_h, up_w), mode=mode, **kwargs).to(latents.dtype)
    else:
        if upscaler is None:
            raise InvalidRequestError(f"hr_upscaler {request.hr_upscaler!r} needs the app's upscalers")
        vae = model.components.vae
        images = [
            upscaler.upscale(image, up_w * 8, up_h * 8, request.hr_upscaler) for image in decode_latents(vae, latents)
        ]
        upscaled = encode_images(vae, images).to(latents.dtype)
    tx, ty = t.truncate_x, t.truncate_y
    if tx or ty:
        upscaled = upscaled[
            :, :, ty // 2 : upscaled.shape[2] - (ty + 1) // 2, tx // 2 : upscaled.shape[3] - (tx + 1) // 2
        ]
    return upscaled


def infotext_extras(
    request: GenerationRequest, sampler_label: str | None, schedule_label: str | None
) -> dict[str, Any]:
    """A1111's hires ``extra_generation_params`` in insertion order (``Denoising strength`` is a fixed key)."""
    extras: dict[str, Any] = {}
    if request.hr_checkpoint_name not in (None, *SAME_CHECKPOINT):
        extras["Hires checkpoint"] = request.hr_checkpoint_name
    if sampler_label is not None:
        extras["Hires sampler"] = sampler_label
    if schedule_label is not None:
        extras["Hires schedule type"] = schedule_label
    if request.hr_prompt and request.hr_prompt != request.prompt:
        extras["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        extras["Hires negative prompt"] = request.hr_negative_prompt
    if request.hr_resize_x == 0 and request.hr_resize_y == 0:
        extras["Hires upscale"] = int(request.hr_scale) if float(request.hr_scale).is_integer() else request.hr_scale
    else:
        extras["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    if request.hr_second_pass_steps:
        extras["Hires steps"] = request.hr_second_pass_steps
    extras["Hires upscaler"] = request.hr_upscaler
    return extras


@dataclass
class HiresPass:
    """The second pass of one job: its sampler, schedule, prompt embeddings, infotext keys and checkpoint.

    With ``hr_checkpoint_name`` the second pass samples (and decodes) with that checkpoint, loaded once per job
    through ``loader`` (A1111 swaps the weights for the hires pass and back).
    """

    sampler: SamplerSpec
    schedule: ScheduleSpec
    extras: dict[str, Any]
    checkpoint: str | None = None
    loader: Callable[[str], LoadedModel] | None = None
    hr_model: LoadedModel | None = None

    def model_for(self, base: LoadedModel) -> LoadedModel:
        """The model of the second pass: the hires checkpoint when one is set, else ``base``."""
        if self.checkpoint is None or self.loader is None:
            return base
        if self.hr_model is None:
            self.hr_model = self.loader(self.checkpoint)
            ckpt = self.hr_model.checkpoint
            self.extras["Hires checkpoint"] = (
                f"{ckpt.name_for_extra} [{ckpt.shorthash}]" if ckpt.shorthash else (ckpt.name_for_extra)
            )
        return self.hr_model

    @classmethod
    def create(
        cls,
        request: GenerationRequest,
        sampler: SamplerSpec,
        schedule: ScheduleSpec,
        loader: Callable[[str], LoadedModel] | None = None,
    ) -> HiresPass:
        """Resolve the hires sampler/schedule ("Use same …" = the first pass's) and its infotext keys.

        Raises:
            InvalidRequestError: For an unknown hires sampler or schedule type.
        """
        own_sampler = request.hr_sampler_name not in (None, *SAME_SAMPLER)
        own_schedule = request.hr_scheduler not in (None, *SAME_SCHEDULER)
        hr_sampler, hr_schedule = sampler, schedule
        if own_sampler or own_schedule:
            hr_sampler, hr_schedule = resolve_sampler(
                request.hr_sampler_name if own_sampler else request.sampler_name,
                request.hr_scheduler if own_schedule else request.scheduler,
            )
        sampler_label = hr_sampler.name if own_sampler and hr_sampler.name != sampler.name else None
        schedule_label = hr_schedule.label if own_schedule and request.hr_scheduler != request.scheduler else None
        checkpoint = None
        if request.hr_checkpoint_name not in (None, *SAME_CHECKPOINT):
            checkpoint = str(request.hr_checkpoint_name)
            if loader is None:
                raise InvalidRequestError("hr_checkpoint_name: this caller cannot load a second checkpoint")
        extras = infotext_extras(request, sampler_label, schedule_label)
        return cls(hr_sampler, hr_schedule, extras, checkpoint, loader)

    def run(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        options: GenerationOptions,
        latents: torch.Tensor,
        seeds: list[int],
        subseeds: list[int],
        job_no: int,
        controls: JobControls,
        upscaler: ImageUpscaler | None,
        refiner: RefinerRun | None = None,
    ) -> torch.Tensor:
        """Upscale one batch's first-pass latents and run the second pass over them (with the refiner, if any)."""
        upscaled = upscale_latents(model, request, latents, upscaler)
        model = self.model_for(model)
        if request.denoising_strength <= 0:
            return upscaled  # nothing to denoise: the upscaled first pass is the result
        return self._run_kloop(model, request, options, upscaled, seeds, subseeds, job_no, controls, refiner)

    def _run_kloop(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        options: GenerationOptions,
        upscaled: torch.Tensor,
        seeds: list[int],
        subseeds: list[int],
        job_no: int,
        controls: JobControls,
        refiner: RefinerRun | None = None,
    ) -> torch.Tensor:
        """The second pass through the own loop: new seed noise at the hires shape, exactly ``hires_steps`` steps."""
        bs, (h, w) = len(seeds), (upscaled.shape[-2] * 8, upscaled.shape[-1] * 8)
        spec = NoiseSpec((4, h // 8, w // 8), torch.device(model.device), options.randn_source)
        noise, generators = batch_noise(seeds, spec, subseeds=subseeds, subseed_strength=request.subseed_strength)
        image_cond = kloop.txt2img_image_cond(model, bs, h, w)
        if model.model_type.is_edit:  # A1111: the upscaled first pass is the source image (its unscaled latents)
            image_cond = upscaled.float() / model.components.vae.config.scaling_factor
        setup = kloop.BatchSetup(
            noise, generators, seeds, spec, init=upscaled, image_cond=image_cond, steps_to_run=hires_steps(request)
        )
        total = request.steps + hires_steps(request)
        prompts = (request.hr_prompt or request.prompt, request.hr_negative_prompt or request.negative_prompt)
        calls = kloop.model_calls(self.sampler, request.steps)
        hr_calls = kloop.model_calls(self.sampler, hires_steps(request))
        conds = kloop.prompt_conds(model, options, prompts, bs, calls, (h, w), hr_calls)
        switch = None
        if refiner is not None:
            switch = refiner.switch(model, options, prompts, bs, calls, (h, w), hr_calls)
        return kloop.run_batch(
            model,
            setup,
            conds,
            sampler=self.sampler,
            schedule=self.schedule,
            steps=schedule_steps(request),
            cfg_scale=request.cfg_scale,
            eta_noise_seed_delta=options.eta_noise_seed_delta,
            controls=controls,
            progress=lambda i: StepInfo(request.steps + i + 1, total, job_no, request.n_iter),
            refiner=switch,
            params=resolve_params(self.sampler, self.schedule, request, options.sampler, sdxl=model.model_type.is_sdxl),
            preview=PreviewTap.create(model, options.preview, controls),
        )
