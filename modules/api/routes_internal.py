"""A1111's ``/internal`` routes of the web page, for tools that follow a task by id (``force_task_id``).

``POST /internal/progress`` (a task's state and its newer live preview), ``GET /internal/pending-tasks`` and
``GET /internal/ping``. They sit beside the UI (as in A1111), behind ``--api-auth`` when it is given.
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Depends, FastAPI

from modules.api.deps import Ctx, require_auth
from modules.api.schemas_info import InternalProgressRequest, InternalProgressResponse
from modules.jobs import JobStatus


def internal_progress(ctx: Ctx, req: InternalProgressRequest) -> InternalProgressResponse:
    """Where task ``id_task`` stands; the live preview only when it is newer than ``id_live_preview``."""
    jobs, task = ctx.jobs, req.id_task or ""
    current = jobs.current
    active = current is not None and current.id == task and current.status is JobStatus.RUNNING
    pending = [job.id for job in jobs.pending]
    queued, completed = task in pending, jobs.finished(task)
    if not active:
        textinfo = f"In queue: {pending.index(task) + 1}/{len(pending)}" if queued else "Waiting..."
        return InternalProgressResponse(
            active=False, queued=queued, completed=completed, id_live_preview=-1, textinfo=textinfo
        )
    elapsed = time.time() - (current.started_at or time.time())
    progress = current.progress
    eta = elapsed / progress - elapsed if progress > 0 else None
    preview, preview_id = None, req.id_live_preview
    snap = ctx.settings
    if snap.live_previews_enable and req.live_preview:
        current.want_preview()
        image = current.current_image
        if image is not None and current.id_live_preview != req.id_live_preview:
            fmt = snap.live_previews_image_format
            data = base64.b64encode(ctx.encode_image(image, fmt, None)).decode("ascii")
            preview, preview_id = f"data:image/{fmt};base64,{data}", current.id_live_preview
    return InternalProgressResponse(
        active=True,
        queued=False,
        completed=False,
        progress=progress,
        eta=eta,
        live_preview=preview,
        id_live_preview=preview_id,
        textinfo=current.textinfo or None,
    )


def pending_tasks(ctx: Ctx) -> dict[str, object]:
    """The ids of the jobs waiting to run, oldest first."""
    tasks = [job.id for job in ctx.jobs.pending]
    return {"size": len(tasks), "tasks": tasks}


def install_internal_routes(app: FastAPI) -> None:
    """Add the routes to ``app`` (``app.state.ctx`` must hold the context)."""
    router = APIRouter(prefix="/internal", dependencies=[Depends(require_auth)])
    router.add_api_route("/progress", internal_progress, methods=["POST"], response_model=InternalProgressResponse)
    router.add_api_route("/pending-tasks", pending_tasks, methods=["GET"])
    router.add_api_route("/ping", lambda: {}, methods=["GET"])
    app.include_router(router)
