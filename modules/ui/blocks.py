"""create_ui(ctx) → gr.Blocks: tabs and layout with A1111's labels and elem_ids; event wiring only."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.ui import extras, generation, img2img, img2img_batch, pnginfo, quicksettings, sendto, settings_tab, txt2img

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext

logger = logging.getLogger(__name__)

TITLE = "Stable Diffusion"


def _wire_page_load(
    ctx: AppContext,
    blocks: gr.Blocks,
    qs: quicksettings.Quicksettings,
    st: settings_tab.SettingsTab,
    style_boxes: list[Component],
) -> None:
    """On each page load show the current checkpoint list/selection, settings and styles (they may have changed)."""

    def on_load() -> dict[Component, Any]:
        updates: dict[Component, Any] = {
            qs.checkpoint: quicksettings.dropdown_update(ctx),
            qs.notice: quicksettings.notice(ctx),
        }
        updates.update(settings_tab.current_values(ctx, st))
        styles = [s.name for s in ctx.style_list()]
        updates.update({box: gr.update(choices=styles) for box in style_boxes})
        return updates

    blocks.load(
        on_load,
        outputs=[qs.checkpoint, qs.notice, *st.widgets.values(), *style_boxes],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )


def create_ui(ctx: AppContext) -> gr.Blocks:
    """Build the whole page: quicksettings row, then the txt2img, img2img, Extras, PNG Info and Settings tabs.

    Args:
        ctx: The application context; handlers reach it by closure.

    Returns:
        The Blocks, not yet queued or mounted (``webui.create_app`` does both).
    """
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        qs = quicksettings.build(ctx)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build_tab(ctx, "txt2img")
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i, i2i_extras = img2img.build_tab(ctx)
                i2i.runner = img2img_batch.runner
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ext = extras.build_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build_tab()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                st = settings_tab.build_tab(ctx)
        quicksettings.wire(ctx, qs)
        generation.wire(ctx, t2i, qs.checkpoint)
        generation.wire(ctx, i2i, qs.checkpoint)
        img2img.wire(i2i, i2i_extras)
        extras.wire(ctx, ext)
        pnginfo.wire(ctx, png, t2i, tabs)
        targets = sendto.Targets(tabs=tabs, img2img=i2i, img2img_extras=i2i_extras, extras=ext)
        sendto.wire_gallery(ctx, t2i, targets)
        sendto.wire_gallery(ctx, i2i, targets)
        sendto.wire_pnginfo(ctx, png, targets)
        settings_tab.wire(ctx, st)
        _wire_page_load(ctx, blocks, qs, st, [t2i.fields["styles"], i2i.fields["styles"]])
    logger.debug("UI built")
    return blocks
