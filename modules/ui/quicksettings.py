"""The quicksettings row: checkpoint dropdown with 🔄, and the "no checkpoint" notice with download progress."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import WebuiError
from modules.ui.views import notice_html

if TYPE_CHECKING:
    from modules.context import AppContext

logger = logging.getLogger(__name__)


@dataclass
class Quicksettings:
    """Components of the quicksettings row (built inside the Blocks context)."""

    checkpoint: gr.Dropdown
    refresh: gr.Button
    notice: gr.HTML
    timer: gr.Timer


def checkpoint_titles(ctx: AppContext) -> list[str]:
    """Titles of the known checkpoints, for the dropdown."""
    return [c.title for c in ctx.checkpoints]


def current_title(ctx: AppContext) -> str | None:
    """Title of the selected checkpoint, or None when there is none."""
    try:
        return ctx.selected_checkpoint().title
    except WebuiError:
        return None


def _downloading(ctx: AppContext) -> bool:
    """Whether the first-run download is running or waiting to run."""
    job = ctx.jobs.current
    return (job is not None and job.kind == "download") or any(j.kind == "download" for j in ctx.jobs.pending)


def notice(ctx: AppContext) -> dict[str, Any]:
    """Update for the notice: hidden when checkpoints exist, else where to put one and the download state."""
    if ctx.checkpoints:
        return gr.update(value="", visible=False)
    text = notice_html(ctx.flags.checkpoint_dirs[-1], ctx.download, _downloading(ctx))
    return gr.update(value=text, visible=True)


def dropdown_update(ctx: AppContext) -> dict[str, Any]:
    """Update for the checkpoint dropdown: fresh choices and the selected title."""
    return gr.update(choices=checkpoint_titles(ctx), value=current_title(ctx))


def build(ctx: AppContext) -> Quicksettings:
    """Create the quicksettings row (call inside ``gr.Blocks``)."""
    with gr.Row(elem_id="quicksettings"):
        checkpoint = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=checkpoint_titles(ctx),
            value=current_title(ctx),
            elem_id="setting_sd_model_checkpoint",
            interactive=True,
            scale=0,
            min_width=420,
        )
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", elem_classes=["tool-button"], scale=0)
    notice_text = notice(ctx)
    html = gr.HTML(notice_text["value"], visible=notice_text["visible"], elem_id="no_checkpoint_notice")
    timer = gr.Timer(1.0, active=not ctx.checkpoints)
    return Quicksettings(checkpoint=checkpoint, refresh=refresh, notice=html, timer=timer)


def change_checkpoint(ctx: AppContext, title: str | None) -> dict[str, Any]:
    """Select and load checkpoint ``title``; on failure warn, restore the previous selection and keep going."""
    if not title or title == current_title(ctx):
        return dropdown_update(ctx)
    previous = ctx.settings.sd_model_checkpoint
    try:
        ctx.update_settings({"sd_model_checkpoint": title})
        gr.Info(f"Loaded {title}")
    except WebuiError as exc:
        logger.warning("Could not switch to checkpoint %s: %s", title, exc)
        gr.Warning(f"Could not load {title}: {exc}")
        if ctx.settings.sd_model_checkpoint != previous:
            try:
                ctx.update_settings({"sd_model_checkpoint": previous})
            except WebuiError as again:
                logger.warning("Could not restore checkpoint %s: %s", previous, again)
    return dropdown_update(ctx)


def wire(ctx: AppContext, qs: Quicksettings) -> None:
    """Attach the events: dropdown choice loads, 🔄 rescans, the timer follows a first-run download."""

    def on_change(title: str | None) -> dict[str, Any]:
        return change_checkpoint(ctx, title)

    def on_refresh() -> tuple[dict[str, Any], dict[str, Any]]:
        ctx.refresh_checkpoints()
        return dropdown_update(ctx), notice(ctx)

    def on_tick() -> tuple[dict[str, Any], dict[str, Any], gr.Timer]:
        if not ctx.checkpoints and ctx.download.finished and not ctx.download.error:
            ctx.refresh_checkpoints()
        done = bool(ctx.checkpoints) or not _downloading(ctx)
        return dropdown_update(ctx), notice(ctx), gr.Timer(active=not done)

    qs.checkpoint.input(on_change, inputs=qs.checkpoint, outputs=qs.checkpoint, api_name="select_checkpoint")
    qs.refresh.click(
        on_refresh, outputs=[qs.checkpoint, qs.notice], api_name="refresh_checkpoints", concurrency_limit=None
    )
    qs.timer.tick(
        on_tick,
        outputs=[qs.checkpoint, qs.notice, qs.timer],
        show_progress="hidden",
        api_visibility="private",
        concurrency_limit=None,
    )
