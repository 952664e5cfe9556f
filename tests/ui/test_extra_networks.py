"""The Lora tab: cards from the real LoRA folder, and what a click does to the prompt."""

from __future__ import annotations

import json

from PIL import Image

from modules.engine.types import LoraFile
from modules.ui.extra_networks import card_tag, cards, toggle
from tests.ui.conftest import make_context


def _file(folder, name: str, meta: dict | None = None) -> LoraFile:
    path = folder / f"{name}.safetensors"
    path.write_bytes(b"")
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    return LoraFile(name, path)


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
        assert cards(ctx) == ([], [])
        (folder / "people").mkdir(parents=True)
        _file(folder / "people", "portrait")
        landscape = _file(folder, "landscape")
        Image.new("RGB", (8, 8), "red").save(landscape.path.with_suffix(".preview.png"))
        assert cards(ctx)[1] == []  # listed as scanned, until a rescan (the 🔄 button)
        items, names = cards(ctx, rescan=True)
        assert names == ["landscape", "portrait"]
        assert items[0] == (str(landscape.path.with_suffix(".preview.png")), "landscape")
        assert isinstance(items[1][0], Image.Image) and items[1][1] == "portrait"  # no preview: a blank card
        assert cards(ctx, "PEOPLE")[1] == ["portrait"]  # name or folder, any case
        assert cards(ctx, "land scape")[1] == ["landscape"] and cards(ctx, "nothing")[1] == []
    finally:
        ctx.close()
