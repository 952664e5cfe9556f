"""The style editor of a generation tab: A1111's 🖌️ "Edit styles" and 📋 "Apply styles".

🖌️ opens a dialog to make, change and delete the styles of ``styles.csv``; 📋 writes the chosen styles into the
prompts. The files are written by ``engine/styles.py`` (the style's own file, other rows kept, the file before in
``.bak``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import WebuiError

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.ui.txt2img import GenerationTab


@dataclass
class StyleEditor:
    """The editor's components: two tool buttons beside the styles, and the (hidden) dialog."""

    edit: gr.Button
    apply: gr.Button
    dialog: gr.Column | None = None
    select: gr.Dropdown | None = None
    prompt: gr.Textbox | None = None
    negative_prompt: gr.Textbox | None = None
    copy: gr.Button | None = None
    save: gr.Button | None = None
    delete: gr.Button | None = None
    close: gr.Button | None = None
    result: gr.HTML | None = None


def build_buttons(tab: str, tool: Any) -> StyleEditor:
    """🖌️ and 📋, made with the tab's ``tool`` button factory (call in the tools row)."""
    return StyleEditor(edit=tool("🖌️", f"{tab}_styles_edit_button"), apply=tool("📋", f"{tab}_style_apply"))


def build_dialog(ctx: AppContext, tab: str, editor: StyleEditor) -> None:
    """The dialog, hidden until 🖌️ opens it (call where it should appear: under the prompt row)."""
    with gr.Column(visible=False, elem_id=f"{tab}_styles_dialog") as editor.dialog:
        editor.select = gr.Dropdown(
            label="Style (choose one, or type a new name)",
            choices=[s.name for s in ctx.style_list()],
            value=None,
            allow_custom_value=True,
            elem_id=f"{tab}_styles_edit_select",
        )
        editor.prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{tab}_edit_style_prompt")
        editor.negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_edit_style_neg_prompt")
        with gr.Row():
            editor.copy = gr.Button("Copy the prompts", elem_id=f"{tab}_edit_style_copy")
            editor.save = gr.Button("Save", variant="primary", elem_id=f"{tab}_edit_style_save")
            editor.delete = gr.Button("Delete", variant="stop", elem_id=f"{tab}_edit_style_delete")
            editor.close = gr.Button("Close", elem_id=f"{tab}_edit_style_close")
        editor.result = gr.HTML("", elem_id=f"{tab}_edit_style_result")


def style_texts(ctx: AppContext, name: str | None) -> tuple[str, str]:
    """The prompt and negative prompt of the style ``name`` (empty for a new name)."""
    style = next((s for s in ctx.style_list() if s.name == name), None)
    return (style.prompt, style.negative_prompt) if style is not None else ("", "")


def save(ctx: AppContext, name: str | None, prompt: str, negative: str, chosen: list[str]) -> tuple[Any, Any, str]:
    """Save: (the styles dropdown, the editor's choice, the message); a bad name is a ``gr.Error``."""
    try:
        path = ctx.save_style(name or "", prompt or "", negative or "")
    except WebuiError as exc:
        raise gr.Error(str(exc)) from exc
    names = [s.name for s in ctx.style_list()]
    saved = (name or "").strip()
    message = f"Style “{saved}” saved to {path.name}."
    return gr.update(choices=names, value=list(chosen or [])), gr.update(choices=names, value=saved), message


def delete(ctx: AppContext, name: str | None, chosen: list[str]) -> tuple[Any, Any, str, str, str]:
    """Delete: (the styles dropdown without it, the editor cleared, the message); an unknown name is a ``gr.Error``."""
    try:
        path = ctx.delete_style(name or "")
    except WebuiError as exc:
        raise gr.Error(str(exc)) from exc
    names = [s.name for s in ctx.style_list()]
    left = [n for n in chosen or [] if n != name]
    message = f"Style “{name}” deleted from {path.name}."
    return gr.update(choices=names, value=left), gr.update(choices=names, value=None), "", "", message


def apply(ctx: AppContext, prompt: str, negative: str, chosen: list[str]) -> tuple[str, str, list[str]]:
    """📋: the chosen styles written into the prompts, and the choice emptied (they would apply twice)."""
    if not chosen:
        return prompt, negative, []
    try:
        prompt, negative = ctx.apply_styles(prompt or "", negative or "", list(chosen))
    except WebuiError as exc:
        raise gr.Error(str(exc)) from exc
    return prompt, negative, []


def wire(ctx: AppContext, t: GenerationTab, editor: StyleEditor) -> None:
    """Events of the buttons and the dialog (no queue: they touch files, not the GPU)."""
    styles, prompt, negative = t.fields["styles"], t.fields["prompt"], t.fields["negative_prompt"]
    quick: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

    def open_dialog(chosen: list[str]) -> tuple[Any, Any, str, str, str]:
        name = chosen[-1] if chosen else None
        names = [s.name for s in ctx.style_list()]
        return gr.update(visible=True), gr.update(choices=names, value=name), *style_texts(ctx, name), ""

    opened = [editor.dialog, editor.select, editor.prompt, editor.negative_prompt, editor.result]
    editor.edit.click(open_dialog, inputs=styles, outputs=opened, **quick)
    editor.close.click(lambda: gr.update(visible=False), outputs=editor.dialog, **quick)
    texts = [editor.prompt, editor.negative_prompt]

    def chosen_style(name: str | None) -> tuple[Any, Any]:
        known = any(s.name == name for s in ctx.style_list())
        return style_texts(ctx, name) if known else (gr.update(), gr.update())  # a new name keeps what is typed

    editor.select.input(chosen_style, inputs=editor.select, outputs=texts, **quick)
    editor.copy.click(lambda p, n: (p, n), inputs=[prompt, negative], outputs=texts, **quick)
    editor.save.click(
        lambda *args: save(ctx, *args),
        inputs=[editor.select, editor.prompt, editor.negative_prompt, styles],
        outputs=[styles, editor.select, editor.result],
        **quick,
    )
    editor.delete.click(
        lambda *args: delete(ctx, *args),
        inputs=[editor.select, styles],
        outputs=[styles, editor.select, editor.prompt, editor.negative_prompt, editor.result],
        **quick,
    )
    editor.apply.click(
        lambda *args: apply(ctx, *args),
        inputs=[prompt, negative, styles],
        outputs=[prompt, negative, styles],
        **quick,
    )
