"""The A1111-compatible HTTP API under /sdapi/v1: install_api(app, ctx) adds routes, auth and middleware."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, FastAPI

from modules.api.deps import parse_credentials, require_auth
from modules.api.middleware import install_middleware
from modules.api.routes import create_router
from modules.api.routes_extras import create_extras_router
from modules.api.routes_lists import create_lists_router
from modules.context import AppContext

logger = logging.getLogger(__name__)

API_PREFIX = "/sdapi/v1"

__all__ = ["API_PREFIX", "create_router", "install_api"]


def install_api(app: FastAPI, ctx: AppContext) -> None:
    """Mount every /sdapi/v1 route on ``app``, behind HTTP Basic auth when ``--api-auth`` is given.

    ``ctx`` must also be stored as ``app.state.ctx`` (webui.create_app does that); the routes read it from there.
    """
    app.state.ctx = ctx
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_auth)])
    api.include_router(create_router())
    api.include_router(create_lists_router(server_stop=ctx.flags.api_server_stop))
    api.include_router(create_extras_router())
    app.include_router(api)
    install_middleware(app, ctx.flags)
    if ctx.flags.api_auth and not parse_credentials(ctx.flags.api_auth):
        logger.warning("--api-auth holds no user:password entry; the API is NOT protected")
    logger.info("API mounted at %s%s", API_PREFIX, " (HTTP Basic auth)" if ctx.flags.api_auth else "")
