"""Run a txt2img/img2img API request through the app context and shape A1111's response."""

from __future__ import annotations

import json
import logging
from typing import Any

from PIL import Image

from modules.api.images import encode_base64
from modules.api.schemas import GenerationFields, ImageResponse, ImageToImageRequest
from modules.context import AppContext
from modules.errors import WebuiError
from modules.outputs import JobOutput
from modules.settings import Settings, infotext_settings

logger = logging.getLogger(__name__)


class InitImageMissingError(WebuiError):
    """img2img was called without ``init_images`` (A1111 answers 404 "Init image not found")."""

    status_code = 404


def apply_infotext(ctx: AppContext, req: GenerationFields) -> GenerationFields:
    """Fill every field the client did not set from ``req.infotext`` (A1111's ``infotext`` request field).

    Clip skip, ENSD, RNG, emphasis and the sampler parameters (``Eta``, ``Sigma churn``, ``Schedule rho``…) become
    override settings unless ``override_settings`` already names them.
    """
    if not req.infotext:
        return req
    fields = ctx.infotext_fields(req.infotext)
    explicit = req.model_fields_set
    update: dict[str, Any] = {}
    for name, value in fields.items():
        if name in explicit:
            continue
        if name in type(req).model_fields:
            update[name] = value
    overrides = dict(req.override_settings or {})
    for key, value in infotext_settings(fields, type(req).model_fields).items():
        overrides.setdefault(key, value)
    if overrides:
        update["override_settings"] = overrides
    logger.debug("Fields taken from infotext: %s", ", ".join(sorted(update)))
    return req.model_copy(update=update)


def _job_settings(ctx: AppContext, req: GenerationFields) -> tuple[dict[str, Any], Settings]:
    """Return (per-job overrides, the settings the job will see); apply them for good when asked to.

    ``override_settings_restore_afterwards`` false means: keep the overrides afterwards, so they are applied to
    the app's settings first (saved, and a new checkpoint loaded) and the job needs no overrides of its own.
    """
    overrides = dict(req.override_settings or {})
    if overrides and not req.override_settings_restore_afterwards:
        ctx.update_settings(overrides)
        overrides = {}
    if req.tiling is not None:  # the request's tiling, for this job only (null: the setting, as in A1111)
        overrides["tiling"] = req.tiling
    return overrides, ctx.settings.with_overrides(overrides)


def _encode(ctx: AppContext, image: Image.Image, infotext: str | None, settings: Settings) -> str:
    text = infotext if settings.enable_pnginfo else None
    return encode_base64(ctx.encode_image(image, settings.samples_format, text, settings.jpeg_quality))


def build_response(ctx: AppContext, req: GenerationFields, output: JobOutput, settings: Settings) -> ImageResponse:
    """Shape a finished job as A1111 does: grid first only with ``save_images``, ≥2 images and ``return_grid``."""
    result = output.result
    with_grid = bool(req.save_images and output.grid is not None and settings.return_grid and len(result.images) > 1)
    images: list[str] = []
    if req.send_images:
        if with_grid and output.grid is not None:
            images.append(_encode(ctx, output.grid, result.infotexts[0] if result.infotexts else None, settings))
        for image, text in zip(result.images, result.infotexts, strict=True):
            images.append(_encode(ctx, image, text, settings))
    info = dict(output.info)
    info["index_of_first_image"] = 1 if with_grid else 0
    return ImageResponse(images=images, parameters=req.echo(), info=json.dumps(info, ensure_ascii=False))


def run_generation(ctx: AppContext, req: GenerationFields) -> ImageResponse:
    """Validate ``req``, queue it on the worker, wait, and build the response.

    Raises:
        WebuiError: Any validation or engine error (mapped to its HTTP status by the exception handler).
    """
    # 1. Reject what this server lacks, fill fields from a pasted infotext, decode images.
    req.check_supported()
    if isinstance(req, ImageToImageRequest) and not req.init_images:
        raise InitImageMissingError("Init image not found: img2img needs init_images (a list of base64 images)")
    req = apply_infotext(ctx, req)
    request = req.to_request()
    # 2. Settings for this job (validated now, so unknown keys fail before queueing).
    overrides, settings = _job_settings(ctx, req)
    # 3. Check ranges and sampler names before queueing, so a bad request never waits behind others.
    ctx.check_request(request)
    # 4. Queue on the single worker and wait for the result.
    job = ctx.submit(request, overrides or None, save=req.save_images, job_id=req.force_task_id)
    output: JobOutput = job.wait()
    if output.result.interrupted:
        logger.info("Job %s was interrupted; returning %d image(s)", job.id, len(output.result.images))
    # 5. Encode the images with their infotext.
    return build_response(ctx, req, output, settings)
