"""generate(model, request, options, controls) → GenerationResult: txt2img over a loaded diffusers pipeline.

Pure compute: no disk writes, no settings lookup, no globals. Saving happens in the app context.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from modules.engine import img2img
from modules.engine.infotext import format_infotext
from modules.engine.loader import LoadedModel
from modules.engine.prompts import PromptEmbeddings, encode_prompt_pair
from modules.engine.rng import NoiseSpec, batch_noise, fix_seed, job_seeds, make_generator
from modules.engine.samplers import SamplerSpec, ScheduleSpec, make_scheduler, resolve_sampler
from modules.engine.types import GenerationOptions, GenerationRequest, GenerationResult, StepInfo
from modules.engine.validation import validate_request
from modules.errors import OutOfMemoryError

logger = logging.getLogger(__name__)


class JobControls(Protocol):
    """What the engine needs from the job running it: progress out, stop/skip requests in."""

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Record progress after a sampling step."""

    def should_stop(self) -> bool:
        """Whether the whole job should stop."""

    def should_skip(self) -> bool:
        """Whether the current batch should be abandoned."""

    def clear_skip(self) -> None:
        """Reset the skip request at the start of a batch."""


@dataclass
class _NoControls:
    """Controls for callers that need no progress or cancellation (tests, scripts)."""

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Ignore progress."""

    def should_stop(self) -> bool:
        """Never stop."""
        return False

    def should_skip(self) -> bool:
        """Never skip."""
        return False

    def clear_skip(self) -> None:
        """Nothing to clear."""


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions | None = None,
    controls: JobControls | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> GenerationResult:
    """Run a txt2img or img2img job (see ``_generate``); out of memory becomes a readable OutOfMemoryError.

    Raises:
        InvalidRequestError: For an out-of-range field or an unknown sampler/schedule.
        OutOfMemoryError: The device ran out of memory; its cache was emptied so the next job can run.
    """
    try:
        return _generate(model, request, options, controls, on_step)
    except torch.OutOfMemoryError as exc:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        size = f"{request.width}x{request.height}, batch size {request.batch_size}"
        raise OutOfMemoryError(
            f"Out of memory on {model.device} while generating {size}. Try a smaller size or batch size."
        ) from exc


def _generate(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions | None = None,
    controls: JobControls | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> GenerationResult:
    """Run ``n_iter`` batches of ``batch_size`` images (txt2img, or img2img when init images are given).

    Args:
        model: The loaded checkpoint.
        request: What to generate (A1111 field names).
        options: Per-job settings (clip skip, ENSD, RNG source, emphasis, version string).
        controls: Progress reporting and stop/skip polling; defaults to none.
        on_step: Optional extra callback after each step.

    Returns:
        The images with their seeds and infotexts; ``interrupted`` is set if the job was stopped.

    Raises:
        InvalidRequestError: For an out-of-range field or an unknown sampler/schedule.
    """
    options = options or GenerationOptions()
    controls = controls or _NoControls()
    # 1. Check the request and resolve sampler and schedule.
    validate_request(request)
    inputs = img2img.prepare(request) if request.mode == "img2img" else None
    sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
    pipe = model.pipe
    pipe.scheduler = make_scheduler(pipe.scheduler.config, sampler, schedule)
    # 2. Fix the seeds for every image of the job.
    seed = fix_seed(request.seed)
    subseed = fix_seed(request.subseed)
    total = request.batch_size * request.n_iter
    seeds, subseeds = job_seeds(seed, subseed, request.subseed_strength, total)
    # 3. Encode the prompts once; every image of the job shares them.
    embeds = encode_prompt_pair(
        pipe,
        model.model_type,
        [request.prompt],
        [request.negative_prompt],
        clip_skip=options.clip_skip,
        emphasis=options.emphasis,
        comma_padding_backtrack=options.comma_padding_backtrack,
    )
    result = GenerationResult(width=request.width, height=request.height, job_timestamp=time.strftime("%Y%m%d%H%M%S"))
    # 4. Sample and decode each batch.
    for n in range(request.n_iter):
        if controls.should_stop():
            result.interrupted = True
            break
        controls.clear_skip()
        batch = slice(n * request.batch_size, (n + 1) * request.batch_size)
        if inputs is None:
            args = (seeds[batch], subseeds[batch], n, controls, on_step)
            latents = _sample_batch(model, request, options, embeds, *args)
        else:
            latents = _img2img_batch(model, request, options, embeds, inputs, seeds[batch], batch.start, n, controls)
        for i, image in enumerate(decode_latents(model, latents)):
            k = batch.start + i
            params = infotext_params(model, request, options, sampler, schedule, seeds[k], subseeds[k])
            if inputs is not None:
                image = img2img.finish(image, inputs, k)
                params.update(img2img.infotext_extras(request))
                result.extra_generation_params.update(img2img.infotext_extras(request))
            result.images.append(image)
            result.seeds.append(seeds[k])
            result.subseeds.append(subseeds[k])
            result.prompts.append(request.prompt)
            result.negative_prompts.append(request.negative_prompt)
            result.infotexts.append(format_infotext(request.prompt, request.negative_prompt, params))
        if controls.should_stop():
            result.interrupted = True
            break
    return result


def _sample_batch(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions,
    embeds: PromptEmbeddings,
    seeds: list[int],
    subseeds: list[int],
    job_no: int,
    controls: JobControls,
    on_step: Callable[[StepInfo], None] | None,
) -> torch.Tensor:
    """Run the sampler for one batch and return its final latents."""
    pipe = model.pipe
    spec = _noise_spec(model, request, options)
    resize = None
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        resize = (request.seed_resize_from_w, request.seed_resize_from_h)
    noise, generators = batch_noise(
        seeds, spec, subseeds=subseeds, subseed_strength=request.subseed_strength, seed_resize_from=resize
    )

    bs = len(seeds)
    kwargs: dict[str, Any] = {
        **img2img.embeds_kwargs(embeds, bs),
        "num_inference_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "width": request.width,
        "height": request.height,
        "latents": noise.to(pipe.unet.dtype),
        "generator": generators,
        "output_type": "latent",
        "callback_on_step_end": _step_callback(controls, request.steps, job_no, request.n_iter, on_step),
    }
    if model.model_type.is_inpaint:
        # txt2img on an inpainting model (A1111): the whole picture is masked over a neutral gray image.
        kwargs["image"] = Image.new("RGB", (request.width, request.height), (128, 128, 128))
        kwargs["mask_image"] = Image.new("L", (request.width, request.height), 255)
        kwargs["strength"] = 1.0
    with torch.inference_mode():
        out = pipe(**kwargs)
    return out.images


def _img2img_batch(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions,
    embeds: PromptEmbeddings,
    inputs: img2img.Img2ImgInputs,
    seeds: list[int],
    first_index: int,
    job_no: int,
    controls: JobControls,
) -> torch.Tensor:
    """One img2img/inpaint batch: one generator per image seeded with its seed, progress over the executed steps."""
    callback = _step_callback(controls, img2img.effective_steps(request), job_no, request.n_iter, None)
    spec = _noise_spec(model, request, options)
    generators = [make_generator(seed, spec) for seed in seeds]
    return img2img.sample_batch(model, request, embeds, inputs, first_index, generators, callback)


def _noise_spec(model: LoadedModel, request: GenerationRequest, options: GenerationOptions) -> NoiseSpec:
    """Latent noise shape (4 channels, also for 9-channel inpainting UNets), device and RNG source."""
    channels = model.pipe.unet.config.in_channels if not model.model_type.is_inpaint else 4
    shape = (channels, request.height // 8, request.width // 8)
    return NoiseSpec(shape, torch.device(model.device), options.randn_source)


def _step_callback(
    controls: JobControls, total: int, job_no: int, job_count: int, on_step: Callable[[StepInfo], None] | None
) -> Callable[..., dict[str, Any]]:
    """Build diffusers' ``callback_on_step_end``: report progress, stop the pipe on interrupt or skip."""

    def step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        controls.report(i + 1, total, job_no, job_count)
        if on_step is not None:
            on_step(StepInfo(i + 1, total, job_no, job_count))
        if controls.should_stop() or controls.should_skip():
            p._interrupt = True
        return {}

    return step_end


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """Decode each latent alone with the VAE to an RGB image (A1111: clamp, then truncate to uint8).

    An fp16 VAE that produces NaNs is switched to fp32 once and the decode retried (A1111's auto VAE precision).
    """
    vae = model.pipe.vae
    scale = vae.config.scaling_factor
    images = []
    with torch.inference_mode():
        for latent in latents:
            x = vae.decode(latent[None].to(vae.dtype) / scale).sample
            if not torch.isfinite(x).all() and vae.dtype != torch.float32:
                logger.warning("The VAE produced NaNs in %s; switching it to float32 for this model", vae.dtype)
                vae.to(torch.float32)
                x = vae.decode(latent[None].to(torch.float32) / scale).sample
            x = torch.clamp((x.float() + 1.0) / 2.0, 0.0, 1.0)
            arr = (255.0 * x[0]).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
            images.append(Image.fromarray(arr, "RGB"))
    return images


def _num(x: float) -> float | int:
    """Write integral floats as ints in infotext (``CFG scale: 7`` as A1111's UI does)."""
    return int(x) if float(x).is_integer() else x


def infotext_params(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions,
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    seed: int,
    subseed: int,
) -> dict[str, Any]:
    """Return the A1111 ``Key: value`` parameters of one image (order is fixed by the formatter)."""
    ckpt = model.checkpoint
    variation = request.subseed_strength > 0
    resize = request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": sampler.name,
        "Schedule type": schedule.label,
        "CFG scale": _num(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": ckpt.shorthash,
        "Model": ckpt.name_for_extra,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": _num(request.subseed_strength) if variation else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if resize else None,
        "Denoising strength": _num(request.denoising_strength) if request.mode == "img2img" else None,
        "Clip skip": options.clip_skip if options.clip_skip > 1 and not model.model_type.is_sdxl else None,
        "ENSD": options.eta_noise_seed_delta or None,
        "RNG": options.randn_source if options.randn_source != "GPU" else None,
        "Version": options.version or None,
    }
    return {k: v for k, v in params.items() if v is not None}
