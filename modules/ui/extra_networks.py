"""A1111's extra-network tabs beside "Generation": "Textual Inversion", "Checkpoints" and "Lora", a card per file.

A card shows the file's preview (``<name>.preview.png`` and the like beside it, else a blank card) and its name.
A click on a Lora card appends ``<lora:name:weight>`` to the prompt — the weight is the ``preferred weight`` of
A1111's ``<name>.json`` beside the file, else 1 — followed by its ``activation text``; on a Textual Inversion card it
appends the embedding's name. A click on a card already in the prompt takes it out again. A click on a Checkpoints
card loads that checkpoint, as choosing it in the checkpoint dropdown does. The search box filters by name and path;
🔄 scans the folder again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.ui import quicksettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.context import AppContext
    from modules.engine.types import NetworkFile
    from modules.ui.txt2img import GenerationTab

_BLANK_CARD = (256, 384)
_CARD_COLOUR = (64, 64, 72)


@dataclass(frozen=True)
class Kind:
    """One kind of card: its tab label, element-id part, files and what a click does to the prompt."""

    label: str
    key: str  # A1111's element ids: ``{tab}_{key}_cards``
    files: Callable[[AppContext, bool], list[NetworkFile]]
    toggle: Callable[[str, NetworkFile], str] | None  # None: a click selects the checkpoint instead


@dataclass
class NetworkCards:
    """One kind's tab inside one generation tab."""

    kind: Kind
    gallery: gr.Gallery
    search: gr.Textbox
    refresh: gr.Button
    names: gr.State  # the names of the cards shown, in order


def card_tag(file: NetworkFile) -> str:
    """What a click on a Lora card adds: the tag with the preferred weight, then the activation text (A1111's)."""
    meta = file.user_metadata()
    weight = meta.get("preferred weight")
    weight = weight if isinstance(weight, int | float) and not isinstance(weight, bool) and weight else 1
    text = str(meta.get("activation text") or "").strip()
    return f"<lora:{file.name}:{weight:g}>" + (f" {text}" if text else "")


def toggle(prompt: str, file: NetworkFile) -> str:
    """``prompt`` with ``file``'s Lora card text appended, or, when its tag is there already, with it taken out."""
    tag = re.compile(rf"\s*<lora:{re.escape(file.name)}(?::[^>]*)?>")
    if tag.search(prompt) is None:
        return f"{prompt.rstrip()} {card_tag(file)}".lstrip()
    text = str(file.user_metadata().get("activation text") or "").strip()
    without = tag.sub("", prompt, count=1)
    if text and f" {text}" in without:
        without = without.replace(f" {text}", "", 1)
    return without.strip()


def toggle_word(prompt: str, file: NetworkFile) -> str:
    """``prompt`` with the embedding's name appended, or, when the name is a word of it already, taken out."""
    word = re.compile(rf"(?i)(?<![\w<:]){re.escape(file.name)}(?![\w>])")
    if word.search(prompt) is None:
        return f"{prompt.rstrip()} {file.name}".lstrip()
    text = word.sub("", prompt, count=1)
    text = re.sub(r"\(\s*(?::\s*[\d.]+)?\s*\)|\[\s*\]", "", text)  # brackets left empty
    text = re.sub(r"\s*,(\s*,)+", ",", text)  # commas left doubled
    return re.sub(r"\s{2,}", " ", text).strip(" ,")


def checkpoint_files(ctx: AppContext, rescan: bool) -> list[NetworkFile]:
    """The checkpoints as cards: named as A1111's cards name them (the file name without its extension)."""
    from modules.engine.types import NetworkFile

    found = ctx.refresh_checkpoints() if rescan else ctx.checkpoints
    return [NetworkFile(Path(c.name).with_suffix("").as_posix(), c.filename) for c in found]


KINDS = (
    Kind("Textual Inversion", "textual_inversion", lambda ctx, rescan: ctx.embedding_files(), toggle_word),
    Kind("Checkpoints", "checkpoints", checkpoint_files, None),
    Kind("Lora", "lora", lambda ctx, rescan: ctx.lora_files(rescan=rescan), toggle),
)


def cards(
    ctx: AppContext, kind: Kind, query: str = "", *, rescan: bool = False
) -> tuple[list[tuple[Any, str]], list[str]]:
    """The gallery's cards (image, name) for the files whose name or path contains ``query``, and their names."""
    words = query.lower().split()
    shown = [f for f in kind.files(ctx, rescan) if all(w in f"{f.name} {f.path}".lower() for w in words)]
    blank = Image.new("RGB", _BLANK_CARD, _CARD_COLOUR)
    items = [(str(preview) if (preview := f.preview()) else blank, f.name) for f in shown]
    return items, [f.name for f in shown]


def build(ctx: AppContext, t: GenerationTab, kind: Kind) -> NetworkCards:
    """One kind's tab contents (call inside its ``gr.Tab``)."""
    prefix = f"{t.tabname}_{kind.key}"
    items, names = cards(ctx, kind)
    with gr.Row(elem_id=f"{prefix}_controls"):
        search = gr.Textbox(
            placeholder="Search", show_label=False, container=False, elem_id=f"{prefix}_extra_search", scale=6
        )
        refresh = gr.Button("🔄", elem_id=f"{prefix}_extra_refresh", elem_classes=["tool-button"], scale=0)
    gallery = gr.Gallery(
        value=items,
        label=kind.label,
        show_label=False,
        columns=6,
        height="auto",
        allow_preview=False,
        object_fit="cover",
        interactive=False,
        elem_id=f"{prefix}_cards",
    )
    return NetworkCards(kind=kind, gallery=gallery, search=search, refresh=refresh, names=gr.State(names))


def build_tabs(ctx: AppContext, t: GenerationTab) -> list[NetworkCards]:
    """Every kind's tab (call inside the ``gr.Tabs`` that holds "Generation")."""
    built = []
    for kind in KINDS:
        with gr.Tab(kind.label, id=f"{t.tabname}_{kind.key}", elem_id=f"{t.tabname}_{kind.key}_tab"):
            built.append(build(ctx, t, kind))
    return built


def pick_checkpoint(ctx: AppContext, name: str) -> dict[str, Any]:
    """A Checkpoints card click: load that checkpoint; the checkpoint dropdown's update (unchanged if it is gone)."""
    file = next((f for f in checkpoint_files(ctx, False) if f.name == name), None)
    title = next((c.title for c in ctx.checkpoints if file is not None and c.filename == file.path), None)
    return quicksettings.change_checkpoint(ctx, title)


def wire(ctx: AppContext, t: GenerationTab, c: NetworkCards, checkpoint: gr.Dropdown | None = None) -> None:
    """Card clicks toggle the prompt text (or load the checkpoint into ``checkpoint``); search filters; 🔄 rescans."""
    prompt = t.fields["prompt"]

    def on_select(evt: gr.SelectData, names: list[str], text: str) -> str:
        file = next((f for f in c.kind.files(ctx, False) if f.name == names[evt.index]), None)
        return c.kind.toggle(text or "", file) if file is not None and c.kind.toggle else gr.update()

    def show(query: str, rescan: bool = False) -> tuple[list[tuple[Any, str]], list[str]]:
        return cards(ctx, c.kind, query or "", rescan=rescan)

    private = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

    def on_pick(evt: gr.SelectData, names: list[str]) -> dict[str, Any]:
        return pick_checkpoint(ctx, names[evt.index])

    if c.kind.toggle is None and checkpoint is not None:
        c.gallery.select(on_pick, inputs=c.names, outputs=checkpoint, api_visibility="private")
    elif c.kind.toggle is not None:
        c.gallery.select(on_select, inputs=[c.names, prompt], outputs=prompt, **private)
    c.search.change(show, inputs=c.search, outputs=[c.gallery, c.names], **private)
    c.refresh.click(lambda q: show(q, True), inputs=c.search, outputs=[c.gallery, c.names], **private)
