"""FastAPI dependencies of the API layer: the app context and HTTP Basic authentication."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from modules.context import AppContext

logger = logging.getLogger(__name__)

_basic = HTTPBasic(auto_error=False)


def get_ctx(request: Request) -> AppContext:
    """Return the application context that webui.py stored on ``app.state``."""
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def parse_credentials(spec: str | None) -> dict[str, str]:
    """Parse ``--api-auth`` (``"user:pass,user2:pass2"``) into ``{user: password}``.

    Each entry is split on its first ``:`` only, so passwords may contain ``:`` (A1111 splits on every ``:``).

    >>> parse_credentials("a:b, c:d:e")
    {'a': 'b', 'c': 'd:e'}
    >>> parse_credentials(None)
    {}
    """
    logins: dict[str, str] = {}
    for entry in (spec or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            logger.warning("Ignoring an --api-auth entry that is not user:password")
            continue
        logins[user] = password
    return logins


def require_auth(ctx: Ctx, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> None:
    """Check HTTP Basic credentials against ``--api-auth``; no-op when it is not set.

    Raises:
        HTTPException: 401 with ``WWW-Authenticate: Basic`` for a missing or wrong login.
    """
    logins = parse_credentials(ctx.flags.api_auth)
    if not logins:
        return
    if credentials is not None:
        expected = logins.get(credentials.username)
        # compare_digest on both parts so the time taken does not tell which part was wrong.
        user_ok = expected is not None
        pass_ok = secrets.compare_digest(credentials.password.encode(), (expected or "").encode())
        if user_ok and pass_ok:
            return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="Incorrect username or password",
        headers={"WWW-Authenticate": "Basic"},
    )
