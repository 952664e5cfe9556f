"""The txt2img "Hires. fix" accordion: A1111's controls and ids, and the "Upscale from WxH to W2xH2" line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gradio as gr

from modules.ui.quicksettings import checkpoint_titles

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.ui.txt2img import GenerationTab

logger = logging.getLogger(__name__)


def upscaler_choices(ctx: AppContext) -> list[str]:
    """Hires upscaler names: the latent modes, then the image upscalers (without "None")."""
    return [n for n in ctx.upscaler_list() if n != "None"]


def target_size(width: float, height: float, scale: float, resize_x: float, resize_y: float) -> tuple[int, int]:
    """Size of the hires pass as A1111 computes it: ``hr_resize_x/y`` when set (0 = keep the aspect), else scale.

    >>> target_size(512, 512, 2, 0, 0)
    (1024, 1024)
    >>> target_size(512, 768, 2, 1024, 0)
    (1024, 1536)
    >>> target_size(512, 512, 2, 1024, 768)
    (1024, 768)
    """
    width, height = int(width or 0), int(height or 0)
    resize_x, resize_y = int(resize_x or 0), int(resize_y or 0)
    if not resize_x and not resize_y:
        return int(width * float(scale or 1)), int(height * float(scale or 1))
    if not resize_y:
        return resize_x, resize_x * height // max(width, 1)
    if not resize_x:
        return resize_y * width // max(height, 1), resize_y
    return resize_x, resize_y


def size_info(width: float, height: float, scale: float, resize_x: float, resize_y: float) -> str:
    """The info line under the accordion's title, e.g. ``Upscale from 512x512 to 1024x1024``."""
    new_w, new_h = target_size(width, height, scale, resize_x, resize_y)
    return f'<span class="gr-text-input">from <b>{int(width)}x{int(height)}</b> to <b>{new_w}x{new_h}</b></span>'


def build(ctx: AppContext, t: GenerationTab) -> gr.HTML:
    """Lay out the accordion (call inside the settings column); returns the size-info HTML, wired by ``wire``."""
    tab = t.tabname
    choices = upscaler_choices(ctx)
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hr") as accordion:
        with gr.Row(elem_id=f"{tab}_hires_fix_row0"):
            t.fields["enable_hr"] = gr.Checkbox(label="Enable", value=False, elem_id=f"{tab}_enable_hr", scale=0)
            info = gr.HTML(size_info(512, 512, 2.0, 0, 0), elem_id=f"{tab}_hr_info")
        with gr.Row(elem_id=f"{tab}_hires_fix_row1"):
            t.fields["hr_upscaler"] = gr.Dropdown(
                label="Upscaler", choices=choices, value=choices[0], elem_id=f"{tab}_hr_upscaler"
            )
            t.fields["hr_second_pass_steps"] = gr.Slider(
                0, 150, value=0, step=1, label="Hires steps", elem_id=f"{tab}_hires_steps"
            )
            t.fields["denoising_strength"] = gr.Slider(
                0.0, 1.0, value=0.7, step=0.01, label="Denoising strength", elem_id=f"{tab}_denoising_strength"
            )
        with gr.Row(elem_id=f"{tab}_hires_fix_row2"):
            t.fields["hr_scale"] = gr.Slider(
                1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id=f"{tab}_hr_scale"
            )
            t.fields["hr_resize_x"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize width to", elem_id=f"{tab}_hr_resize_x"
            )
            t.fields["hr_resize_y"] = gr.Slider(
                0, 2048, value=0, step=8, label="Resize height to", elem_id=f"{tab}_hr_resize_y"
            )
        with gr.Row(elem_id=f"{tab}_hires_fix_row3"):
            t.fields["hr_checkpoint_name"] = gr.Dropdown(
                label="Checkpoint",
                choices=["Use same checkpoint", *checkpoint_titles(ctx)],
                value="Use same checkpoint",
                elem_id="hr_checkpoint",
            )
            t.fields["hr_sampler_name"] = gr.Dropdown(
                label="Hires sampling method",
                choices=["Use same sampler", *ctx.sampler_names()],
                value="Use same sampler",
                elem_id="hr_sampler",
            )
            t.fields["hr_scheduler"] = gr.Dropdown(
                label="Hires schedule type",
                choices=["Use same scheduler", *ctx.schedule_labels()],
                value="Use same scheduler",
                elem_id="hr_scheduler",
            )
        with gr.Row(elem_id=f"{tab}_hires_fix_row4"):
            t.fields["hr_prompt"] = gr.Textbox(
                label="Hires prompt",
                value="",
                lines=3,
                placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt as in first pass.",
                elem_id="hires_prompt",
            )
            t.fields["hr_negative_prompt"] = gr.Textbox(
                label="Hires negative prompt",
                value="",
                lines=3,
                placeholder="Negative prompt for hires fix pass.\nLeave empty to use the same as in first pass.",
                elem_id="hires_neg_prompt",
            )
    t.hires_accordion = accordion
    return info


def wire(t: GenerationTab, info: gr.HTML) -> None:
    """Opening the accordion enables hires fix, closing disables it (A1111's checkbox accordion); update the info."""
    enable = t.fields["enable_hr"]
    t.hires_accordion.expand(lambda: True, outputs=enable, queue=False, api_visibility="private")
    t.hires_accordion.collapse(lambda: False, outputs=enable, queue=False, api_visibility="private")
    inputs = {n: t.fields[n] for n in ("width", "height", "hr_scale", "hr_resize_x", "hr_resize_y")}

    def show(width: float, height: float, hr_scale: float, hr_resize_x: float, hr_resize_y: float) -> str:
        return size_info(width, height, hr_scale, hr_resize_x, hr_resize_y)

    for component in inputs.values():
        component.change(
            show, inputs_kwargs=inputs, outputs=info, queue=False, show_progress="hidden", api_visibility="private"
        )
