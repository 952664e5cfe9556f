"""The "Refiner" accordion (txt2img and img2img): a checkpoint that takes over sampling at "Switch at"."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from modules.ui.quicksettings import checkpoint_titles

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.ui.txt2img import GenerationTab

NO_REFINER = "None"


def build(ctx: AppContext, t: GenerationTab) -> None:
    """Lay out the accordion; its fields are ``refiner_checkpoint`` ("None" = off) and ``refiner_switch_at``."""
    tab = t.tabname
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"), gr.Row():
        t.fields["refiner_checkpoint"] = gr.Dropdown(
            label="Checkpoint",
            choices=[NO_REFINER, *checkpoint_titles(ctx)],
            value=NO_REFINER,
            elem_id=f"{tab}_refiner_checkpoint",
        )
        t.fields["refiner_switch_at"] = gr.Slider(
            0.01, 1.0, value=0.8, step=0.01, label="Switch at", elem_id=f"{tab}_refiner_switch_at"
        )
