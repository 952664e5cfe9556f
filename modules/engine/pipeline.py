"""generate(model, request, options, controls) → GenerationResult: txt2img over a loaded model.

Pure compute: no disk writes, no settings lookup, no globals. Saving happens in the app context.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from modules.engine import hires, img2img, kernel_build, kloop, offload, previews, scripts
from modules.engine.accel import graphs_enabled, start_queued_compiles
from modules.engine.infotext import format_infotext
from modules.engine.loader import LoadedModel
from modules.engine.networks import Networks, for_other_models
from modules.engine.networks import prepare as prepare_networks
from modules.engine.previews import PreviewTap
from modules.engine.progress import JobControls, NoControls, noise_spec
from modules.engine.prompt_schedule import old_timelines_differ, strip_comments
from modules.engine.refiner import RefinerRun
from modules.engine.rng import NoiseSpec, batch_noise, fix_seed, job_seeds
from modules.engine.sampler_params import SamplerParams, resolve_params
from modules.engine.samplers import SamplerSpec, ScheduleSpec, resolve_sampler
from modules.engine.tiling import tiling
from modules.engine.types import GenerationOptions, GenerationRequest, GenerationResult, StepInfo
from modules.engine.vae import decode_latents as _decode
from modules.engine.validation import validate_request
from modules.errors import OutOfMemoryError

logger = logging.getLogger(__name__)


def generate(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions | None = None,
    controls: JobControls | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    upscaler: hires.ImageUpscaler | None = None,
    upscaler_names: list[str] | None = None,
    load_model: Callable[[str], LoadedModel] | None = None,
    networks: Networks | None = None,
) -> GenerationResult:
    """Run a txt2img or img2img job (see ``_generate``), retrying once in a lighter memory mode on out of memory.

    Out of memory frees the cache and runs the job again with the model in the next lighter memory mode (full →
    model offload → sequential offload); the model returns to its mode afterwards, so later small jobs stay fast.
    If that fails too (or there is no lighter mode), the error is a readable OutOfMemoryError.

    Raises:
        InvalidRequestError: For an out-of-range field or an unknown sampler/schedule.
        OutOfMemoryError: The device ran out of memory twice; its cache was emptied so the next job can run.
    """
    tiled = options is not None and options.tiling

    def run() -> GenerationResult:
        with tiling(tiled, model, load_model) as loader:  # circular padding for the job (A1111's tiling)
            return _generate(model, request, options, controls, on_step, upscaler, upscaler_names, loader, networks)

    preferred = model.preferred_mode or model.memory_mode
    if model.memory_mode != preferred:  # an earlier out of memory left it lighter: try the faster mode again
        try:
            model.set_memory_mode(preferred)
        except torch.OutOfMemoryError:
            _free_cache()
    try:
        result = run()
        start_queued_compiles(model.components.unet)
        return result
    except torch.OutOfMemoryError as exc:
        _free_cache()
        retry_mode = offload.lighter(model.memory_mode)
        first = exc
    size = f"{request.width}x{request.height}, batch size {request.batch_size}"
    if retry_mode is None:
        raise OutOfMemoryError(
            f"Out of memory on {model.device} while generating {size} with every model offloaded. "
            "Try a smaller size or batch size."
        ) from first
    original = model.memory_mode
    model.preferred_mode = model.preferred_mode or original
    logger.warning("Out of memory on %s (%s); retrying the job with %s offload", model.device, first, retry_mode)
    try:
        model.set_memory_mode(retry_mode)
        return run()
    except torch.OutOfMemoryError as exc:
        _free_cache()
        raise OutOfMemoryError(
            f"Out of memory on {model.device} while generating {size}, also with {retry_mode} offload. "
            "Try a smaller size or batch size."
        ) from exc
    finally:
        try:
            model.set_memory_mode(original)
        except torch.OutOfMemoryError:
            _free_cache()
            logger.warning("Not enough free memory to return to %s mode; staying in %s", original, retry_mode)


def warm_up(model: LoadedModel) -> float | None:
    """Run a one-step job at the model's native size so that the first real job finds its fast path ready.

    On CUDA with graph replay, the first job of a size captures the UNet's graph and picks the kernels of every layer
    (≈1–2 s); doing that right after the start-up load, while the UI is still opening, makes the user's first image
    as fast as the next one (512² SD1/SD2, 1024² SDXL, batch 1, one prompt chunk). A dry pass of the same job comes
    first, under ``kernel_build.prebuild``: its Triton kernels are built on several threads instead of run (outputs
    zeros, no graph captured, the image thrown away). Elsewhere there is nothing to prepare, and nothing runs.
    Returns the seconds spent, or None when skipped.
    """
    if not model.device.startswith("cuda") or not graphs_enabled(model.components.unet) or model.model_type.is_edit:
        return None
    side = 1024 if model.model_type.is_sdxl else 512
    request = GenerationRequest(prompt="", steps=1, width=side, height=side, seed=0, sampler_name="Euler")
    start = time.perf_counter()
    # a dry pass first: it names the Triton kernels the job launches, which are built on a pool of threads meanwhile
    # (after an install 14–19 s one after another; read from Triton's disk cache after that; engine/kernel_build.py)
    with kernel_build.prebuild():
        generate(model, request)
    built = time.perf_counter() - start
    generate(model, request)
    seconds = time.perf_counter() - start
    logger.info(
        "Warm-up at %dx%d took %.2f s (kernels built or loaded %.2f s, UNet graph captured, kernels chosen)",
        side, side, seconds, built,
    )  # fmt: skip
    return seconds


def _free_cache() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generate(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions | None = None,
    controls: JobControls | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    upscaler: hires.ImageUpscaler | None = None,
    upscaler_names: list[str] | None = None,
    load_model: Callable[[str], LoadedModel] | None = None,
    networks: Networks | None = None,
) -> GenerationResult:
    """Run ``n_iter`` batches of ``batch_size`` images (txt2img, or img2img when init images are given).

    Args:
        model: The loaded checkpoint.
        request: What to generate (A1111 field names).
        options: Per-job settings (clip skip, ENSD, RNG source, emphasis, version string).
        controls: Progress reporting and stop/skip polling; defaults to none.
        on_step: Optional extra callback after each step.
        upscaler: Image upscalers for hires fix (the app's registry); latent modes need none.
        upscaler_names: The names ``upscaler`` knows, to check ``hr_upscaler`` before any work.
        load_model: Loads another checkpoint by name (the refiner).
        networks: The LoRAs, embeddings and VAE files the job may use (engine/networks.py).

    Returns:
        The images with their seeds and infotexts; ``interrupted`` is set if the job was stopped.

    Raises:
        InvalidRequestError: For an out-of-range field or an unknown sampler/schedule.
    """
    options = options or GenerationOptions()
    controls = controls or NoControls()
    request = scripts.apply_script(_strip_comments(request))
    # 1. Check the request and resolve sampler and schedule.
    validate_request(request)
    use_hr = request.enable_hr and request.mode == "txt2img"
    if use_hr:
        hires.validate(request, upscaler_names)
    inputs = img2img.prepare(request) if request.mode == "img2img" else None
    sampler, schedule = resolve_sampler(request.sampler_name, request.scheduler)
    # the prompts as encoded: without their extra-network tags (the infotext keeps them); the tags' LoRAs merged
    encoded, network_extras = prepare_networks(model, request, options.vae, networks)
    load_model = for_other_models(load_model, model, networks)
    refiner = RefinerRun.create(encoded, load_model)
    # 2. Fix the seeds for every image of the job.
    seed = fix_seed(request.seed)
    subseed = fix_seed(request.subseed)
    total = request.batch_size * request.n_iter
    seeds, subseeds = job_seeds(seed, subseed, request.subseed_strength, total)
    # 3. The sampler's parameters (and the infotext keys they add); the prompts are encoded per batch by the loop.
    hr = hires.HiresPass.create(encoded, sampler, schedule, load_model) if use_hr else None
    sdxl = model.model_type.is_sdxl
    sampling = resolve_params(sampler, schedule, request, options.sampler, sdxl=sdxl)
    sampling_extras = dict(sampling.infotext) | network_extras
    if hr is not None:
        sampling_extras.update(resolve_params(hr.sampler, hr.schedule, request, options.sampler, sdxl=sdxl).infotext)
    if options.use_old_scheduling and old_timelines_differ((request.prompt, request.negative_prompt), request.steps):
        sampling_extras["Old prompt editing timelines"] = True
    width, height = hires.target(request).size if hr is not None else (request.width, request.height)
    result = GenerationResult(width=width, height=height, job_timestamp=time.strftime("%Y%m%d%H%M%S"))
    # 4. Sample and decode each batch.
    for n in range(request.n_iter):
        if controls.should_stop() or controls.should_stop_after_batch():
            result.interrupted = True
            break
        controls.clear_skip()
        batch = slice(n * request.batch_size, (n + 1) * request.batch_size)
        first_refiner = refiner if hr is None else None  # with hires fix, the refiner runs in the second pass
        run = BatchRun(seeds[batch], subseeds[batch], batch.start, n, first_refiner, sampling)
        latents = _sample_batch(model, encoded, options, sampler, schedule, inputs, run, controls, on_step)
        if hr is not None and not (controls.should_stop() or controls.should_skip()):
            hr_args = (seeds[batch], subseeds[batch], n, controls, upscaler, refiner)
            latents = hr.run(model, encoded, options, latents, *hr_args)
        decoder = hr.model_for(model) if hr is not None else model
        decoder = refiner.decoder(decoder) if refiner is not None else decoder
        decoded = decode_latents(decoder, latents)
        previews.show_batch(options.preview, controls, decoded, _total_steps(request))
        for i, image in enumerate(decoded):
            k = batch.start + i
            params = infotext_params(model, request, options, sampler, schedule, seeds[k], subseeds[k])
            if hr is not None:
                params.update(hr.extras)
                result.extra_generation_params.update(hr.extras)
            if refiner is not None:
                params.update(refiner.infotext())
                result.extra_generation_params.update(refiner.infotext())
            if inputs is not None:
                image = img2img.finish(image, inputs, k)
                params.update(img2img.infotext_extras(request))
                result.extra_generation_params.update(img2img.infotext_extras(request))
            params.update(sampling_extras)
            result.extra_generation_params.update(sampling_extras)
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


@dataclasses.dataclass(frozen=True)
class BatchRun:
    """One batch of a job: its seeds, where it starts in the job, its number, refiner and sampler parameters."""

    seeds: list[int]
    subseeds: list[int]
    first_index: int
    job_no: int
    refiner: RefinerRun | None
    sampling: SamplerParams


def _sample_batch(
    model: LoadedModel,
    request: GenerationRequest,
    options: GenerationOptions,
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    inputs: img2img.Img2ImgInputs | None,
    run: BatchRun,
    controls: JobControls,
    on_step: Callable[[StepInfo], None] | None,
) -> torch.Tensor:
    """Sample one batch (txt2img, or img2img/inpainting from ``inputs``) and return its final latents."""
    bs = len(run.seeds)
    spec = noise_spec(model, request, options)
    noise, generators = seed_noise(request, spec, run.seeds, run.subseeds)
    if inputs is None:
        total = _total_steps(request)
        image_cond = kloop.txt2img_image_cond(model, bs, request.height, request.width)
        setup = kloop.BatchSetup(noise, generators, run.seeds, spec, image_cond=image_cond)
    else:
        total = img2img.effective_steps(request)
        setup = img2img.kloop_setup(model, request, inputs, run.first_index, noise, generators, run.seeds, spec)
    prompts, size = (request.prompt, request.negative_prompt), (request.height, request.width)
    calls = kloop.model_calls(sampler, request.steps)
    conds = kloop.prompt_conds(model, options, prompts, bs, calls, size)
    switch = run.refiner.switch(model, options, prompts, bs, calls, size) if run.refiner is not None else None
    return kloop.run_batch(
        model,
        setup,
        conds,
        sampler=sampler,
        schedule=schedule,
        steps=request.steps,
        cfg_scale=request.cfg_scale,
        eta_noise_seed_delta=options.eta_noise_seed_delta,
        controls=controls,
        progress=lambda i: StepInfo(i + 1, total, run.job_no, request.n_iter),
        on_step=on_step,
        refiner=switch,
        params=run.sampling,
        preview=PreviewTap.create(model, options.preview, controls),
    )


def seed_noise(
    request: GenerationRequest, spec: NoiseSpec, seeds: list[int], subseeds: list[int]
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """A1111's first draw for a batch: seed noise with variation seeds and "resize seed from" applied."""
    resize = None
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        resize = (request.seed_resize_from_w, request.seed_resize_from_h)
    return batch_noise(
        seeds, spec, subseeds=subseeds, subseed_strength=request.subseed_strength, seed_resize_from=resize
    )


def _strip_comments(request: GenerationRequest) -> GenerationRequest:
    """A1111's "Enable comments": ``#`` comments are removed from every prompt before anything else."""
    names = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    if not any("#" in getattr(request, n) for n in names):
        return request
    return dataclasses.replace(request, **{n: strip_comments(getattr(request, n)) for n in names})


def _total_steps(request: GenerationRequest) -> int:
    """Steps of one batch as progress counts them: the first pass plus the hires pass when there is one."""
    use_hr = request.enable_hr and request.mode == "txt2img"
    return request.steps + (hires.hires_steps(request) if use_hr else 0)


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """Decode each latent alone with the model's VAE (see ``modules.engine.vae.decode_latents``)."""
    return _decode(model.components.vae, latents)


def _num(x: float) -> float | int:
    """Write integral floats as ints in infotext (``CFG scale: 7`` as A1111's UI does)."""
    return int(x) if float(x).is_integer() else x


def _image_guided(model: LoadedModel, request: GenerationRequest) -> bool:
    """Whether the job uses an instruct-pix2pix image CFG scale (img2img on an edit model, as A1111)."""
    return model.model_type.is_edit and request.mode == "img2img" and request.image_cfg_scale is not None


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
        "Image CFG scale": _num(request.image_cfg_scale) if _image_guided(model, request) else None,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": ckpt.shorthash,
        "Model": ckpt.name_for_extra,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": _num(request.subseed_strength) if variation else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if resize else None,
        "Denoising strength": _num(request.denoising_strength)
        if request.mode == "img2img" or request.enable_hr
        else None,
        "Clip skip": options.clip_skip if options.clip_skip > 1 and not model.model_type.is_sdxl else None,
        "ENSD": options.eta_noise_seed_delta or None,
        "RNG": options.randn_source if options.randn_source != "GPU" else None,
        "Tiling": True if options.tiling else None,
        "Version": options.version or None,
    }
    return {k: v for k, v in params.items() if v is not None}
