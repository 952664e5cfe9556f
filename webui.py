"""Composition root: parse argv → Settings → AppContext → FastAPI app (+ Gradio UI, + /sdapi/v1) → uvicorn."""

from __future__ import annotations

import logging
import os
import sys
import webbrowser
from pathlib import Path

# Offline by design: nothing may reach the model hub at run time (set before any HF library is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

from fastapi import FastAPI

from modules.context import AppContext
from modules.engine.download import DEFAULT_MODEL, default_model
from modules.engine.switch_interval import short_switch_interval
from modules.errors import WebuiError
from modules.flags import LaunchFlags, ignored_flags_used, parse_flags
from modules.settings import Settings

logger = logging.getLogger("webui")
# Ctrl+C / SIGTERM: open connections get this long to finish; without a limit, one client connection left open mid-TLS
# handshake (a client that rejected the certificate) held the shutdown for 30 s (tests/test_webui.py).
GRACEFUL_SHUTDOWN_S = 3


def setup_logging(level: str | None) -> None:
    logging.basicConfig(
        level=getattr(logging, (level or "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "PIL", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def create_context(flags: LaunchFlags) -> AppContext:
    settings = Settings.load(flags.settings_file)
    spec = default_model(os.environ["HF_ENDPOINT"]) if os.environ.get("HF_ENDPOINT") else DEFAULT_MODEL
    return AppContext(flags=flags, settings=settings, download_spec=spec)


def root_path(flags: LaunchFlags) -> str:
    """``--subpath sd`` → ``/sd``: the prefix a reverse proxy serves us under (A1111's root_path)."""
    return "/" + flags.subpath.strip("/") if flags.subpath else ""


def create_app(ctx: AppContext) -> FastAPI:
    """Build the FastAPI app: the API router (with --api / --nowebui) and the Gradio UI (unless --nowebui)."""
    flags = ctx.flags
    app = FastAPI(title="Stable Diffusion web UI")
    app.state.ctx = ctx
    if flags.api or flags.nowebui:
        from modules.api import install_api

        install_api(app, ctx)
    if not flags.nowebui:
        import gradio as gr

        from modules.ui import create_ui, ui_launch_kwargs

        if flags.api_auth or not (flags.gradio_auth or flags.gradio_auth_path):
            # A1111's /internal routes; with only a UI login they would show previews to anyone, so they are left out
            from modules.api.routes_internal import install_internal_routes

            install_internal_routes(app)
        blocks = create_ui(ctx)
        blocks.queue(default_concurrency_limit=4)
        app = gr.mount_gradio_app(app, blocks, path="/", root_path=root_path(flags), **ui_launch_kwargs(ctx))
    return app


def main(argv: list[str]) -> int:
    try:
        flags = parse_flags(argv)
    except WebuiError as exc:
        logging.basicConfig()
        logger.error("%s", exc)
        return 2
    setup_logging(flags.loglevel)
    if ignored := ignored_flags_used(flags):
        logger.info("Accepted for A1111 compatibility, no effect here: %s", ", ".join(ignored))
    if flags.raw.get("exit"):
        return 0
    flags.data_dir.mkdir(parents=True, exist_ok=True)
    if (flags.listen or flags.server_name) and not (flags.gradio_auth or flags.gradio_auth_path or flags.api_auth):
        logger.warning(
            "Listening on %s without --gradio-auth/--api-auth: anyone on the network can use it.", flags.host
        )
    ctx = create_context(flags)
    # The checkpoint loads on the worker thread while Gradio imports and the UI is built; with the default switch
    # interval the load waited up to 5 ms for the interpreter after each of its thousands of reads and copies (on the
    # H200 4.0–4.9 s, 2.3–2.4 s with the interval short, 0.3–1.4 s alone: engine/switch_interval.py).
    with short_switch_interval():
        ctx.start()
        try:
            app = create_app(ctx)
        except BaseException:
            ctx.close()
            raise
    import uvicorn

    scheme = "https" if flags.tls_certfile else "http"
    url = f"{scheme}://{'127.0.0.1' if flags.host == '0.0.0.0' else flags.host}:{flags.server_port}"
    logger.info("Running on local URL: %s", url)
    if flags.subpath:
        logger.info("Links are built for a reverse proxy that serves this app under %s", root_path(flags))
    if flags.autolaunch:
        webbrowser.open(url)
    try:
        uvicorn.run(
            app,
            host=flags.host,
            port=flags.server_port,
            timeout_keep_alive=flags.timeout_keep_alive,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            ssl_keyfile=flags.tls_keyfile,
            ssl_certfile=flags.tls_certfile,
            root_path=root_path(flags),
            log_level="warning",
        )
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
