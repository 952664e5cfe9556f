"""The img2img tab: A1111's layout and ids for the img2img and Inpaint sub-tabs, on the shared generation plumbing.

Sketch, Inpaint sketch, Inpaint upload and Batch sub-tabs, and masked-content modes other than "original" are not
here yet (see README).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.ui.txt2img import GenerationTab, build_output_column, build_settings_column, build_toprow

if TYPE_CHECKING:
    from modules.context import AppContext

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
SUB_TABS = ("img2img", "inpaint")


def editor_mask(value: Mapping[str, Any] | None) -> Image.Image | None:
    """Mask painted in a gr.ImageEditor: union of the layers' alpha > 0, white = repaint; None if nothing painted.

    >>> layer = Image.new("RGBA", (4, 4)); layer.putpixel((1, 1), (255, 255, 255, 255))
    >>> editor_mask({"background": Image.new("RGB", (4, 4)), "layers": [layer]}).getpixel((1, 1))
    255
    """
    if not value or value.get("background") is None:
        return None
    background = value["background"]
    alpha = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or ():
        if layer is not None and layer.mode == "RGBA" and layer.size == background.size:
            alpha |= np.asarray(layer)[:, :, 3] > 0
    return Image.fromarray(alpha.astype(np.uint8) * 255, "L") if alpha.any() else None


def init_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the tab's image widgets into ``init_images``/``mask`` request fields for the active sub-tab.

    Raises:
        gr.Error: When the active sub-tab has no image, or the Inpaint sub-tab has no painted mask.
    """
    mode = values.get("img2img_mode") or "img2img"
    if mode == "inpaint":
        editor = values.get("inpaint_editor") or {}
        if editor.get("background") is None:
            raise gr.Error("Upload an image into the Inpaint canvas first.")
        mask = editor_mask(editor)
        if mask is None:
            raise gr.Error("Paint the area to repaint on the Inpaint canvas (the mask is empty).")
        return {"init_images": (editor["background"].convert("RGB"),), "mask": mask}
    image = values.get("init_image")
    if image is None:
        raise gr.Error("Upload an image into the img2img box first.")
    return {"init_images": (image.convert("RGB"),), "mask": None}


def build_tab(ctx: AppContext) -> GenerationTab:
    """Lay out the img2img tab (call inside its ``gr.Tab``); events are wired by ``ui.generation``."""
    t = GenerationTab(tabname="img2img")
    build_toprow(t)
    with gr.Row(equal_height=False, elem_id="img2img_extra_row"):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            mode = gr.State("img2img")
            with gr.Tabs(elem_id="mode_img2img"):
                with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab_i2i:
                    t.fields["init_image"] = gr.Image(
                        label="Image for img2img", type="pil", elem_id="img2img_image", height=360
                    )
                with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab_inpaint:
                    t.fields["inpaint_editor"] = gr.ImageEditor(
                        label="Image for inpainting with mask",
                        type="pil",
                        elem_id="img2maskimg",
                        height=360,
                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                        layers=False,
                    )
            tab_i2i.select(lambda: "img2img", outputs=mode, queue=False, api_visibility="private")
            tab_inpaint.select(lambda: "inpaint", outputs=mode, queue=False, api_visibility="private")
            t.fields["img2img_mode"] = mode
            t.fields["resize_mode"] = gr.Radio(
                label="Resize mode",
                choices=list(RESIZE_MODES),
                value=RESIZE_MODES[0],
                type="index",
                elem_id="resize_mode",
            )
            build_settings_column(ctx, t)
            t.fields["denoising_strength"] = gr.Slider(
                0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
            )
            with gr.Row(elem_id="img2img_inpaint_controls"):
                t.fields["mask_blur"] = gr.Slider(
                    0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur"
                )
                t.fields["mask_mode"] = gr.Radio(
                    label="Mask mode",
                    choices=list(MASK_MODES),
                    value=MASK_MODES[0],
                    type="index",
                    elem_id="img2img_mask_mode",
                )
            with gr.Row(elem_id="img2img_inpaint_area_row"):
                t.fields["inpaint_area"] = gr.Radio(
                    label="Inpaint area",
                    choices=list(INPAINT_AREAS),
                    value=INPAINT_AREAS[0],
                    type="index",
                    elem_id="img2img_inpaint_full_res",
                )
                t.fields["inpaint_full_res_padding"] = gr.Slider(
                    0,
                    256,
                    value=32,
                    step=4,
                    label="Only masked padding, pixels",
                    elem_id="img2img_inpaint_full_res_padding",
                )
        with gr.Column(scale=1, elem_id="img2img_results"):
            build_output_column(t)
    return t


def request_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values → GenerationRequest field values for the img2img-only widgets (images, mask options)."""
    blur = int(values.get("mask_blur") or 0)
    extra = {
        "mask_blur_x": blur,
        "mask_blur_y": blur,
        "inpainting_mask_invert": int(values.get("mask_mode") or 0),
        "inpaint_full_res": bool(values.get("inpaint_area")),
        "inpaint_full_res_padding": int(values.get("inpaint_full_res_padding") or 0),
    }
    return {**init_inputs(values), **extra}
