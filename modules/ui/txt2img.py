"""The txt2img tab: A1111's layout and element ids (prompt row, sampler/size/batch/CFG/seed panel, output gallery)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.engine.types import GenerationRequest
from modules.ui import extra_networks, hires, refiner, styles_editor
from modules.ui.forms import NUMERIC_FIELDS
from modules.ui.views import token_counter_html

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext

_DEFAULTS = GenerationRequest()
# "Send to" targets under a gallery (and on PNG Info): A1111's id suffix → button label.
SEND_TARGETS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint", "extras": "Send to extras"}


@dataclass
class GenerationTab:
    """Components of a generation tab. ``fields`` is keyed by GenerationRequest field name (+ ``subseed_show``)."""

    tabname: str
    fields: dict[str, Component] = field(default_factory=dict)
    token_counter: gr.HTML | None = None
    negative_token_counter: gr.HTML | None = None
    generate: gr.Button | None = None
    interrupt: gr.Button | None = None
    skip: gr.Button | None = None
    paste: gr.Button | None = None
    clear_prompt: gr.Button | None = None
    random_seed: gr.Button | None = None
    reuse_seed: gr.Button | None = None
    random_subseed: gr.Button | None = None
    reuse_subseed: gr.Button | None = None
    swap_size: gr.Button | None = None
    subseed_row: gr.Row | None = None
    progress: gr.HTML | None = None
    gallery: gr.Gallery | None = None
    html_info: gr.HTML | None = None
    generation_info: gr.Textbox | None = None
    selected_index: gr.State | None = None
    hires_accordion: gr.Accordion | None = None
    hires_info: gr.HTML | None = None
    send_buttons: dict[str, gr.Button] = field(default_factory=dict)  # target tab id → "Send to" button
    networks: list[extra_networks.NetworkCards] = field(default_factory=list)  # tabs beside "Generation"
    styles_editor: styles_editor.StyleEditor | None = None
    extra_values: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # tab-specific request fields
    # Tab-specific generation (img2img Batch): returns the update stream, or None to generate as usual.
    runner: Callable[[AppContext, GenerationTab, dict[str, Any]], Iterator[dict[Component, Any]] | None] | None = None


def _slider(tab: str, name: str, default: float, step: float) -> gr.Slider:
    suffix, label, low, high = NUMERIC_FIELDS[name]
    return gr.Slider(minimum=low, maximum=high, step=step, value=default, label=label, elem_id=f"{tab}_{suffix}")


def _tool(symbol: str, elem_id: str) -> gr.Button:
    """A small square icon button (its hover title is set by the page script, ``ui.launch.TOOLTIPS``)."""
    return gr.Button(symbol, elem_id=elem_id, elem_classes=["tool-button"], scale=0, min_width=40)


def build_toprow(ctx: AppContext, t: GenerationTab) -> None:
    """Prompt and negative prompt (with token counters) beside Interrupt/Skip/Generate and the tool buttons."""
    tab = t.tabname
    with gr.Row(elem_id=f"{tab}_toprow"):
        with gr.Column(scale=6, elem_id=f"{tab}_prompt_container"):
            with gr.Group(elem_classes=["prompt-box"]):
                t.fields["prompt"] = gr.Textbox(
                    label="Prompt",
                    show_label=False,
                    lines=3,
                    max_lines=20,
                    elem_id=f"{tab}_prompt",
                    placeholder="Prompt\n(Press Ctrl+Enter to generate, Alt+Enter to skip, Esc to interrupt)",
                )
                t.token_counter = gr.HTML(token_counter_html(0, 75), elem_id=f"{tab}_token_counter")
            with gr.Group(elem_classes=["prompt-box"]):
                t.fields["negative_prompt"] = gr.Textbox(
                    label="Negative prompt",
                    show_label=False,
                    lines=3,
                    max_lines=20,
                    elem_id=f"{tab}_neg_prompt",
                    placeholder="Negative prompt\n(Press Ctrl+Enter to generate, Alt+Enter to skip, Esc to interrupt)",
                )
                t.negative_token_counter = gr.HTML(token_counter_html(0, 75), elem_id=f"{tab}_negative_token_counter")
        with gr.Column(scale=2, elem_id=f"{tab}_actions_column"):
            with gr.Row():
                t.interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", variant="secondary")
                t.skip = gr.Button("Skip", elem_id=f"{tab}_skip", variant="secondary")
            t.generate = gr.Button("Generate", elem_id=f"{tab}_generate", variant="primary")
            with gr.Row(elem_id=f"{tab}_tools"):
                t.paste = _tool("↙️", f"{tab}_paste")
                t.clear_prompt = _tool("🗑️", f"{tab}_clear_prompt")
                t.styles_editor = styles_editor.build_buttons(tab, _tool)
            t.fields["styles"] = gr.Dropdown(
                label="Styles",
                choices=[s.name for s in ctx.style_list()],
                value=[],
                multiselect=True,
                elem_id=f"{tab}_styles",
                show_label=False,
                container=False,
                allow_custom_value=False,
            )
    styles_editor.build_dialog(ctx, tab, t.styles_editor)


def build_settings_column(
    ctx: AppContext, t: GenerationTab, dimensions: Callable[[GenerationTab], None] | None = None
) -> None:
    """Sampler, size, batch, CFG and seed controls; ``dimensions`` may wrap ``build_dimensions`` (img2img tabs)."""
    tab = t.tabname
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        samplers = ctx.sampler_names()
        schedules = ctx.schedule_labels()
        t.fields["sampler_name"] = gr.Dropdown(
            label="Sampling method",
            choices=samplers,
            elem_id=f"{tab}_sampling",
            value=_DEFAULTS.sampler_name if _DEFAULTS.sampler_name in samplers else (samplers or [None])[0],
        )
        t.fields["scheduler"] = gr.Dropdown(
            label="Schedule type",
            choices=schedules,
            elem_id=f"{tab}_scheduler",
            value=_DEFAULTS.scheduler if _DEFAULTS.scheduler in schedules else (schedules or [None])[0],
        )
    t.fields["steps"] = _slider(tab, "steps", _DEFAULTS.steps, 1)
    (dimensions or build_dimensions)(t)
    t.fields["cfg_scale"] = _slider(tab, "cfg_scale", _DEFAULTS.cfg_scale, 0.5)
    build_seed_rows(t)
    build_override_row(t)


def build_dimensions(t: GenerationTab) -> None:
    """Width/height with ⇅, beside batch count and batch size."""
    tab = t.tabname
    with gr.Row(elem_id=f"{tab}_dimensions_row"):
        with gr.Column(scale=4):
            t.fields["width"] = _slider(tab, "width", _DEFAULTS.width, 8)
            t.fields["height"] = _slider(tab, "height", _DEFAULTS.height, 8)
        t.swap_size = _tool("⇅", f"{tab}_res_switch_btn")
        with gr.Column(scale=2, elem_id=f"{tab}_column_batch"):
            t.fields["n_iter"] = _slider(tab, "n_iter", _DEFAULTS.n_iter, 1)
            t.fields["batch_size"] = _slider(tab, "batch_size", _DEFAULTS.batch_size, 1)


def build_seed_rows(t: GenerationTab) -> None:
    """Seed with 🎲/♻️ and the "Extra" checkbox revealing variation seed and seed resize."""
    tab = t.tabname
    with gr.Row(elem_id=f"{tab}_seed_row"):
        t.fields["seed"] = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=4)
        t.random_seed = _tool("🎲", f"{tab}_random_seed")
        t.reuse_seed = _tool("♻️", f"{tab}_reuse_seed")
        t.fields["subseed_show"] = gr.Checkbox(
            label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=1, min_width=80
        )
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as extras:
        with gr.Row():
            t.fields["subseed"] = gr.Number(
                label="Variation seed", value=-1, precision=0, elem_id=f"{tab}_subseed", scale=4
            )
            t.random_subseed = _tool("🎲", f"{tab}_random_subseed")
            t.reuse_subseed = _tool("♻️", f"{tab}_reuse_subseed")
            t.fields["subseed_strength"] = _slider(tab, "subseed_strength", 0.0, 0.01)
        with gr.Row():
            t.fields["seed_resize_from_w"] = _slider(tab, "seed_resize_from_w", 0, 8)
            t.fields["seed_resize_from_h"] = _slider(tab, "seed_resize_from_h", 0, 8)
    t.subseed_row = extras


def build_override_row(t: GenerationTab) -> None:
    """A1111's "Override settings": settings a pasted infotext carries (Clip skip, Eta…), applied to the next jobs."""
    tab = t.tabname
    with gr.Row(elem_id=f"{tab}_override_settings_row"):
        t.fields["override_settings"] = gr.Dropdown(
            label="Override settings",
            choices=[],
            value=[],
            multiselect=True,
            visible=False,
            elem_id=f"{tab}_override_settings",
        )


def build_output_column(t: GenerationTab) -> None:
    """Progress bar, the Output gallery, the infotext panel and the hidden info JSON."""
    tab = t.tabname
    t.progress = gr.HTML("", elem_id=f"{tab}_progress")
    t.gallery = gr.Gallery(
        label="Output",
        show_label=False,
        columns=4,
        preview=True,
        elem_id=f"{tab}_gallery",
        height=512,
        object_fit="contain",
        interactive=False,
        format="png",
    )
    with gr.Row(elem_id=f"image_buttons_{tab}"):
        for target, label in SEND_TARGETS.items():
            t.send_buttons[target] = gr.Button(label, elem_id=f"{tab}_send_to_{target}", size="sm")
    t.html_info = gr.HTML("", elem_id=f"html_info_{tab}", elem_classes=["infotext"])
    t.generation_info = gr.Textbox("", visible="hidden", elem_id=f"generation_info_{tab}", label="Generation info")
    t.selected_index = gr.State(0)


def build_tab(ctx: AppContext, tabname: str = "txt2img") -> GenerationTab:
    """Lay out a generation tab (call inside its ``gr.Tab``); events are wired by ``ui.generation``."""
    t = GenerationTab(tabname=tabname)
    build_toprow(ctx, t)
    with gr.Tabs(elem_id=f"{tabname}_extra_tabs"):
        with (
            gr.Tab("Generation", id=f"{tabname}_generation_tab", elem_id=f"{tabname}_generation_tab"),
            gr.Row(equal_height=False, elem_id=f"{tabname}_extra_row"),
        ):
            with gr.Column(scale=1, elem_id=f"{tabname}_settings"):
                build_settings_column(ctx, t)
                t.hires_info = hires.build(ctx, t)
                refiner.build(ctx, t)
            with gr.Column(scale=1, elem_id=f"{tabname}_results"):
                build_output_column(t)
        t.networks = extra_networks.build_tabs(ctx, t)
    return t
