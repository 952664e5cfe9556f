"""A1111's "Send to img2img / inpaint / extras" buttons: copy an image (and its parameters) to a tab and open it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.ui.generation import paste_updates, selected_infotext

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext
    from modules.ui.extras import ExtrasTab
    from modules.ui.img2img import Img2ImgExtras
    from modules.ui.pnginfo import PngInfoTab
    from modules.ui.txt2img import GenerationTab

logger = logging.getLogger(__name__)


@dataclass
class Targets:
    """The components a "Send to" button can fill."""

    tabs: gr.Tabs
    img2img: GenerationTab
    img2img_extras: Img2ImgExtras
    extras: ExtrasTab

    def outputs(self) -> list[Component]:
        """Every component ``updates`` may set (gradio needs them listed up front)."""
        i2i, x = self.img2img, self.img2img_extras
        listed = [self.tabs, x.mode_tabs, x.inpaint_controls, *i2i.fields.values(), i2i.subseed_row]
        listed += [self.extras.tabs, self.extras.fields["image"], self.extras.fields["extras_mode"]]
        return list(dict.fromkeys(listed))


def gallery_image(gallery: list[Any] | None, index: int | None) -> Image.Image | None:
    """The selected gallery item as a PIL image (items are ``(media, caption)``; media a path, array or PIL)."""
    if not gallery:
        return None
    item = gallery[index if index is not None and 0 <= index < len(gallery) else 0]
    media = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(media, Image.Image):
        return media
    if isinstance(media, np.ndarray):
        return Image.fromarray(media)
    with Image.open(Path(str(media))) as opened:
        opened.load()
        return opened.copy()


def updates(ctx: AppContext, targets: Targets, target: str, image: Image.Image | None, infotext: str | None) -> dict:
    """Updates that put ``image`` into ``target`` ("img2img", "inpaint" or "extras") and switch to that tab.

    For img2img and inpaint the parameters in ``infotext`` fill the img2img form too (as A1111's send-to does).
    """
    if image is None:
        gr.Warning("There is no image to send.")
        return {}
    image = image.convert("RGB")
    if target == "extras":
        e = targets.extras
        return {
            targets.tabs: gr.Tabs(selected="extras"),
            e.tabs: gr.Tabs(selected="single"),
            e.fields["image"]: image,
            e.fields["extras_mode"]: "single",
        }
    i2i, x = targets.img2img, targets.img2img_extras
    result: dict[Any, Any] = paste_updates(ctx, i2i, infotext) if infotext else {}
    if target == "inpaint":
        result[i2i.fields["inpaint_editor"]] = {"background": image, "layers": [], "composite": image}
    else:
        result[i2i.fields["init_image"]] = image
    result.update(
        {
            i2i.fields["img2img_mode"]: target,
            x.mode_tabs: gr.Tabs(selected=target),
            x.inpaint_controls: gr.update(visible=target == "inpaint"),
            targets.tabs: gr.Tabs(selected="img2img"),
        }
    )
    return result


def wire_gallery(ctx: AppContext, t: GenerationTab, targets: Targets) -> None:
    """The send-to buttons under a generation tab's gallery (selected image + its infotext)."""
    for target, button in t.send_buttons.items():

        def send(gallery: list[Any] | None, index: int, info: str, target: str = target) -> dict:
            image = gallery_image(gallery, index)
            return updates(ctx, targets, target, image, selected_infotext(info, index))

        button.click(
            send,
            inputs_kwargs={"gallery": t.gallery, "index": t.selected_index, "info": t.generation_info},
            outputs=targets.outputs(),
            api_visibility="private",
            show_progress="hidden",
        )


def wire_pnginfo(ctx: AppContext, p: PngInfoTab, targets: Targets) -> None:
    """PNG Info's send-to buttons (image + the parameters read from it)."""
    for target, button in p.send_buttons.items():

        def send(image: Image.Image | None, text: str, target: str = target) -> dict:
            return updates(ctx, targets, target, image, text)

        button.click(
            send,
            inputs_kwargs={"image": p.image, "text": p.generation_info},
            outputs=targets.outputs(),
            api_visibility="private",
            show_progress="hidden",
        )
