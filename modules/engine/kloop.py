"""Run one batch through the own k-diffusion loop: sigmas, A1111 noise, the CFG denoiser and a sampler step function.

Used by txt2img, img2img/inpainting and the hires second pass whenever the sampler and schedule type are implemented
in ``modules.engine.ksampling`` (``supported``); other samplers still run through the diffusers scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from modules.engine.denoiser import CFGDenoiser, MaskBlend, StepConds, TextCond
from modules.engine.ksampling.samplers import SAMPLERS, SamplerOptions, SamplingInterrupted
from modules.engine.ksampling.schedules import SCHEDULES, sigmas_for
from modules.engine.loader import LoadedModel
from modules.engine.progress import JobControls
from modules.engine.prompt_encoding import PromptEmbeddings
from modules.engine.prompt_schedule import ScheduledPrompt, cached
from modules.engine.prompts import encode_single
from modules.engine.rng import NoiseSpec, make_generator
from modules.engine.samplers import SamplerSpec, ScheduleSpec
from modules.engine.sampling import BrownianNoise, DiscreteModel, ImageNoise, img2img_sigmas
from modules.engine.types import GenerationOptions, StepInfo
from modules.engine.vae import encode_images

_SCHEDULE_OF = {"automatic": "uniform"}


def supported(sampler: SamplerSpec, schedule: ScheduleSpec) -> bool:
    """Whether the own loop implements this sampler with this schedule type."""
    return sampler.name in SAMPLERS and _SCHEDULE_OF.get(schedule.name, schedule.name) in SCHEDULES


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


def model_calls(sampler: SamplerSpec, steps: int) -> int:
    """Steps as A1111's prompt schedule counts them: model calls (twice the steps for second-order samplers)."""
    return steps * 2 if sampler.options.get("second_order") == "True" else steps


def static_conds(embeds: PromptEmbeddings, batch: int, time_ids: torch.Tensor | None) -> Callable[[int], StepConds]:
    """Conditioning that is the same at every step: one prompt for every image of the batch."""
    pooled = embeds.pooled_prompt_embeds
    neg_pooled = embeds.negative_pooled_prompt_embeds
    cond = TextCond(embeds.prompt_embeds[0], pooled[0] if pooled is not None else None, time_ids)
    uncond = TextCond(embeds.negative_prompt_embeds[0], neg_pooled[0] if neg_pooled is not None else None, time_ids)
    step = StepConds([[(cond, 1.0)] for _ in range(batch)], [uncond] * batch)
    return lambda i: step


def prompt_conds(
    model: LoadedModel,
    options: GenerationOptions,
    prompt: str,
    negative: str,
    batch: int,
    steps: int,
    time_ids: torch.Tensor | None,
    hires_steps: int | None = None,
) -> Callable[[int], StepConds] | None:
    """Per-model-call conditioning for prompt editing, alternation and ``AND``; None when nothing is scheduled.

    ``steps`` counts model calls (A1111 doubles it for second-order samplers). Each distinct text is encoded once.
    """
    pos = ScheduledPrompt.parse(prompt, steps, hires_steps)
    neg = ScheduledPrompt.parse(negative, steps, hires_steps, allow_and=False)
    if pos.texts() == {prompt} and neg.texts() == {negative} and pos.is_static and neg.is_static:
        return None  # nothing scheduled: the pipeline's one encoding of the prompts serves every step
    kwargs = {
        "clip_skip": options.clip_skip,
        "emphasis": options.emphasis,
        "comma_padding_backtrack": options.comma_padding_backtrack,
    }

    def encoder(negative_side: bool) -> Callable[[str], object]:
        def encode(text: str) -> TextCond:
            context, pooled = encode_single(model.pipe, model.model_type, text, negative=negative_side, **kwargs)
            return TextCond(context, pooled, time_ids)

        return cached(encode)

    encode_pos, encode_neg = encoder(False), encoder(True)

    def at(step: int) -> StepConds:
        parts = [(encode_pos(text), weight) for text, weight in pos.at(step)]
        uncond = encode_neg(neg.at(step)[0][0])
        return StepConds([parts] * batch, [uncond] * batch)  # type: ignore[list-item]

    return at


def batch_conds(
    model: LoadedModel,
    options: GenerationOptions,
    embeds: PromptEmbeddings,
    prompts: tuple[str, str],
    batch: int,
    steps: int,
    time_ids: torch.Tensor | None,
    hires_steps: int | None = None,
) -> tuple[Callable[[int], StepConds], torch.Tensor | None]:
    """Conditioning per model call and the empty chunk for padding.

    Scheduled when the prompts use editing/alternation/``AND``, else the already encoded ``embeds`` at every step.
    """
    scheduled = prompt_conds(model, options, *prompts, batch, steps, time_ids, hires_steps)
    if scheduled is None:
        return static_conds(embeds, batch, time_ids), None
    return scheduled, empty_chunk(model, options)


def empty_chunk(model: LoadedModel, options: GenerationOptions) -> torch.Tensor:
    """The empty prompt's context (one 77-token chunk), to pad conds of different lengths (A1111)."""
    context, _ = encode_single(model.pipe, model.model_type, "", clip_skip=options.clip_skip, emphasis=options.emphasis)
    return context


def sdxl_time_ids(model: LoadedModel, height: int, width: int) -> torch.Tensor | None:
    """SDXL's added ids for one image: original size, crop (0, 0), target size (A1111's defaults); None for SD1/2."""
    if not model.model_type.is_sdxl:
        return None
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


def txt2img_image_cond(model: LoadedModel, batch: int, height: int, width: int) -> torch.Tensor:
    """9-channel models in txt2img (A1111): everything masked (1) over the latent of a neutral gray image."""
    vae = model.pipe.vae
    gray = encode_images(vae, [Image.new("RGB", (width, height), (127, 127, 127))]).float()
    mask = torch.ones(1, 1, *gray.shape[-2:], device=gray.device)
    return torch.cat([mask, gray], dim=1).expand(batch, -1, -1, -1)


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
    pad_chunk: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample one batch and return its latents (fp32). Stop/skip returns the last step's denoised prediction."""
    discrete = DiscreteModel.from_config(model.pipe.scheduler.config)
    discard = sampler.options.get("discard_next_to_last_sigma") == "True"
    sigmas = sigmas_for(_SCHEDULE_OF.get(schedule.name, schedule.name), steps, discrete, discard_next_to_last=discard)
    if setup.init is not None and setup.steps_to_run:
        sigmas = sigmas[steps - setup.steps_to_run :]
    elif setup.init is not None:
        sigmas = img2img_sigmas(sigmas, steps, setup.denoising_strength)
    device = torch.device(model.device)
    sigmas = sigmas.to(device)
    x = setup.noise.to(device) * sigmas[0]
    if setup.init is not None:
        x = setup.init.to(device, torch.float32) + x
    generators = setup.generators
    if eta_noise_seed_delta:
        generators = [make_generator(seed + eta_noise_seed_delta, setup.spec) for seed in setup.seeds]
    noise_fn = ImageNoise(generators, setup.spec.shape, device).sampler()
    if sampler.options.get("brownian_noise") == "True":
        noise_fn = BrownianNoise(x, sigmas, setup.seeds)
    denoiser = CFGDenoiser(
        model.pipe.unet,
        discrete.sigma_to_t,
        model.prediction_type,
        conds,
        cfg_scale,
        empty_chunk=pad_chunk,
        image_cond=setup.image_cond.to(device) if setup.image_cond is not None else None,
        mask=setup.mask,
    )

    def callback(i: int, latents: torch.Tensor, denoised: torch.Tensor) -> None:
        info = progress(i)
        controls.report(info.step, info.total_steps, info.job_no, info.job_count)
        if on_step is not None:
            on_step(info)
        if controls.should_stop() or controls.should_skip():
            raise SamplingInterrupted(denoised)

    fn = SAMPLERS[sampler.name]
    with torch.inference_mode():
        try:
            x = fn(denoiser, x, sigmas, callback=callback, noise=noise_fn, options=SamplerOptions())
        except SamplingInterrupted as stop:
            x = stop.latents
        if setup.mask is not None:
            x = setup.mask.apply(x)
    return x
