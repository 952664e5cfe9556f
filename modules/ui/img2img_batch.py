"""The img2img Batch sub-tab: every image of an input folder through ``ctx.submit``, saved to an output folder.

Optional mask folder (a mask with the same file stem turns that image into an inpaint job) and "PNG info" (each
image's own parameters replace the form's). Existing output files are never overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.errors import WebuiError
from modules.ui.forms import paste_values, to_request
from modules.ui.generation import watch
from modules.ui.img2img import option_values, scaled_size, upload_mask
from modules.ui.views import infotext_html

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext
    from modules.engine.types import GenerationRequest
    from modules.ui.txt2img import GenerationTab

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def list_images(folder: str | None, what: str) -> list[Path]:
    """Image files of ``folder`` sorted by name.

    Raises:
        gr.Error: When the path is empty, not a folder, or holds no images.
    """
    if not folder or not str(folder).strip():
        raise gr.Error(f"{what}: enter a folder path.")
    path = Path(str(folder).strip()).expanduser()
    if not path.is_dir():
        raise gr.Error(f"{what} {path} does not exist or is not a folder.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise gr.Error(f"{what} {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return files


def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/stem.suffix``, or ``stem-1``, ``stem-2``… when that file already exists (never overwrite)."""
    path, n = folder / f"{stem}{suffix}", 0
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _mask_for(masks: Mapping[str, Path], image: Path, size: tuple[int, int]) -> Image.Image | None:
    found = masks.get(image.stem)
    if found is None:
        return None
    with Image.open(found) as mask:
        return upload_mask(mask, size)


def _form_values(ctx: AppContext, values: Mapping[str, Any], image: Image.Image) -> dict[str, Any]:
    """The form's values, with the image's own PNG-info parameters on top when "PNG info" is on."""
    merged = dict(values)
    if values.get("batch_png_info"):
        infotext, _ = ctx.read_image_info(image)
        if infotext:
            choices = {"sampler_name": ctx.sampler_names(), "scheduler": ctx.schedule_labels()}
            merged.update(paste_values(ctx.infotext_fields(infotext), ctx.settings, choices))
    return merged


def build_request(
    ctx: AppContext, values: Mapping[str, Any], path: Path, masks: Mapping[str, Path]
) -> GenerationRequest:
    """The request for one batch image (its mask, if any, makes it an inpaint request)."""
    with Image.open(path) as opened:
        opened.load()
        merged = _form_values(ctx, values, opened)
        image = opened.convert("RGB")
    request = to_request(merged, samplers=ctx.sampler_names(), schedulers=ctx.schedule_labels())
    extra: dict[str, Any] = {"init_images": (image,), "mask": _mask_for(masks, path, image.size)}
    if extra["mask"] is not None:
        extra.update(option_values(values))
    if values.get("resize_by") == "by":
        extra["width"], extra["height"] = scaled_size(image.size, values.get("img2img_scale") or 1.0)
    return dataclasses.replace(request, **extra)


def _folders(values: Mapping[str, Any]) -> tuple[list[Path], Path, dict[str, Path]]:
    files = list_images(values.get("batch_input_dir"), "Input directory")
    out_text = str(values.get("batch_output_dir") or "").strip()
    if not out_text:
        raise gr.Error("Output directory: enter a folder path.")
    out_dir = Path(out_text).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise gr.Error(f"Output directory {out_dir} is a file, not a folder.")
    masks: dict[str, Path] = {}
    if str(values.get("batch_mask_dir") or "").strip():
        masks = {p.stem: p for p in list_images(values.get("batch_mask_dir"), "Mask directory")}
    return files, out_dir, masks


def run_batch(ctx: AppContext, t: GenerationTab, values: dict[str, Any]) -> Iterator[dict[Component, Any]]:
    """Process the input folder image by image, streaming progress; show the results when done."""
    files, out_dir, masks = _folders(values)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown: list[Image.Image] = []
    infotexts: list[str] = []
    for number, path in enumerate(files, 1):
        try:
            job = ctx.submit(build_request(ctx, values, path, masks), save=False)
            for html in watch(ctx, job):
                yield {t.progress: f"<div>Batch: image {number} of {len(files)} ({path.name})</div>{html}"}
            output = job.wait()
        except WebuiError as exc:
            yield {t.progress: ""}
            raise gr.Error(f"{path.name}: {exc}", title="Batch failed") from exc
        for image, text in zip(output.result.images, output.result.infotexts, strict=False):
            dest = free_path(out_dir, path.stem)
            dest.write_bytes(ctx.encode_image(image, "png", text))
            image.info["parameters"] = text
            shown.append(image)
            infotexts.append(text)
        if output.result.interrupted:
            break
    logger.info("img2img batch: %d image(s) from %d file(s) into %s", len(shown), len(files), out_dir)
    summary = f"Processed {len(files)} image(s); {len(shown)} result(s) saved in {out_dir}."
    yield {
        t.progress: "",
        t.gallery: shown,
        t.html_info: infotext_html(infotexts[0] if infotexts else "", None, summary),
        t.generation_info: "",
        t.selected_index: 0,
    }


def runner(ctx: AppContext, t: GenerationTab, values: dict[str, Any]) -> Iterator[dict[Component, Any]] | None:
    """``GenerationTab.runner`` for img2img: the Batch sub-tab runs ``run_batch``; other sub-tabs generate as usual."""
    return run_batch(ctx, t, values) if values.get("img2img_mode") == "batch" else None
