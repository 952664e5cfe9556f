"""The PNG Info tab: read the infotext and text chunks of an image; send it to txt2img, img2img, inpaint, extras."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import WebuiError
from modules.ui.generation import paste_updates
from modules.ui.txt2img import SEND_TARGETS
from modules.ui.views import pnginfo_html

if TYPE_CHECKING:
    from PIL import Image

    from modules.context import AppContext
    from modules.ui.txt2img import GenerationTab

logger = logging.getLogger(__name__)


@dataclass
class PngInfoTab:
    """Components of the PNG Info tab."""

    image: gr.Image
    html: gr.HTML
    generation_info: gr.Textbox
    send_txt2img: gr.Button
    send_buttons: dict[str, gr.Button] = field(default_factory=dict)  # img2img / inpaint / extras (ui.sendto)


def build_tab() -> PngInfoTab:
    """Lay out the tab (call inside its ``gr.Tab``)."""
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            image = gr.Image(
                label="Source",
                type="pil",
                sources=["upload", "clipboard"],
                elem_id="pnginfo_image",
                image_mode=None,
                height=480,
            )
        with gr.Column(variant="panel"):
            html = gr.HTML("", elem_id="pnginfo_html")
            generation_info = gr.Textbox("", visible="hidden", elem_id="pnginfo_generation_info", label="Infotext")
            with gr.Row():
                send = gr.Button("Send to txt2img", elem_id="txt2img_tab")
                others = {
                    target: gr.Button(label, elem_id=f"pnginfo_send_to_{target}")
                    for target, label in SEND_TARGETS.items()
                }
    return PngInfoTab(image=image, html=html, generation_info=generation_info, send_txt2img=send, send_buttons=others)


def read_info(ctx: AppContext, image: Image.Image | None) -> tuple[str, str]:
    """Return (panel HTML, infotext) for an uploaded image; both empty when the image is cleared."""
    if image is None:
        return "", ""
    try:
        infotext, items = ctx.read_image_info(image)
    except WebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return pnginfo_html(infotext, items), infotext or ""


def wire(ctx: AppContext, p: PngInfoTab, txt2img: GenerationTab, tabs: gr.Tabs) -> None:
    """Image in → infotext out; "Send to txt2img" fills that tab and switches to it."""

    def on_image(image: Image.Image | None) -> tuple[str, str]:
        return read_info(ctx, image)

    def send(text: str) -> dict[Any, Any]:
        if not text:
            gr.Warning("This image has no generation parameters to send.")
            return {}
        updates = paste_updates(ctx, txt2img, text)
        updates[tabs] = gr.Tabs(selected="txt2img")
        return updates

    p.image.change(
        on_image, inputs=p.image, outputs=[p.html, p.generation_info], api_name="pnginfo", show_progress="hidden"
    )
    outputs = [*txt2img.fields.values(), txt2img.subseed_row, tabs]
    p.send_txt2img.click(send, inputs=p.generation_info, outputs=outputs, api_visibility="private")
