"""HTTP plumbing for the API: the WebuiError handler, GZip, optional CORS, X-Process-Time and --api-log logging."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse

from modules.errors import WebuiError
from modules.flags import LaunchFlags

logger = logging.getLogger(__name__)

GZIP_MIN_BYTES = 1000
API_PREFIX = "/sdapi/"


def error_body(exc: BaseException, message: str) -> dict[str, str]:
    """A1111's error body: ``{"error": <class>, "detail": …, "body": …, "errors": <message>}``.

    ``detail`` carries the message too (A1111 leaves it empty for most errors), so clients that print
    ``response.json()["detail"]`` show something useful.
    """
    return {"error": type(exc).__name__, "detail": message, "body": "", "errors": message}


def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Map a WebuiError to its ``status_code``; anything else is a bug: 500 with an error id that is also logged."""
    if isinstance(exc, WebuiError):
        status = exc.status_code
        message = str(exc)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, message)
        else:
            logger.info("%s %s refused (%d): %s", request.method, request.url.path, status, message)
    else:
        status = 500
        error_id = uuid.uuid4().hex[:8]
        logger.error(
            "Unexpected error in %s %s [error id %s]", request.method, request.url.path, error_id, exc_info=exc
        )
        message = f"Internal error [{error_id}]: {type(exc).__name__}: {exc}"
    return JSONResponse(status_code=status, content=error_body(exc, message))


def install_middleware(app: FastAPI, flags: LaunchFlags) -> None:
    """Add the error handler, GZip (≥1000 bytes), CORS (only when configured) and the timing/logging middleware."""
    app.add_exception_handler(WebuiError, handle_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handle_error)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES)
    if flags.cors_allow_origins or flags.cors_allow_origins_regex:
        origins = [o.strip() for o in (flags.cors_allow_origins or "").split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_origin_regex=flags.cors_allow_origins_regex,
            allow_methods=["*"],
            allow_credentials=True,
            allow_headers=["*"],
        )
    log_requests = flags.api_log

    async def timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        duration = time.perf_counter() - start
        response.headers["X-Process-Time"] = f"{duration:.4f}"
        if log_requests and request.url.path.startswith(API_PREFIX):
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            logger.info(
                "API %s %s %s %d %.3fs", client, request.method, request.url.path, response.status_code, duration
            )
        return response

    app.middleware("http")(timing)
