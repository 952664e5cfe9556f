"""The img2img "Script" dropdown: A1111's selectable scripts the engine runs, by title (``script_name``).

A script turns the request into the request that is actually generated (both outpainting scripts expand the canvas
and inpaint the new border).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modules.engine import outpaint, outpaint_mk2
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError


@dataclass(frozen=True)
class Script:
    """One selectable img2img script: its title, how it rewrites a request, and its ``/script-info`` entry."""

    title: str
    rewrite: Callable[[GenerationRequest, Sequence[Any]], GenerationRequest]
    info: Callable[[], dict[str, Any]]


SCRIPTS: tuple[Script, ...] = (
    Script(
        outpaint.TITLE,
        lambda request, args: outpaint.expand(request, outpaint.OutpaintArgs.from_script_args(args)),
        outpaint.script_info,
    ),
    Script(
        outpaint_mk2.TITLE,
        lambda request, args: outpaint_mk2.expand(request, outpaint_mk2.Mk2Args.from_script_args(args)),
        outpaint_mk2.script_info,
    ),
)


def script_infos() -> list[dict[str, Any]]:
    """Every script's ``/sdapi/v1/script-info`` entry."""
    return [script.info() for script in SCRIPTS]


def apply_script(request: GenerationRequest) -> GenerationRequest:
    """Resolve ``request.script_name`` (case-insensitive title); "" or "None" leaves the request as it is.

    Raises:
        InvalidRequestError: For an unknown script, a txt2img request naming one, or bad ``script_args``.
    """
    name = (request.script_name or "").strip()
    if name in ("", "None"):
        return request
    found = [s for s in SCRIPTS if s.title.lower() == name.lower()]
    if not found or request.mode != "img2img":
        titles = ", ".join(s.title for s in SCRIPTS)
        raise InvalidRequestError(f"script_name {name!r} not found; img2img scripts: {titles}")
    rewritten = found[0].rewrite(request, request.script_args)
    return dataclasses.replace(rewritten, script_name="", script_args=())
