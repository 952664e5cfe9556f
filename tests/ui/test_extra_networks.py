"""The Lora, Textual Inversion and Checkpoints tabs: cards from the real folders, and what a click does."""

from __future__ import annotations

import json

import gradio as gr
import pytest
import torch
from PIL import Image

from modules.engine.types import NetworkFile
from modules.ui.extra_networks import (
    KINDS,
    card_tag,
    cards,
    metadata_values,
    pick_checkpoint,
    save_metadata,
    toggle,
    toggle_word,
)
from tests.ui.conftest import make_context

TEXTUAL_INVERSION, CHECKPOINTS, LORA = KINDS


def _file(folder, name: str, meta: dict | None = None) -> NetworkFile:
    path = folder / f"{name}.safetensors"
    path.write_bytes(b"")
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    return NetworkFile(name, path)


def test_a_click_adds_the_tag_with_preferred_weight_and_activation_text_and_a_second_takes_them_out(tmp_path):
    plain = _file(tmp_path, "plain")
    styled = _file(tmp_path, "styled", {"preferred weight": 0.7, "activation text": "ink style", "notes": "x"})
    broken = _file(tmp_path, "broken")
    broken.path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    assert card_tag(plain) == "<lora:plain:1>" and card_tag(broken) == "<lora:broken:1>"
    assert card_tag(styled) == "<lora:styled:0.7> ink style"
    prompt = toggle("a cat, ", styled)
    assert prompt == "a cat, <lora:styled:0.7> ink style"
    prompt = toggle(prompt, plain)
    assert prompt == "a cat, <lora:styled:0.7> ink style <lora:plain:1>"
    assert toggle(prompt, styled) == "a cat, <lora:plain:1>"
    assert toggle("a <lora:plain:0.25> cat", plain) == "a cat"  # the user's own weight: still the same LoRA
    assert toggle("", plain) == "<lora:plain:1>"


def test_cards_show_previews_filter_and_rescan(tmp_path):
    ctx = make_context(tmp_path)
    try:
        folder = tmp_path / "models" / "Lora"
        assert cards(ctx, LORA) == ([], [])
        (folder / "people").mkdir(parents=True)
        _file(folder / "people", "portrait")
        landscape = _file(folder, "landscape")
        Image.new("RGB", (8, 8), "red").save(landscape.path.with_suffix(".preview.png"))
        assert cards(ctx, LORA)[1] == []  # listed as scanned, until a rescan (the 🔄 button)
        items, names = cards(ctx, LORA, rescan=True)
        assert names == ["landscape", "portrait"]
        assert items[0] == (str(landscape.path.with_suffix(".preview.png")), "landscape")
        assert isinstance(items[1][0], Image.Image) and items[1][1] == "portrait"  # no preview: a blank card
        assert cards(ctx, LORA, "PEOPLE")[1] == ["portrait"]  # name or folder, any case
        assert cards(ctx, LORA, "land scape")[1] == ["landscape"] and cards(ctx, LORA, "nothing")[1] == []
    finally:
        ctx.close()


def test_textual_inversion_cards_add_and_remove_the_name(tmp_path):
    from safetensors.torch import save_file

    ctx = make_context(tmp_path)
    try:
        folder = tmp_path / "embeddings"
        folder.mkdir()
        save_file({"emb_params": torch.zeros(2, 768)}, str(folder / "grainy.safetensors"))
        save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, str(folder / "xl_style.safetensors"))
        assert cards(ctx, TEXTUAL_INVERSION)[1] == ["grainy", "xl_style"]  # whatever model they fit
        (grainy,) = [f for f in ctx.embedding_files() if f.name == "grainy"]
        assert toggle_word("a cat,", grainy) == "a cat, grainy"
        assert toggle_word("a cat, grainy", grainy) == "a cat"
        assert toggle_word("cat, grainy, dog", grainy) == "cat, dog"
        assert toggle_word("a (Grainy:1.2) cat", grainy) == "a cat"
        assert toggle_word("grainyfilm cat", grainy) == "grainyfilm cat grainy"  # another word: added
    finally:
        ctx.close()


def test_a_checkpoint_card_loads_that_checkpoint(tmp_path, tiny_models_dir):
    import shutil

    models = tmp_path / "models" / "Stable-diffusion"
    (models / "sub").mkdir(parents=True)
    shutil.copy(tiny_models_dir / "sd1.safetensors", models / "first.safetensors")
    shutil.copy(tiny_models_dir / "sd2v.safetensors", models / "sub" / "second.safetensors")
    Image.new("RGB", (8, 8), "blue").save(models / "sub" / "second.preview.png")
    ctx = make_context(tmp_path)
    try:
        items, names = cards(ctx, CHECKPOINTS)
        assert names == ["first", "sub/second"]  # A1111's card names: the file without its extension
        assert items[1] == (str(models / "sub" / "second.preview.png"), "sub/second")
        ctx.update_settings({"sd_model_checkpoint": "first.safetensors"})
        update = pick_checkpoint(ctx, "sub/second")
        assert ctx.settings.sd_model_checkpoint.startswith("sub/second.safetensors")
        assert update["value"] == ctx.settings.sd_model_checkpoint
        (models / "third.safetensors").write_bytes((models / "first.safetensors").read_bytes())
        assert "third" in cards(ctx, CHECKPOINTS, rescan=True)[1]  # 🔄 scans the folder again
        pick_checkpoint(ctx, "gone")  # a card whose file went away changes nothing
        assert ctx.settings.sd_model_checkpoint.startswith("sub/second.safetensors")
    finally:
        ctx.close()


def test_the_metadata_editor_writes_the_cards_json_and_keeps_its_other_keys(tmp_path):
    ctx = make_context(tmp_path)
    try:
        folder = tmp_path / "models" / "Lora"
        folder.mkdir(parents=True)
        ink = _file(folder, "ink", {"sd version": "SD1", "activation text": "old words"})
        _file(folder, "bare")
        cards(ctx, LORA, rescan=True)
        keys = ["description", "activation text", "negative text", "notes", "preferred weight"]
        assert metadata_values(ctx, LORA, "ink", keys) == ["", "old words", "", "", 0]
        values = ["brush strokes", "ink wash", "color", "trained on scrolls", 0.6]
        assert save_metadata(ctx, LORA, "ink", keys, values) == "Saved ink.json."
        saved = json.loads(ink.path.with_suffix(".json").read_text(encoding="utf-8"))
        assert saved["sd version"] == "SD1" and saved["activation text"] == "ink wash"  # other keys kept
        assert metadata_values(ctx, LORA, "ink", keys) == values
        assert card_tag(ink) == "<lora:ink:0.6> ink wash"  # what a card click now adds
        save_metadata(ctx, LORA, "bare", ["notes"], ["made here"])  # no json yet: one is made
        assert json.loads((folder / "bare.json").read_text(encoding="utf-8")) == {"notes": "made here"}
        (folder / "bare.json").write_text("{broken", encoding="utf-8")
        with pytest.raises(gr.Error, match=r"bare\.json is not valid JSON.*left as it is"):
            save_metadata(ctx, LORA, "bare", ["notes"], ["x"])
        assert (folder / "bare.json").read_text(encoding="utf-8") == "{broken"  # the user's file, untouched
        with pytest.raises(gr.Error, match="Choose a card"):
            save_metadata(ctx, LORA, None, ["notes"], ["x"])
    finally:
        ctx.close()
