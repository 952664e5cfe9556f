"""The Extras tab: upscale a single image, a batch of files or a folder with upscaler 1 and (blended) upscaler 2.

The work is done by the context's extras facade, ``ctx.run_extras(image, **options) -> PIL.Image`` where
``options`` uses the A1111 API names (``resize_mode`` 0 = scale by / 1 = scale to, ``upscaling_resize``,
``upscaling_resize_w``, ``upscaling_resize_h``, ``upscaling_crop``, ``upscaler_1``, ``upscaler_2``,
``extras_upscaler_2_visibility``) plus ``save`` (the context saves to outputs/extras-images when true).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.errors import WebuiError

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext

logger = logging.getLogger(__name__)

MODES = {"single": "Single Image", "batch": "Batch Process", "directory": "Batch from Directory"}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


@dataclass
class ExtrasTab:
    """Components of the Extras tab; ``fields`` is keyed by handler argument name."""

    fields: dict[str, Component] = field(default_factory=dict)
    mode_tabs: dict[str, gr.Tab] = field(default_factory=dict)
    scale_tabs: dict[int, gr.Tab] = field(default_factory=dict)
    tabs: gr.Tabs | None = None
    generate: gr.Button | None = None
    gallery: gr.Gallery | None = None
    html_info: gr.HTML | None = None


def upscaler_choices(ctx: AppContext) -> list[str]:
    """Image upscalers for Extras: "None" first, then the built-ins and model files (no latent modes)."""
    image_upscalers = [n for n in ctx.upscaler_list() if not n.startswith("Latent") and n != "None"]
    return ["None", *image_upscalers]


def extras_options(values: dict[str, Any]) -> dict[str, Any]:
    """Form values → the facade's options (A1111 API names)."""
    return {
        "resize_mode": int(values.get("resize_mode") or 0),
        "upscaling_resize": float(values.get("upscaling_resize") or 1.0),
        "upscaling_resize_w": int(values.get("upscaling_resize_w") or 0),
        "upscaling_resize_h": int(values.get("upscaling_resize_h") or 0),
        "upscaling_crop": bool(values.get("upscaling_crop")),
        "upscaler_1": values.get("upscaler_1") or "None",
        "upscaler_2": values.get("upscaler_2") or "None",
        "extras_upscaler_2_visibility": float(values.get("extras_upscaler_2_visibility") or 0.0),
    }


def _batch_files(files: Iterable[Any] | None) -> list[Path]:
    paths = [Path(getattr(f, "name", f)) for f in files or ()]
    if not paths:
        raise gr.Error("Batch Process: upload one or more images first.")
    return paths


def _directory_files(folder: str | None) -> list[Path]:
    if not folder or not str(folder).strip():
        raise gr.Error("Input directory: enter a folder path.")
    path = Path(str(folder).strip()).expanduser()
    if not path.is_dir():
        raise gr.Error(f"Input directory {path} does not exist or is not a folder.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise gr.Error(f"Input directory {path} holds no images.")
    return files


def _free_path(folder: Path, stem: str) -> Path:
    path, n = folder / f"{stem}.png", 0
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


def _process(ctx: AppContext, image: Image.Image, options: dict[str, Any], save: bool) -> Image.Image:
    try:
        return ctx.run_extras(image, save=save, **options)
    except WebuiError as exc:
        raise gr.Error(str(exc), title="Extras failed") from exc


def run(ctx: AppContext, values: dict[str, Any]) -> tuple[list[Image.Image], str]:
    """Process the active source (single image, uploaded files or a folder); returns (results, info HTML)."""
    mode, options = values.get("extras_mode") or "single", extras_options(values)
    if mode == "single":
        image = values.get("image")
        if image is None:
            raise gr.Error("Upload an image into the Source box first.")
        result = _process(ctx, image, options, save=True)
        return [result], f"<p>{image.width}x{image.height} → {result.width}x{result.height}</p>"
    paths = _batch_files(values.get("image_batch")) if mode == "batch" else _directory_files(values.get("input_dir"))
    out_text = str(values.get("output_dir") or "").strip()
    out_dir = Path(out_text).expanduser() if mode == "directory" and out_text else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Image.Image] = []
    for path in paths:
        with Image.open(path) as opened:
            result = _process(ctx, opened.convert("RGB"), options, save=out_dir is None)
        if out_dir is not None:
            result.save(_free_path(out_dir, path.stem))
        results.append(result)
    where = f" into {out_dir}" if out_dir is not None else ""
    shown = results if mode != "directory" or values.get("show_results", True) else []
    return shown, f"<p>Processed {len(results)} image(s){where}.</p>"


def _build_sources(x: ExtrasTab) -> None:
    f = x.fields
    with gr.Tabs(elem_id="mode_extras") as x.tabs:
        with gr.Tab(MODES["single"], id="single", elem_id="extras_single_tab") as x.mode_tabs["single"]:
            f["image"] = gr.Image(label="Source", type="pil", elem_id="extras_image", height=360)
        with gr.Tab(MODES["batch"], id="batch", elem_id="extras_batch_process_tab") as x.mode_tabs["batch"]:
            f["image_batch"] = gr.File(label="Batch Process", file_count="multiple", elem_id="extras_image_batch")
        with gr.Tab(MODES["directory"], id="directory", elem_id="extras_batch_directory_tab") as tab:
            x.mode_tabs["directory"] = tab
            f["input_dir"] = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
            f["output_dir"] = gr.Textbox(
                label="Output directory (empty: outputs/extras-images)", elem_id="extras_batch_output_dir"
            )
            f["show_results"] = gr.Checkbox(
                label="Show result images", value=True, elem_id="extras_show_extras_results"
            )
    f["extras_mode"] = gr.State("single")


def _build_upscale(ctx: AppContext, x: ExtrasTab) -> None:
    f = x.fields
    with gr.Tabs(elem_id="extras_resize_mode"):
        with gr.Tab("Scale by", id="by", elem_id="extras_scale_by_tab") as x.scale_tabs[0]:
            f["upscaling_resize"] = gr.Slider(
                1.0, 8.0, value=4.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize"
            )
        with gr.Tab("Scale to", id="to", elem_id="extras_scale_to_tab") as x.scale_tabs[1], gr.Row():
            f["upscaling_resize_w"] = gr.Slider(
                64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w"
            )
            f["upscaling_resize_h"] = gr.Slider(
                64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h"
            )
            f["upscaling_crop"] = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
    f["resize_mode"] = gr.State(0)
    choices = upscaler_choices(ctx)
    with gr.Row():
        f["upscaler_1"] = gr.Dropdown(
            label="Upscaler 1", choices=choices, value=choices[0], elem_id="extras_upscaler_1"
        )
    with gr.Row():
        f["upscaler_2"] = gr.Dropdown(
            label="Upscaler 2", choices=choices, value=choices[0], elem_id="extras_upscaler_2"
        )
        f["extras_upscaler_2_visibility"] = gr.Slider(
            0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility"
        )


def build_tab(ctx: AppContext) -> ExtrasTab:
    """Lay out the Extras tab (call inside its ``gr.Tab``)."""
    x = ExtrasTab()
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            _build_sources(x)
            x.generate = gr.Button("Generate", elem_id="extras_generate", variant="primary")
            _build_upscale(ctx, x)
        with gr.Column(variant="compact"):
            x.gallery = gr.Gallery(
                label="Result", show_label=False, columns=4, elem_id="extras_gallery", height=512, interactive=False
            )
            x.html_info = gr.HTML("", elem_id="html_info_extras")
    return x


def wire(ctx: AppContext, x: ExtrasTab) -> None:
    """Generate runs the active source through the facade; the source and scale tabs set their State."""

    def generate(**values: Any) -> tuple[list[Image.Image], str]:
        return run(ctx, values)

    x.generate.click(
        generate,
        inputs_kwargs=dict(x.fields),
        outputs=[x.gallery, x.html_info],
        api_name="extras",
        concurrency_id="generate",
    )
    for mode, tab in x.mode_tabs.items():
        tab.select(lambda m=mode: m, outputs=x.fields["extras_mode"], queue=False, api_visibility="private")
    for how, tab in x.scale_tabs.items():
        tab.select(lambda h=how: h, outputs=x.fields["resize_mode"], queue=False, api_visibility="private")
