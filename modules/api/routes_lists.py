"""APIRouter for /sdapi/v1 listings and model actions: sd-models, samplers, refresh-*, memory, server-*.

Lists of things this server does not have (VAEs, hypernetworks, face restorers…) are empty: the truthful answer.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from modules.api.deps import Ctx
from modules.api.schemas_info import (
    EmbeddingsResponse,
    ExtensionItem,
    FaceRestorerItem,
    LoraItem,
    MemoryResponse,
    NameItem,
    NamePathItem,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    ScriptInfo,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from modules.context import AppContext
from modules.engine.types import LATENT_UPSCALE_MODES

logger = logging.getLogger(__name__)

# (path, response model) of listings that are empty until the feature exists.
_EMPTY_LISTS: tuple[tuple[str, type], ...] = (
    ("/hypernetworks", NamePathItem),
    ("/face-restorers", FaceRestorerItem),
    ("/realesrgan-models", RealesrganItem),
    ("/extensions", ExtensionItem),
)
_STOP_DELAY_S = 0.5


def create_lists_router(server_stop: bool) -> APIRouter:
    """Return the listings/actions router; ``server_stop`` adds server-kill/-restart/-stop (``--api-server-stop``)."""
    router = APIRouter()
    router.add_api_route("/sd-models", sd_models, methods=["GET"], response_model=list[SDModelItem])
    router.add_api_route("/samplers", samplers, methods=["GET"], response_model=list[SamplerItem])
    router.add_api_route("/schedulers", schedulers, methods=["GET"], response_model=list[SchedulerItem])
    router.add_api_route("/embeddings", embeddings, methods=["GET"], response_model=EmbeddingsResponse)
    router.add_api_route("/scripts", scripts, methods=["GET"], response_model=ScriptsList)
    router.add_api_route("/memory", memory, methods=["GET"], response_model=MemoryResponse)
    router.add_api_route("/script-info", script_info, methods=["GET"], response_model=list[ScriptInfo])
    router.add_api_route("/upscalers", upscalers, methods=["GET"], response_model=list[UpscalerItem])
    router.add_api_route("/latent-upscale-modes", latent_upscale_modes, methods=["GET"], response_model=list[NameItem])
    for path, item in _EMPTY_LISTS:
        router.add_api_route(path, empty_list, methods=["GET"], response_model=list[item], name=path.strip("/"))
    router.add_api_route("/loras", loras, methods=["GET"], response_model=list[LoraItem])
    router.add_api_route("/refresh-loras", refresh_loras, methods=["POST"])
    router.add_api_route("/refresh-embeddings", refresh_embeddings, methods=["POST"])
    router.add_api_route("/sd-vae", sd_vae, methods=["GET"], response_model=list[SDVaeItem])
    router.add_api_route("/prompt-styles", prompt_styles, methods=["GET"], response_model=list[PromptStyleItem])
    router.add_api_route("/refresh-vae", refresh_vae, methods=["POST"])
    router.add_api_route("/refresh-checkpoints", refresh_checkpoints, methods=["POST"])
    router.add_api_route("/unload-checkpoint", unload_checkpoint, methods=["POST"])
    router.add_api_route("/reload-checkpoint", reload_checkpoint, methods=["POST"])
    if server_stop:
        router.add_api_route("/server-kill", server_kill, methods=["POST"])
        router.add_api_route("/server-restart", server_restart, methods=["POST"])
        router.add_api_route("/server-stop", server_stop_route, methods=["POST"])
    return router


def sd_models(ctx: Ctx) -> list[SDModelItem]:
    """Checkpoints found on disk; ``hash`` is null until the file has been hashed (A1111's behaviour)."""
    return [
        SDModelItem(
            title=c.title,
            model_name=c.model_name,
            hash=c.shorthash,
            sha256=c.sha256,
            filename=str(c.filename),
            config=str(c.config) if c.config else None,
        )
        for c in ctx.checkpoints
    ]


def samplers(ctx: Ctx) -> list[dict[str, object]]:
    """Samplers that can run here, in A1111's order, with their aliases and options."""
    return ctx.sampler_list()


def schedulers(ctx: Ctx) -> list[dict[str, object]]:
    """Schedule types (``Automatic``, ``Karras``…)."""
    return ctx.schedule_list()


def upscalers(ctx: Ctx) -> list[dict[str, object]]:
    """Image upscalers: None, Lanczos, Nearest, then the model files found (name, path, scale)."""
    return [info.to_api() for info in ctx.upscalers.infos()]


def latent_upscale_modes() -> list[NameItem]:
    """Hires. fix latent upscalers, in A1111's order."""
    return [NameItem(name=name) for name in LATENT_UPSCALE_MODES]


def embeddings(ctx: Ctx) -> EmbeddingsResponse:
    """Textual-inversion embeddings of ``embeddings/``: those that fit the loaded model, and the skipped ones."""
    return EmbeddingsResponse(**ctx.embedding_list())


def script_info(ctx: Ctx) -> list[dict[str, object]]:
    """Arguments of each selectable script."""
    return ctx.script_infos()


def scripts(ctx: Ctx) -> ScriptsList:
    """Selectable scripts per tab (lower-case titles, as A1111 lists them)."""
    return ScriptsList(txt2img=[], img2img=[str(info["name"]) for info in ctx.script_infos()])


def empty_list() -> list[Any]:
    """A listing of a feature this version does not have yet."""
    return []


def refresh_checkpoints(ctx: Ctx) -> None:
    """Rescan the checkpoint directories."""
    found = ctx.refresh_checkpoints()
    logger.info("Checkpoint list refreshed: %d found", len(found))


def sd_vae(ctx: Ctx) -> list[SDVaeItem]:
    """The VAE files of ``models/VAE`` (``--vae-dir``) that the ``sd_vae`` option may name."""
    return [SDVaeItem(model_name=name, filename=str(path)) for name, path in ctx.vaes.files().items()]


def prompt_styles(ctx: Ctx) -> list[PromptStyleItem]:
    """The styles of ``styles.csv`` (``--styles-file``)."""
    return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in ctx.style_list()]


def refresh_vae(ctx: Ctx) -> None:
    """Rescan the VAE folder (every job looks again by itself)."""
    logger.info("VAE list refreshed: %d found", len(ctx.vaes.files()))


def refresh_embeddings(ctx: Ctx) -> None:
    """Read the embeddings folder again (every job does too: new and changed files are picked up by themselves)."""
    loaded = ctx.embedding_list()["loaded"]
    logger.info("Embeddings refreshed: %d usable", len(loaded))


def loras(ctx: Ctx) -> list[LoraItem]:
    """The LoRA files of ``models/Lora`` (``--lora-dir``): name, alias (the name), path and training metadata."""
    items = []
    for file in ctx.loras.files():
        try:
            metadata = file.metadata()
        except (OSError, ValueError) as exc:  # unreadable header: listed, with the reason instead of metadata
            metadata = {"error": f"{type(exc).__name__}: {exc}"}
        items.append(LoraItem(name=file.name, alias=file.name, path=str(file.path), metadata=metadata))
    return items


def refresh_loras(ctx: Ctx) -> None:
    """Rescan the LoRA folder."""
    found = ctx.loras.refresh()
    logger.info("LoRA list refreshed: %d found", len(found))


def unload_checkpoint(ctx: Ctx) -> dict[str, Any]:
    """Free the loaded model (on the worker, after the running job)."""
    ctx.jobs.submit(lambda job: ctx.models.unload(), kind="unload").wait()
    return {}


def reload_checkpoint(ctx: Ctx) -> dict[str, Any]:
    """Load the selected checkpoint again (after unload-checkpoint, or to pick up a changed file)."""
    ctx.submit_load().wait()
    return {}


def _meminfo() -> dict[str, int]:
    """Return total/free/used RAM in bytes from /proc/meminfo, or from sysconf where that is missing."""
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
        total, free = fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    return {"free": free, "used": total - free, "total": total}


def memory(ctx: Ctx) -> MemoryResponse:
    """System RAM; device memory is not reported (A1111's ``{"error": ...}`` form)."""
    try:
        ram: dict[str, Any] = _meminfo()
    except (OSError, ValueError) as exc:
        ram = {"error": str(exc)}
    current = ctx.models.current
    on_cuda = current is not None and current.device.startswith("cuda")
    cuda = {"error": "device memory statistics are not reported by this server" if on_cuda else "unavailable"}
    return MemoryResponse(ram=ram, cuda=cuda)


def _later(action: Any) -> None:
    """Run ``action`` shortly, so the HTTP answer is sent first."""
    threading.Timer(_STOP_DELAY_S, action).start()


def _graceful_stop() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # uvicorn turns SIGINT into a graceful shutdown


def server_kill() -> None:
    """Exit the process at once (A1111's ``server-kill``)."""
    logger.warning("server-kill requested over the API")
    _later(lambda: os._exit(0))


def server_restart(ctx: Ctx) -> None:
    """Stop gracefully and leave the ``tmp/restart`` marker that A1111's launcher loop looks for."""
    logger.warning("server-restart requested over the API")
    marker = _restart_marker(ctx)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    _later(_graceful_stop)


def server_stop_route() -> None:
    """Stop the server gracefully (A1111's ``server-stop``)."""
    logger.warning("server-stop requested over the API")
    _later(_graceful_stop)


def _restart_marker(ctx: AppContext) -> Path:
    return ctx.flags.data_dir / "tmp" / "restart"
