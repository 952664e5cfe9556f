"""A1111's "Lora" tab beside "Generation": a card per LoRA file, whose click adds its tag to the prompt or removes it.

A card shows the file's preview (``<name>.preview.png`` and the like beside it, else a blank card) and its name.
Clicking it appends ``<lora:name:weight>`` to the prompt — the weight is the ``preferred weight`` of A1111's
``<name>.json`` beside the file, else 1 — followed by its ``activation text``; clicking a card whose tag is in the
prompt removes the tag (and that text). The search box filters by name and path; 🔄 scans the folder again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

if TYPE_CHECKING:
    from modules.context import AppContext
    from modules.engine.types import LoraFile
    from modules.ui.txt2img import GenerationTab

_BLANK_CARD = (256, 384)
_CARD_COLOUR = (64, 64, 72)


@dataclass
class LoraCards:
    """The Lora tab of one generation tab."""

    gallery: gr.Gallery
    search: gr.Textbox
    refresh: gr.Button
    names: gr.State  # the names of the cards shown, in order


def card_tag(file: LoraFile) -> str:
    """What a click adds: the tag with the preferred weight, then the activation text (A1111's card prompt)."""
    meta = file.user_metadata()
    weight = meta.get("preferred weight")
    weight = weight if isinstance(weight, int | float) and not isinstance(weight, bool) and weight else 1
    text = str(meta.get("activation text") or "").strip()
    return f"<lora:{file.name}:{weight:g}>" + (f" {text}" if text else "")


def toggle(prompt: str, file: LoraFile) -> str:
    """``prompt`` with ``file``'s card text appended, or, when its tag is there already, with that tag taken out."""
    tag = re.compile(rf"\s*<lora:{re.escape(file.name)}(?::[^>]*)?>")
    if tag.search(prompt) is None:
        return f"{prompt.rstrip()} {card_tag(file)}".lstrip()
    text = str(file.user_metadata().get("activation text") or "").strip()
    without = tag.sub("", prompt, count=1)
    if text and f" {text}" in without:
        without = without.replace(f" {text}", "", 1)
    return without.strip()


def cards(ctx: AppContext, query: str = "", *, rescan: bool = False) -> tuple[list[tuple[Any, str]], list[str]]:
    """The gallery's cards (image, name) for the files whose name or path contains ``query``, and their names."""
    files = ctx.lora_files(rescan=rescan)
    words = query.lower().split()
    shown = [f for f in files if all(w in f"{f.name} {f.path}".lower() for w in words)]
    blank = Image.new("RGB", _BLANK_CARD, _CARD_COLOUR)
    items = [(str(preview) if (preview := f.preview()) else blank, f.name) for f in shown]
    return items, [f.name for f in shown]


def build(ctx: AppContext, t: GenerationTab) -> LoraCards:
    """The tab's contents (call inside its ``gr.Tab``)."""
    tab = t.tabname
    items, names = cards(ctx)
    with gr.Row(elem_id=f"{tab}_lora_controls"):
        search = gr.Textbox(
            placeholder="Search", show_label=False, container=False, elem_id=f"{tab}_lora_extra_search", scale=6
        )
        refresh = gr.Button("🔄", elem_id=f"{tab}_lora_extra_refresh", elem_classes=["tool-button"], scale=0)
    gallery = gr.Gallery(
        value=items,
        label="Lora",
        show_label=False,
        columns=6,
        height="auto",
        allow_preview=False,
        object_fit="cover",
        interactive=False,
        elem_id=f"{tab}_lora_cards",
    )
    return LoraCards(gallery=gallery, search=search, refresh=refresh, names=gr.State(names))


def wire(ctx: AppContext, t: GenerationTab, c: LoraCards) -> None:
    """Card clicks toggle tags in the prompt; search filters; 🔄 rescans."""
    prompt = t.fields["prompt"]

    def on_select(evt: gr.SelectData, names: list[str], text: str) -> str:
        file = next((f for f in ctx.lora_files() if f.name == names[evt.index]), None)
        return toggle(text or "", file) if file is not None else gr.update()

    def show(query: str, rescan: bool = False) -> tuple[list[tuple[Any, str]], list[str]]:
        return cards(ctx, query or "", rescan=rescan)

    private = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    c.gallery.select(on_select, inputs=[c.names, prompt], outputs=prompt, **private)
    c.search.change(show, inputs=c.search, outputs=[c.gallery, c.names], **private)
    c.refresh.click(lambda q: show(q, True), inputs=c.search, outputs=[c.gallery, c.names], **private)
