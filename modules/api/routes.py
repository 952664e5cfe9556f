"""APIRouter for /sdapi/v1 generation, state and settings: txt2img, img2img, png-info, progress, options.

Endpoints are plain ``def``: FastAPI runs them in its thread pool, so ``job.wait()`` blocks only that thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Query

from modules.api.deps import Ctx
from modules.api.generation import run_generation
from modules.api.images import decode_base64_image, encode_base64
from modules.api.schemas import ImageResponse, ImageToImageRequest, TextToImageRequest
from modules.api.schemas_info import PNGInfoRequest, PNGInfoResponse, ProgressResponse, ProgressState
from modules.errors import WebuiError
from modules.jobs import Job, JobStatus

logger = logging.getLogger(__name__)

# Keys of the infotext parser's result that are prompts, not parameters (png-info keeps them, as A1111 does).
_GENERATION_KINDS = ("txt2img", "img2img")


def create_router() -> APIRouter:
    """Return the generation/state/settings router (paths relative to ``/sdapi/v1``)."""
    router = APIRouter()
    router.add_api_route("/txt2img", txt2img, methods=["POST"], response_model=ImageResponse)
    router.add_api_route("/img2img", img2img, methods=["POST"], response_model=ImageResponse)
    router.add_api_route("/png-info", png_info, methods=["POST"], response_model=PNGInfoResponse)
    router.add_api_route("/progress", progress, methods=["GET"], response_model=ProgressResponse)
    router.add_api_route("/interrupt", interrupt, methods=["POST"])
    router.add_api_route("/skip", skip, methods=["POST"])
    router.add_api_route("/options", get_options, methods=["GET"])
    router.add_api_route("/options", set_options, methods=["POST"])
    router.add_api_route("/cmd-flags", cmd_flags, methods=["GET"])
    return router


def txt2img(ctx: Ctx, req: TextToImageRequest) -> ImageResponse:
    """Generate images from a prompt."""
    return run_generation(ctx, req)


def img2img(ctx: Ctx, req: ImageToImageRequest) -> ImageResponse:
    """Generate images from init images (and a mask for inpainting)."""
    return run_generation(ctx, req)


def png_info(ctx: Ctx, req: PNGInfoRequest) -> PNGInfoResponse:
    """Read the generation parameters embedded in an image."""
    image = decode_base64_image(req.image, "image")
    infotext, items = ctx.read_image_info(image)
    if not infotext:
        return PNGInfoResponse(info="", items=dict(items), parameters={})
    return PNGInfoResponse(info=infotext, items=dict(items), parameters=ctx.parse_infotext(infotext))


def _job_label(job: Job) -> str:
    if job.kind in _GENERATION_KINDS and job.job_count > 1:
        return f"Batch {job.job_no + 1} out of {job.job_count}"
    return job.kind


def progress(
    ctx: Ctx,
    skip_current_image: bool = Query(False, description="Do not send the live preview"),
) -> ProgressResponse:
    """Progress of the running job (A1111's formula; 0 and job_count 0 when idle)."""
    job = ctx.jobs.current
    if job is None or job.status is not JobStatus.RUNNING:
        return ProgressResponse()
    frac = min(0.01 + job.progress, 1.0) if job.total_steps else job.progress
    started = job.started_at or time.time()
    state = ProgressState(
        skipped=job.skipped,
        interrupted=job.interrupted,
        stopping_generation=job.stopping_generation,
        job=_job_label(job),
        job_count=max(job.job_count, 1),
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        job_no=job.job_no,
        sampling_step=job.step,
        sampling_steps=job.total_steps,
    )
    current_image = None
    if not skip_current_image and ctx.settings.live_previews_enable:
        job.want_preview()  # the worker draws previews while someone asks for them (engine/previews.py)
        image = job.current_image
        if image is not None:
            snap = ctx.settings
            current_image = encode_base64(ctx.encode_image(image, snap.samples_format, None, snap.jpeg_quality))
    return ProgressResponse(
        progress=frac,
        eta_relative=job.eta or 0.0,
        state=state,
        current_image=current_image,
        textinfo=job.textinfo or None,
    )


def interrupt(ctx: Ctx) -> dict[str, Any]:
    """Stop the running job after its current sampling step; it returns what it has made."""
    ctx.jobs.interrupt_all()
    return {}


def skip(ctx: Ctx) -> None:
    """Abandon the current batch of the running job and continue with the next."""
    job = ctx.jobs.current
    if job is not None:
        job.skip()


def get_options(ctx: Ctx) -> dict[str, Any]:
    """Every setting and its current value (A1111 option names).

    ``sd_model_checkpoint`` is the selected checkpoint's full title (``name [hash]`` once hashed), as A1111 reports
    it, whichever alias was used to choose it; ``sd_checkpoint_hash`` is the loaded model's SHA-256.
    """
    options = ctx.settings.model_dump()
    # With no checkpoint at all, or a configured one that vanished, the stored value is reported as is.
    with contextlib.suppress(WebuiError):
        options["sd_model_checkpoint"] = ctx.selected_checkpoint().title
    current = ctx.models.current
    if current is not None:
        options["sd_checkpoint_hash"] = current.checkpoint.sha256
    return options


def set_options(ctx: Ctx, body: dict[str, Any] = Body(...)) -> None:  # noqa: B008
    """Change settings (saved to config.json); a new ``sd_model_checkpoint`` is loaded before this returns.

    Unknown keys are refused (422, naming them); known A1111 keys this server does not implement are ignored.
    """
    ctx.update_settings(body)


def cmd_flags(ctx: Ctx) -> dict[str, Any]:
    """Every command-line flag by its argparse name (``vars(cmd_opts)``)."""
    return {key: _jsonable(value) for key, value in ctx.flags.raw.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
