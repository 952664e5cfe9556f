"""The img2img tab: A1111's layout and ids (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload, Batch sub-tabs).

The pure conversions (editor value → mask, upload → mask, sub-tab → ``init_images``/``mask``, "Resize by" size) are
here; the Batch sub-tab's folder processing is in ``ui.img2img_batch``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.ui import extra_networks, refiner
from modules.ui.txt2img import GenerationTab, build_dimensions, build_output_column, build_settings_column, build_toprow

if TYPE_CHECKING:
    from modules.context import AppContext

logger = logging.getLogger(__name__)

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
# img2img scripts (the engine runs them: engine/scripts.py)
SCRIPTS = ("None", "Poor man's outpainting", "Outpainting mk2")
DIRECTIONS = ("left", "right", "up", "down")
# Sub-tab id → label, in A1111's order (the id is the ``img2img_mode`` value).
SUB_TABS = {
    "img2img": "img2img",
    "sketch": "Sketch",
    "inpaint": "Inpaint",
    "inpaint_sketch": "Inpaint sketch",
    "inpaint_upload": "Inpaint upload",
    "batch": "Batch",
}
INPAINT_MODES = frozenset({"inpaint", "inpaint_sketch", "inpaint_upload"})
# Editor-based sub-tabs: mode → form field holding the gr.ImageEditor value.
EDITOR_FIELDS = {"sketch": "sketch_editor", "inpaint": "inpaint_editor", "inpaint_sketch": "inpaint_sketch_editor"}


@dataclass
class Img2ImgExtras:
    """img2img-only components the wiring needs besides ``GenerationTab.fields``."""

    mode_tabs: gr.Tabs
    sub_tabs: dict[str, gr.Tab] = field(default_factory=dict)
    inpaint_controls: gr.Group | None = None
    resize_tabs: dict[str, gr.Tab] = field(default_factory=dict)
    script: gr.Dropdown | None = None
    script_controls: tuple[gr.Group, ...] = ()


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
        if layer is None:
            continue
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.Resampling.NEAREST)
        alpha |= np.asarray(layer.convert("RGBA"))[:, :, 3] > 0
    return Image.fromarray(alpha.astype(np.uint8) * 255, "L") if alpha.any() else None


def upload_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Mask of the Inpaint upload sub-tab as an "L" image of ``size`` (white = repaint, grey levels kept).

    RGBA uploads are laid on black first, so transparent pixels keep the original; RGB/L uploads use their brightness.
    """
    if mask.mode in ("RGBA", "LA", "P"):
        rgba = mask.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        mask = Image.alpha_composite(black, rgba)
    grey = mask.convert("L")
    return grey if grey.size == size else grey.resize(size, Image.Resampling.BILINEAR)


def _editor_inputs(mode: str, editor: Mapping[str, Any] | None) -> dict[str, Any]:
    """Init image (+ mask) from one of the ImageEditor sub-tabs."""
    editor = editor or {}
    background = editor.get("background")
    if background is None:
        raise gr.Error(f"Upload an image into the {SUB_TABS[mode]} canvas first.")
    # Sketch and Inpaint sketch start from the painted picture, Inpaint from the uploaded one.
    init = (background if mode == "inpaint" else editor.get("composite") or background).convert("RGB")
    if mode == "sketch":
        return {"init_images": (init,), "mask": None}
    mask = editor_mask(editor)
    if mask is None:
        raise gr.Error(f"Paint the area to repaint on the {SUB_TABS[mode]} canvas (the mask is empty).")
    return {"init_images": (init,), "mask": mask}


def init_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the tab's image widgets into ``init_images``/``mask`` request fields for the active sub-tab.

    Raises:
        gr.Error: When the active sub-tab has no image, or an inpaint sub-tab has no (or an empty) mask.
    """
    mode = values.get("img2img_mode") or "img2img"
    if mode in EDITOR_FIELDS:
        return _editor_inputs(mode, values.get(EDITOR_FIELDS[mode]))
    if mode == "inpaint_upload":
        base, mask = values.get("inpaint_upload_image"), values.get("inpaint_upload_mask")
        if base is None or mask is None:
            raise gr.Error("Inpaint upload needs both the image and the mask.")
        converted = upload_mask(mask, base.size)
        if converted.getextrema()[1] == 0:
            raise gr.Error("The uploaded mask is all black: nothing to repaint (white = repaint).")
        return {"init_images": (base.convert("RGB"),), "mask": converted}
    image = values.get("init_image")
    if image is None:
        raise gr.Error("Upload an image into the img2img box first.")
    return {"init_images": (image.convert("RGB"),), "mask": None}


def scaled_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Target size of "Resize by": the image size times ``scale``, rounded down to a multiple of 8 (at least 64).

    >>> scaled_size((512, 300), 1.5)
    (768, 448)
    """
    return tuple(max(64, int(side * float(scale)) // 8 * 8) for side in image_size)  # type: ignore[return-value]


def option_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values → request fields for the img2img-only options (no images): mask blur/mode, fill, area."""
    blur = int(values.get("mask_blur") or 0)
    fill = values.get("inpainting_fill")
    return {
        "mask_blur_x": blur,
        "mask_blur_y": blur,
        "inpainting_mask_invert": int(values.get("mask_mode") or 0),
        "inpainting_fill": 1 if fill is None else int(fill),
        "inpaint_full_res": bool(values.get("inpaint_area")),
        "inpaint_full_res_padding": int(values.get("inpaint_full_res_padding") or 0),
    }


def script_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Script dropdown → ``script_name``/``script_args`` (A1111's argument order for the outpainting script)."""
    name = values.get("script_name") or "None"
    if name == "None":
        return {}
    if name == SCRIPTS[2]:  # Outpainting mk2: (info, pixels, mask_blur, direction, noise_q, color_variation)
        mk2 = (
            None,
            int(values.get("mk2_pixels") or 128),
            int(values.get("mk2_mask_blur") or 0),
            list(values.get("mk2_direction") or ()),
            float(values.get("mk2_noise_q") or 0.0),
            float(values.get("mk2_color_variation") or 0.0),
        )
        return {"script_name": name, "script_args": mk2}
    args = (
        int(values.get("outpaint_pixels") or 128),
        int(values.get("outpaint_mask_blur") or 0),
        int(values.get("outpaint_fill") or 0),
        list(values.get("outpaint_direction") or ()),
    )
    return {"script_name": name, "script_args": args}


def request_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values → GenerationRequest field values for the img2img-only widgets (images, size, mask options)."""
    extra = {**init_inputs(values), **option_values(values), **script_values(values)}
    if values.get("resize_by") == "by":
        width, height = scaled_size(extra["init_images"][0].size, values.get("img2img_scale") or 1.0)
        extra.update(width=width, height=height)
    return extra


def _editor(label: str, elem_id: str, colour: str | None) -> gr.ImageEditor:
    """An ImageEditor; ``colour`` fixes the brush colour (inpaint masks), None lets the user pick (sketches)."""
    brush = gr.Brush(colors=[colour], color_mode="fixed") if colour else gr.Brush(color_mode="defaults")
    return gr.ImageEditor(label=label, type="pil", elem_id=elem_id, height=360, brush=brush, layers=False)


def _build_batch(t: GenerationTab) -> None:
    gr.Markdown("Process every image in a folder on the server. Output files never overwrite existing ones.")
    t.fields["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
    t.fields["batch_output_dir"] = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
    t.fields["batch_mask_dir"] = gr.Textbox(
        label="Inpaint batch mask directory (required for inpaint batch processing only)",
        elem_id="img2img_batch_inpaint_mask_dir",
    )
    t.fields["batch_png_info"] = gr.Checkbox(
        label="Append png info to prompts (take each image's PNG info parameters)",
        value=False,
        elem_id="img2img_batch_use_png_info",
    )


def _build_sources(t: GenerationTab) -> Img2ImgExtras:
    """The ``mode_img2img`` sub-tabs with their image widgets."""
    f = t.fields
    with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
        x = Img2ImgExtras(mode_tabs=mode_tabs)
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as x.sub_tabs["img2img"]:
            f["init_image"] = gr.Image(label="Image for img2img", type="pil", elem_id="img2img_image", height=360)
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as x.sub_tabs["sketch"]:
            f["sketch_editor"] = _editor("Image for img2img", "img2img_sketch", None)
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as x.sub_tabs["inpaint"]:
            f["inpaint_editor"] = _editor("Image for inpainting with mask", "img2maskimg", "#ffffff")
        with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as tab:
            x.sub_tabs["inpaint_sketch"] = tab
            f["inpaint_sketch_editor"] = _editor("Color sketch inpainting", "inpaint_sketch", None)
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab:
            x.sub_tabs["inpaint_upload"] = tab
            f["inpaint_upload_image"] = gr.Image(label="Image", type="pil", elem_id="img_inpaint_base", height=300)
            f["inpaint_upload_mask"] = gr.Image(
                label="Mask", type="pil", image_mode=None, elem_id="img_inpaint_mask", height=300
            )
        with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as x.sub_tabs["batch"]:
            _build_batch(t)
    f["img2img_mode"] = gr.State("img2img")
    return x


def _build_inpaint_controls(t: GenerationTab) -> gr.Group:
    """Mask blur/mode, masked content and inpaint area (shown on the inpaint sub-tabs only)."""
    f = t.fields
    with gr.Group(visible=False, elem_id="img2img_inpaint_controls") as group:
        with gr.Row():
            f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
            f["mask_mode"] = gr.Radio(
                label="Mask mode",
                choices=list(MASK_MODES),
                value=MASK_MODES[0],
                type="index",
                elem_id="img2img_mask_mode",
            )
        f["inpainting_fill"] = gr.Radio(
            label="Masked content",
            choices=list(MASKED_CONTENT),
            value="original",
            type="index",
            elem_id="img2img_inpainting_fill",
        )
        with gr.Row():
            f["inpaint_area"] = gr.Radio(
                label="Inpaint area",
                choices=list(INPAINT_AREAS),
                value=INPAINT_AREAS[0],
                type="index",
                elem_id="img2img_inpaint_full_res",
            )
            f["inpaint_full_res_padding"] = gr.Slider(
                0,
                256,
                value=32,
                step=4,
                label="Only masked padding, pixels",
                elem_id="img2img_inpaint_full_res_padding",
            )
    return group


def _build_script(t: GenerationTab) -> tuple[gr.Dropdown, tuple[gr.Group, ...]]:
    """The Script dropdown and each script's controls (shown when it is selected), in ``SCRIPTS[1:]`` order."""
    f = t.fields
    f["script_name"] = gr.Dropdown(label="Script", choices=list(SCRIPTS), value=SCRIPTS[0], elem_id="script_list")
    with gr.Group(visible=False, elem_id="img2img_script_outpainting") as group:
        f["outpaint_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id="outpaint_px")
        f["outpaint_mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="outpaint_blur")
        f["outpaint_fill"] = gr.Radio(
            label="Masked content", choices=list(MASKED_CONTENT), value="fill", type="index", elem_id="outpaint_fill"
        )
        f["outpaint_direction"] = gr.CheckboxGroup(
            label="Outpainting direction", choices=list(DIRECTIONS), value=list(DIRECTIONS), elem_id="outpaint_dir"
        )
    with gr.Group(visible=False, elem_id="img2img_script_outpainting_mk2") as mk2:
        gr.Markdown("Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8")
        f["mk2_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id="mk2_px")
        f["mk2_mask_blur"] = gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id="mk2_blur")
        f["mk2_direction"] = gr.CheckboxGroup(
            label="Outpainting direction", choices=list(DIRECTIONS), value=list(DIRECTIONS), elem_id="mk2_dir"
        )
        f["mk2_noise_q"] = gr.Slider(
            0.0, 4.0, value=1.0, step=0.01, label="Fall-off exponent (lower=higher detail)", elem_id="mk2_noise_q"
        )
        f["mk2_color_variation"] = gr.Slider(
            0.0, 1.0, value=0.05, step=0.01, label="Color variation", elem_id="mk2_color_variation"
        )
    return f["script_name"], (group, mk2)


def _resize_dimensions(x: Img2ImgExtras) -> Any:
    """A ``build_settings_column`` dimensions hook: "Resize to" (width/height) and "Resize by" (scale) tabs."""

    def build(t: GenerationTab) -> None:
        with gr.Tabs(elem_id="img2img_tabs_resize"):
            with gr.Tab("Resize to", id="to", elem_id="img2img_tab_resize_to") as x.resize_tabs["to"]:
                build_dimensions(t)
            with gr.Tab("Resize by", id="by", elem_id="img2img_tab_resize_by") as x.resize_tabs["by"]:
                t.fields["img2img_scale"] = gr.Slider(
                    0.05, 4.0, value=1.0, step=0.05, label="Scale", elem_id="img2img_scale"
                )
        t.fields["resize_by"] = gr.State("to")

    return build


def build_tab(ctx: AppContext) -> tuple[GenerationTab, Img2ImgExtras]:
    """Lay out the img2img tab (call inside its ``gr.Tab``); events are wired by ``ui.generation`` and ``wire``."""
    t = GenerationTab(tabname="img2img")
    build_toprow(ctx, t)
    with gr.Tabs(elem_id="img2img_extra_tabs"):
        with (
            gr.Tab("Generation", id="img2img_generation_tab", elem_id="img2img_generation_tab"),
            gr.Row(equal_height=False, elem_id="img2img_extra_row"),
        ):
            with gr.Column(scale=1, elem_id="img2img_settings"):
                x = _build_sources(t)
                t.fields["resize_mode"] = gr.Radio(
                    label="Resize mode",
                    choices=list(RESIZE_MODES),
                    value=RESIZE_MODES[0],
                    type="index",
                    elem_id="resize_mode",
                )
                x.inpaint_controls = _build_inpaint_controls(t)
                build_settings_column(ctx, t, dimensions=_resize_dimensions(x))
                t.fields["denoising_strength"] = gr.Slider(
                    0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
                )
                t.fields["image_cfg_scale"] = gr.Slider(
                    0.0,
                    3.0,
                    value=1.5,
                    step=0.05,
                    label="Image CFG Scale (instruct-pix2pix models only)",
                    elem_id="img2img_image_cfg_scale",
                )
                refiner.build(ctx, t)
                x.script, x.script_controls = _build_script(t)
            with gr.Column(scale=1, elem_id="img2img_results"):
                build_output_column(t)
        t.networks = extra_networks.build_tabs(ctx, t)
    t.extra_values = request_values
    return t, x


def wire(t: GenerationTab, x: Img2ImgExtras) -> None:
    """Sub-tab selection sets ``img2img_mode`` and shows the inpaint controls; resize tabs set ``resize_by``."""
    mode, controls = t.fields["img2img_mode"], x.inpaint_controls
    for mode_id, tab in x.sub_tabs.items():
        tab.select(
            lambda m=mode_id: (m, gr.update(visible=m in INPAINT_MODES)),
            outputs=[mode, controls],
            queue=False,
            api_visibility="private",
        )
    for how, tab in x.resize_tabs.items():
        tab.select(lambda h=how: h, outputs=t.fields["resize_by"], queue=False, api_visibility="private")
    if x.script is not None and x.script_controls:
        x.script.change(
            lambda name: tuple(gr.update(visible=name == title) for title in SCRIPTS[1:]),
            inputs=x.script,
            outputs=list(x.script_controls),
            queue=False,
            api_visibility="private",
        )
