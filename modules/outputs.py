"""Turn a GenerationResult into files (A1111's output layout) and the ``info`` object the UI and API show."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules.engine.images import date_dir, image_grid, save_grid, save_image
from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest, GenerationResult
from modules.settings import Settings

logger = logging.getLogger(__name__)

_SAMPLE_DIRS = {"txt2img": "outdir_txt2img_samples", "img2img": "outdir_img2img_samples"}
_GRID_DIRS = {"txt2img": "outdir_txt2img_grids", "img2img": "outdir_img2img_grids"}


@dataclass
class JobOutput:
    """A finished generation job: the engine result, the grid (if any), saved files and the A1111 info dict."""

    result: GenerationResult
    grid: Image.Image | None = None
    paths: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def gallery(self, with_grid: bool = True) -> list[Image.Image]:
        """Images for a gallery: the grid first (when there is one and ``with_grid``), then each image."""
        lead = [self.grid] if with_grid and self.grid is not None else []
        return lead + list(self.result.images)


@dataclass
class ExtrasOutput:
    """A finished Extras job: the result image, A1111's ``Postprocess …`` info text and the saved file, if any."""

    image: Image.Image
    info: str
    path: Path | None = None


def save_extras(
    source: Image.Image,
    result: Image.Image,
    info: dict[str, Any],
    settings: Settings,
    data_dir: Path,
    *,
    save: bool = True,
) -> ExtrasOutput:
    """Save an Extras result to ``outdir_extras_samples`` (``NNNNN.png``), keeping the source's ``parameters``.

    The postprocessing info goes into the PNG's ``extras`` text chunk, as A1111 writes it.
    """
    text = ", ".join(f"{k}: {v}" for k, v in info.items())
    path = None
    if save and settings.samples_save:
        folder = _resolve(data_dir, settings.outdir_samples or settings.outdir_extras_samples)
        if settings.save_to_dirs:
            folder = date_dir(folder)
        original = source.info.get("parameters") if settings.enable_pnginfo else None
        chunks = {"extras": text} if text and settings.enable_pnginfo else None
        path = save_image(
            result,
            folder,
            seed=None,
            extension=settings.samples_format,
            infotext=original if isinstance(original, str) else None,
            jpeg_quality=settings.jpeg_quality,
            basename_pattern="",
            text_chunks=chunks,
        )
    return ExtrasOutput(result, text, path)


def _resolve(data_dir: Path, configured: str) -> Path:
    path = Path(configured)
    return path if path.is_absolute() else data_dir / path


def output_dirs(settings: Settings, data_dir: Path, mode: str) -> tuple[Path, Path]:
    """Return (samples dir, grids dir) for ``mode``, honouring ``outdir_samples``/``outdir_grids`` and date folders."""
    samples = _resolve(data_dir, settings.outdir_samples or getattr(settings, _SAMPLE_DIRS[mode]))
    grids = _resolve(data_dir, settings.outdir_grids or getattr(settings, _GRID_DIRS[mode]))
    if settings.save_to_dirs:
        samples = date_dir(samples)
    if settings.grid_save_to_dirs:
        grids = date_dir(grids)
    return samples, grids


def save_outputs(
    result: GenerationResult, request: GenerationRequest, settings: Settings, data_dir: Path, *, save: bool = True
) -> tuple[list[Path], Image.Image | None]:
    """Save images (and a grid when there are several) as A1111 does; return (paths, grid image or None).

    Nothing is written when ``save`` is false or ``samples_save`` is off, but the grid is still built for display.
    """
    grid = image_grid(result.images) if len(result.images) > 1 else None
    paths: list[Path] = []
    if not result.images:
        return paths, grid
    samples_dir, grids_dir = output_dirs(settings, data_dir, request.mode)
    if save and settings.samples_save:
        for image, seed, info in zip(result.images, result.seeds, result.infotexts, strict=True):
            text = info if settings.enable_pnginfo else None
            path = save_image(
                image,
                samples_dir,
                seed=seed,
                extension=settings.samples_format,
                infotext=text,
                jpeg_quality=settings.jpeg_quality,
            )
            if settings.save_txt:
                path.with_suffix(".txt").write_text(info, encoding="utf-8")
            paths.append(path)
    if save and grid is not None and settings.grid_save:
        text = result.infotexts[0] if settings.enable_pnginfo else None
        paths.append(save_grid(grid, grids_dir, extension=settings.grid_format, infotext=text))
    if save and result.infotexts:
        (data_dir / "params.txt").write_text(result.infotexts[0], encoding="utf-8")
    return paths, grid


def build_info(
    result: GenerationResult,
    request: GenerationRequest,
    checkpoint: CheckpointInfo,
    options: GenerationOptions,
    *,
    index_of_first_image: int = 0,
) -> dict[str, Any]:
    """Return A1111's ``info`` object (the API sends it JSON-encoded; the UI keeps it in generation_info)."""
    return {
        "prompt": request.prompt,
        "all_prompts": list(result.prompts),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": list(result.negative_prompts),
        "seed": result.seeds[0] if result.seeds else request.seed,
        "all_seeds": list(result.seeds),
        "subseed": result.subseeds[0] if result.subseeds else request.subseed,
        "all_subseeds": list(result.subseeds),
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": checkpoint.name_for_extra,
        "sd_model_hash": checkpoint.shorthash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if request.mode == "img2img" else None,
        "extra_generation_params": dict(result.extra_generation_params),
        "index_of_first_image": index_of_first_image,
        "infotexts": list(result.infotexts),
        "styles": list(request.styles),
        "job_timestamp": result.job_timestamp,
        "clip_skip": options.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": options.version,
    }
