"""The Settings tab: one widget per Settings field (from the schema), grouped by section; Apply saves them."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import WebuiError
from modules.ui.forms import WidgetSpec, describe_changes, group_by_section, settings_changes, settings_specs

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext

logger = logging.getLogger(__name__)

# Shown in the quicksettings row instead (A1111 moves quicksettings out of their section).
QUICKSETTINGS: tuple[str, ...] = ("sd_model_checkpoint",)


@dataclass
class SettingsTab:
    """Components of the Settings tab; ``widgets`` is keyed by setting name."""

    submit: gr.Button
    result: gr.HTML
    widgets: dict[str, Component] = field(default_factory=dict)


def make_widget(spec: WidgetSpec, value: Any) -> Component:
    """Create the gradio component that ``spec`` describes, showing ``value``."""
    common: dict[str, Any] = {"label": spec.label, "elem_id": spec.elem_id, "value": value, "interactive": True}
    if spec.kind == "checkbox":
        return gr.Checkbox(**common)
    if spec.kind == "dropdown":
        return gr.Dropdown(choices=list(spec.choices), **common)
    if spec.kind == "slider":
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(minimum=spec.minimum, maximum=spec.maximum, precision=0 if spec.is_int else None, **common)
    return gr.Textbox(**common)


def build_tab(ctx: AppContext) -> SettingsTab:
    """Lay out the tab (call inside its ``gr.Tab``): Apply row, result, then one sub-tab per section."""
    with gr.Row():
        submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML("", elem_id="settings_result")
    tab = SettingsTab(submit=submit, result=result)
    current = ctx.settings
    with gr.Tabs(elem_id="settings"):
        for index, (title, specs) in enumerate(group_by_section(settings_specs(exclude=QUICKSETTINGS)).items()):
            with gr.Tab(title, id=f"settings_section_{index}", elem_id=f"settings_section_{specs[0].section}"):
                for spec in specs:
                    if spec.key == "sd_vae":  # the files of models/VAE, as A1111's dropdown lists them
                        tab.widgets[spec.key] = gr.Dropdown(
                            choices=ctx.vae_choices(),
                            value=current.sd_vae,
                            label=spec.label,
                            elem_id=spec.elem_id,
                            allow_custom_value=True,
                            interactive=True,
                        )
                        continue
                    tab.widgets[spec.key] = make_widget(spec, getattr(current, spec.key))
    return tab


def apply_settings(ctx: AppContext, values: dict[str, Any]) -> str:
    """Save the changed settings; return the ``settings_result`` HTML (the change list or the error)."""
    changes = settings_changes(values, ctx.settings)
    if not changes:
        return describe_changes(changes)
    try:
        ctx.update_settings(changes)
    except WebuiError as exc:
        logger.warning("Settings not applied: %s", exc)
        return f"<span class='error'>Settings not applied: {html.escape(str(exc))}</span>"
    logger.info("Settings changed: %s", ", ".join(changes))
    return html.escape(describe_changes(changes))


def current_values(ctx: AppContext, tab: SettingsTab) -> dict[Component, Any]:
    """The widgets' values from the current settings (after a change made elsewhere, e.g. through the API)."""
    return {widget: getattr(ctx.settings, key) for key, widget in tab.widgets.items()}


def wire(ctx: AppContext, tab: SettingsTab) -> None:
    """Apply → ``ctx.update_settings(changed values)`` → result text; widgets then show what was saved."""

    def on_apply(**values: Any) -> dict[Component, Any]:
        text = apply_settings(ctx, values)
        return {tab.result: text, **current_values(ctx, tab)}

    tab.submit.click(
        on_apply,
        inputs_kwargs=dict(tab.widgets),
        outputs=[tab.result, *tab.widgets.values()],
        api_name="apply_settings",
    )
