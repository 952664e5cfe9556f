"""Run one batch through the own k-diffusion loop: sigmas, A1111 noise, the CFG denoiser and a sampler step function.

Used by txt2img, img2img/inpainting and the hires second pass for every sampler: the k-diffusion samplers and LCM
step over sigmas (``modules.engine.ksampling.samplers``), A1111's timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC)
over timesteps in ε space (``modules.engine.ksampling.timesteps`` and ``unipc``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from modules.engine.denoiser import (
    CFGDenoiser,
    LCMSpace,
    MaskBlend,
    ModelParts,
    RefinerSwitch,
    StepConds,
    TextCond,
    TimestepSpace,
)
from modules.engine.ksampling.samplers import SAMPLERS, SamplerOptions, SamplingInterrupted
from modules.engine.ksampling.schedules import sigmas_for
from modules.engine.ksampling.timesteps import a1111_timesteps, ddim, ddim_cfgpp, img2img_start, plms
from modules.engine.ksampling.unipc import unipc
from modules.engine.loader import LoadedModel
from modules.engine.previews import PreviewTap
from modules.engine.progress import JobControls
from modules.engine.prompt_schedule import ScheduledPrompt
from modules.engine.prompts import encode_group
from modules.engine.rng import NoiseSpec, make_generator
from modules.engine.sampler_params import SamplerParams
from modules.engine.samplers import SamplerSpec, ScheduleSpec
from modules.engine.sampling import BrownianNoise, DiscreteModel, ImageNoise, img2img_sigmas
from modules.engine.types import GenerationOptions, ModelType, StepInfo
from modules.engine.vae import encode_images

_SCHEDULE_OF = {"automatic": "uniform"}


@dataclass(frozen=True)
class BatchSetup:
    """What one batch samples from.

    Attributes:
        noise: Initial noise (B, 4, h, w), fp32, already drawn from ``generators`` (A1111's first draw).
        generators: Per-image generators, positioned after the first draw (later draws: ancestral noise).
        seeds: Seed of each image (ENSD re-seeds ``seed + ENSD`` after the first draw).
        spec: Noise shape/device/source of the batch.
        init: img2img: initial latents (B, 4, h, w); None for txt2img.
        denoising_strength: img2img: how much of the schedule runs.
        image_cond: 9-channel inpainting models: (B, 5, h, w) mask + masked-image latents.
        mask: Latent masking (img2img inpainting).
        steps_to_run: Hires: run exactly this many steps at the end of the schedule (A1111's fixed img2img steps).
        image_cfg_scale: instruct-pix2pix image guidance (None: text guidance only).
    """

    noise: torch.Tensor
    generators: list[torch.Generator]
    seeds: list[int]
    spec: NoiseSpec
    init: torch.Tensor | None = None
    denoising_strength: float = 1.0
    image_cond: torch.Tensor | None = None
    mask: MaskBlend | None = None
    steps_to_run: int | None = None
    image_cfg_scale: float | None = None


def model_calls(sampler: SamplerSpec, steps: int) -> int:
    """Steps as A1111's prompt schedule counts them: model calls (twice the steps for second-order samplers)."""
    return steps * 2 if sampler.options.get("second_order") == "True" else steps


def prompt_conds(
    model: LoadedModel,
    options: GenerationOptions,
    prompts: tuple[str, str],
    batch: int,
    steps: int,
    size: tuple[int, int],
    hires_steps: int | None = None,
) -> Callable[[int], StepConds]:
    """Conditioning per model call: prompt editing, alternation and ``AND`` parts, A1111's encoding batches.

    ``steps`` counts model calls (A1111 doubles it for second-order samplers). Like A1111, each ``AND`` part's
    scheduled texts are encoded as one batch, and the negative prompt's as another; every text of the job is
    encoded before sampling starts.
    """
    prompt, negative = prompts
    old = options.use_old_scheduling
    pos = ScheduledPrompt.parse(prompt, steps, hires_steps, old=old)
    neg = ScheduledPrompt.parse(negative, steps, hires_steps, allow_and=False, old=old)
    kwargs = {
        "clip_skip": options.clip_skip,
        "emphasis": options.emphasis,
        "comma_padding_backtrack": options.comma_padding_backtrack,
    }

    def encoded(entries: tuple[tuple[int, str], ...], negative_side: bool) -> list[tuple[int, TextCond]]:
        texts = [text for _, text in entries]
        rows = encode_group(model.components, model.model_type, texts, negative=negative_side, **kwargs)
        ids = sdxl_time_ids(model, *size, negative=negative_side)
        ids = ids.to(model.device) if ids is not None else None  # once, not a host copy per step
        return [(end, TextCond(ctx, pooled, ids)) for (end, _), (ctx, pooled) in zip(entries, rows, strict=True)]

    parts = [(weight, encoded(entries, False)) for weight, entries in pos.parts]
    uncond_entries = encoded(neg.parts[0][1], True)
    if all(len(entries) == 1 for _, entries in parts) and len(uncond_entries) == 1:
        fixed = StepConds([[(e[0][1], w) for w, e in parts]] * batch, [uncond_entries[0][1]] * batch)
        return lambda step: fixed

    def at(step: int) -> StepConds:
        image = [(_entry_at(entries, step), weight) for weight, entries in parts]
        return StepConds([image] * batch, [_entry_at(uncond_entries, step)] * batch)

    return at


def _entry_at(entries: list[tuple[int, TextCond]], step: int) -> TextCond:
    """The cond in effect at model call ``step`` (A1111: the first entry with ``step <= end_step``)."""
    for end, cond in entries:
        if step <= end:
            return cond
    return entries[0][1]


def sdxl_time_ids(model: LoadedModel, height: int, width: int, *, negative: bool = False) -> torch.Tensor | None:
    """SDXL's added ids for one image (A1111's defaults); None for SD1/2.

    Base: original size, crop (0, 0), target size. Refiner: original size, crop, aesthetic score (6 for the
    prompt, 2.5 for the negative prompt).
    """
    if not model.model_type.is_sdxl:
        return None
    if model.model_type == ModelType.SDXL_REFINER:
        return torch.tensor([height, width, 0, 0, 2.5 if negative else 6.0], dtype=torch.float32)
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


def refiner_parts(
    model: LoadedModel,
    options: GenerationOptions,
    prompts: tuple[str, str],
    batch: int,
    steps: int,
    size: tuple[int, int],
    hires_steps: int | None = None,
) -> ModelParts:
    """The refiner's UNet, σ → t and conditioning, for a switch in the middle of sampling."""
    discrete = DiscreteModel.from_config(model.components.schedule)
    conds = prompt_conds(model, options, prompts, batch, steps, size, hires_steps)
    return ModelParts(model.components.unet, discrete.on(model.device).sigma_to_t, model.prediction_type, conds)


def txt2img_image_cond(model: LoadedModel, batch: int, height: int, width: int) -> torch.Tensor | None:
    """The extra UNet channels in txt2img; None for 4-channel models.

    9-channel inpainting models (A1111): everything masked (1) over the latent of a neutral gray image.
    instruct-pix2pix: a zero source-image latent (the "no image" condition the model was trained with).
    """
    if model.model_type.is_edit:
        return torch.zeros(batch, 4, height // 8, width // 8, device=model.device)
    if not model.model_type.is_inpaint:
        return None
    vae = model.components.vae
    gray = encode_images(vae, [Image.new("RGB", (width, height), (127, 127, 127))]).float()
    mask = torch.ones(1, 1, *gray.shape[-2:], device=gray.device)
    return torch.cat([mask, gray], dim=1).expand(batch, -1, -1, -1)


def sampler_options(discrete: DiscreteModel, setup: BatchSetup, steps: int, base: SamplerOptions) -> SamplerOptions:
    """A1111's sampler arguments for one batch: ``base`` (η, churn) plus the range of the range-based samplers.

    txt2img gives the range-based samplers (DPM fast/adaptive) the model's σ range and ``n = steps``; img2img and
    hires leave them to the schedule's tail (its first and second-to-last σ, and its length).
    """
    if setup.init is not None:
        return base
    return dataclasses.replace(base, sigma_min=discrete.sigma_min, sigma_max=discrete.sigma_max, n=steps)


def _step_callback(
    controls: JobControls,
    progress: Callable[[int], StepInfo],
    on_step: Callable[[StepInfo], None] | None,
    preview: PreviewTap | None,
) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
    """Report progress after each step and draw the live preview when due; stop (with the denoised prediction)."""

    def callback(i: int, latents: torch.Tensor, denoised: torch.Tensor) -> None:
        info = progress(i)
        controls.report(info.step, info.total_steps, info.job_no, info.job_count)
        if on_step is not None:
            on_step(info)
        if preview is not None:
            preview(info.step, denoised)
        if controls.should_stop() or controls.should_skip():
            raise SamplingInterrupted(denoised)

    return callback


def _noise_source(setup: BatchSetup, device: torch.device, eta_noise_seed_delta: int) -> ImageNoise:
    """Unit noise for the steps after the first draw: per-image generators (re-seeded ``seed + ENSD`` when set)."""
    generators = setup.generators
    if eta_noise_seed_delta:
        generators = [make_generator(seed + eta_noise_seed_delta, setup.spec) for seed in setup.seeds]
    return ImageNoise(generators, setup.spec.shape, device)


def run_batch(
    model: LoadedModel,
    setup: BatchSetup,
    conds: Callable[[int], StepConds],
    *,
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    steps: int,
    cfg_scale: float,
    eta_noise_seed_delta: int,
    controls: JobControls,
    progress: Callable[[int], StepInfo],
    on_step: Callable[[StepInfo], None] | None = None,
    refiner: RefinerSwitch | None = None,
    params: SamplerParams | None = None,
    preview: PreviewTap | None = None,
) -> torch.Tensor:
    """Sample one batch and return its latents (fp32). Stop/skip returns the last step's denoised prediction.

    ``preview``: draws the batch's live previews (engine/previews.py); None: none.
    """
    params = params or SamplerParams(discard_next_to_last=sampler.options.get("discard_next_to_last_sigma") == "True")
    discrete = DiscreteModel.from_config(model.components.schedule)
    device = torch.device(model.device)

    callback = _step_callback(controls, progress, on_step, preview)
    denoiser_args: dict[str, Any] = {
        "image_cond": setup.image_cond.to(device) if setup.image_cond is not None else None,
        "mask": setup.mask,
        "refiner": refiner,
        "image_cfg_scale": setup.image_cfg_scale,
        "skip_uncond": params.skip_uncond,
    }
    noise = _noise_source(setup, device, eta_noise_seed_delta)
    if sampler.name in TIMESTEP_SAMPLERS:
        run = TimestepRun(discrete.alphas_cumprod, callback, noise.next, params, setup.init is not None)
        return _run_timesteps(model, setup, conds, sampler, steps, cfg_scale, denoiser_args, run)
    if preview is not None and preview.settings.content != "Combined":  # the rows are x0 predictions here (not ε)
        denoiser_args["rows"] = preview.rows
    space = None
    if sampler.name == "LCM":
        discrete = discrete.lcm()
        space = LCMSpace(discrete.sigmas.to(device), model.prediction_type == "v_prediction")
    name = _SCHEDULE_OF.get(schedule.name, schedule.name)
    sigmas = sigmas_for(name, steps, discrete, discard_next_to_last=params.discard_next_to_last, params=params.schedule)
    if setup.init is not None and setup.steps_to_run:
        sigmas = sigmas[steps - setup.steps_to_run :]
    elif setup.init is not None:
        sigmas = img2img_sigmas(sigmas, steps, setup.denoising_strength)
    # The sigmas stay on the CPU: the samplers' scalar math (σ ratios, ancestral steps, churn checks) then never
    # waits for the GPU, so the host queues step i+1 while step i runs.
    x = setup.noise.to(device) * sigmas[0]
    if setup.init is not None:
        x = setup.init.to(device, torch.float32) + x
    noise_fn = noise.sampler()
    if sampler.options.get("brownian_noise") == "True":
        noise_fn = BrownianNoise(x, sigmas, setup.seeds)
    sigma_to_t = discrete.on(device).sigma_to_t
    denoiser = CFGDenoiser(
        model.components.unet, sigma_to_t, model.prediction_type, conds, cfg_scale, space=space, **denoiser_args
    )
    options = sampler_options(discrete, setup, steps, params.options)
    fn = SAMPLERS[sampler.name]
    with torch.inference_mode():
        try:
            x = fn(denoiser, x, sigmas, callback=callback, noise=noise_fn, options=options)
        except SamplingInterrupted as stop:
            x = stop.latents
        if setup.mask is not None:
            x = setup.mask.apply(x)
    return x


@dataclass(frozen=True)
class TimestepRun:
    """What a timestep sampler needs besides the model, the start latent and its timesteps."""

    alphas_cumprod: torch.Tensor
    callback: Callable[[int, torch.Tensor, torch.Tensor], None]
    noise: Callable[[], torch.Tensor]
    params: SamplerParams
    is_img2img: bool


TimestepSamplerFn = Callable[[CFGDenoiser, torch.Tensor, torch.Tensor, TimestepRun], torch.Tensor]

TIMESTEP_SAMPLERS: dict[str, TimestepSamplerFn] = {
    "DDIM": lambda m, x, ts, r: ddim(
        m, x, ts, alphas_cumprod=r.alphas_cumprod, callback=r.callback, noise=r.noise, eta=r.params.options.eta
    ),
    "DDIM CFG++": lambda m, x, ts, r: ddim_cfgpp(
        m, x, ts, alphas_cumprod=r.alphas_cumprod, callback=r.callback, noise=r.noise, eta=r.params.options.eta
    ),
    "PLMS": lambda m, x, ts, r: plms(m, x, ts, alphas_cumprod=r.alphas_cumprod, callback=r.callback),
    "UniPC": lambda m, x, ts, r: unipc(
        m,
        x,
        ts,
        alphas_cumprod=r.alphas_cumprod,
        callback=r.callback,
        options=r.params.unipc,
        is_img2img=r.is_img2img,
    ),
}


def _run_timesteps(
    model: LoadedModel,
    setup: BatchSetup,
    conds: Callable[[int], StepConds],
    sampler: SamplerSpec,
    steps: int,
    cfg_scale: float,
    denoiser_args: dict[str, Any],
    run: TimestepRun,
) -> torch.Tensor:
    """A1111's timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC): ε space, timesteps instead of sigmas.

    img2img follows A1111's ``setup_img2img_steps``: ``t_enc = int(min(d, 0.999)·steps)``, or the hires pass's
    fixed ``steps_to_run − 1``; the init latent is noised to ``timesteps[t_enc]``. DDIM CFG++ divides the CFG scale
    by 12.5 (A1111 maps scales 0–12.5 onto CFG++'s 0–1) and steers by the unconditional prediction.
    """
    cfgpp = sampler.name == "DDIM CFG++"
    # the space's ᾱ table lives on the device (v → ε indexes it per step without a host copy)
    space = TimestepSpace(run.alphas_cumprod.to(model.device), model.prediction_type == "v_prediction")
    scale = cfg_scale / 12.5 if cfgpp else cfg_scale
    args = (model.components.unet, space.timestep, model.prediction_type, conds, scale)
    denoiser = CFGDenoiser(*args, space=space, keep_uncond=cfgpp, **denoiser_args)
    device = torch.device(model.device)
    timesteps = a1111_timesteps(steps, discard_next_to_last=run.params.discard_next_to_last)
    x = setup.noise.to(device, torch.float32)
    if setup.init is not None:
        t_enc = setup.steps_to_run - 1 if setup.steps_to_run else int(min(setup.denoising_strength, 0.999) * steps)
        x, timesteps = img2img_start(setup.init.to(device, torch.float32), x, timesteps, t_enc, run.alphas_cumprod)
    with torch.inference_mode():
        try:
            if len(timesteps):
                x = TIMESTEP_SAMPLERS[sampler.name](denoiser, x, timesteps, run)
        except SamplingInterrupted as stop:
            x = stop.latents
        if setup.mask is not None:
            x = setup.mask.apply(x)
    return x
