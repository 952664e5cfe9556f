"""The style editor's handlers against a real AppContext and its styles.csv (the Gradio wiring: test_browser.py)."""

from __future__ import annotations

import gradio as gr
import pytest

from modules.engine.styles import PromptStyle, read_styles
from modules.ui import styles_editor, txt2img


def test_save_edit_and_delete_write_styles_csv(empty_ctx):
    path = empty_ctx.flags.data_dir / "styles.csv"
    dropdown, select, message = styles_editor.save(empty_ctx, " Noir ", "film noir, {prompt}", "color", ["Other"])
    assert read_styles(path) == [PromptStyle("Noir", "film noir, {prompt}", "color")]
    assert dropdown["choices"] == ["Noir"] and dropdown["value"] == ["Other"]  # the tab's choice is left alone
    assert select["value"] == "Noir" and message == "Style “Noir” saved to styles.csv."
    assert styles_editor.style_texts(empty_ctx, "Noir") == ("film noir, {prompt}", "color")
    assert styles_editor.style_texts(empty_ctx, "a new name") == ("", "")
    styles_editor.save(empty_ctx, "Noir", "noir", "", [])  # a new text for the same name
    assert read_styles(path) == [PromptStyle("Noir", "noir", "")]
    assert (path.parent / "styles.csv.bak").is_file()  # the version before it
    dropdown, select, prompt, negative, message = styles_editor.delete(empty_ctx, "Noir", ["Noir"])
    assert dropdown["value"] == [] and dropdown["choices"] == [] and (prompt, negative) == ("", "")
    assert read_styles(path) == [] and "deleted" in message


def test_bad_names_are_messages_and_change_nothing(empty_ctx):
    path = empty_ctx.flags.data_dir / "styles.csv"
    for name in (None, "", "# comment"):
        with pytest.raises(gr.Error, match="style name"):
            styles_editor.save(empty_ctx, name, "x", "", [])
    with pytest.raises(gr.Error, match="'Ghost' not found"):
        styles_editor.delete(empty_ctx, "Ghost", [])
    assert not path.exists()


def test_apply_writes_the_chosen_styles_into_the_prompts(empty_ctx):
    styles_editor.save(empty_ctx, "Frame", "masterpiece, {prompt}", "lowres", [])
    styles_editor.save(empty_ctx, "Oil", "oil painting", "", [])
    prompt, negative, chosen = styles_editor.apply(empty_ctx, "a cat", "blurry", ["Frame", "Oil"])
    assert (prompt, negative, chosen) == ("masterpiece, a cat, oil painting", "blurry, lowres", [])
    assert styles_editor.apply(empty_ctx, "a cat", "", []) == ("a cat", "", [])
    with pytest.raises(gr.Error, match="'Gone' not found"):
        styles_editor.apply(empty_ctx, "a cat", "", ["Gone"])


def test_every_generation_tab_has_the_editor(empty_ctx):
    with gr.Blocks():
        t = txt2img.build_tab(empty_ctx)
    editor = t.styles_editor
    assert editor.edit.elem_id == "txt2img_styles_edit_button" and editor.apply.elem_id == "txt2img_style_apply"
    assert editor.dialog.elem_id == "txt2img_styles_dialog" and not editor.dialog.visible
    assert editor.select.elem_id == "txt2img_styles_edit_select"
