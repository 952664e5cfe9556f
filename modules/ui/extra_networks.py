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

from modules.engine.types import NetworkFile
from modules.ui import quicksettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.context import AppContext
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
class MetadataEditor:
    """The "Edit metadata" accordion under the cards: A1111's ``<name>.json`` fields of one card (Lora: all)."""

    name: gr.Dropdown
    fields: dict[str, Any]  # the JSON key → its component
    save: gr.Button
    result: gr.HTML


@dataclass
class NetworkCards:
    """One kind's tab inside one generation tab."""

    kind: Kind
    gallery: gr.Gallery
    search: gr.Textbox
    refresh: gr.Button
    names: gr.State  # the names of the cards shown, in order
    editor: MetadataEditor | None = None


# A1111's user-metadata keys, and the kinds that have each (Lora: all of them).
_TEXT_KEYS = ("description", "activation text", "negative text", "notes")
_LORA_ONLY = ("activation text", "negative text", "preferred weight")


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
    editor = _build_editor(prefix, kind, names)
    return NetworkCards(kind, gallery, search, refresh, gr.State(names), editor)


def _build_editor(prefix: str, kind: Kind, names: list[str]) -> MetadataEditor:
    keys = [k for k in (*_TEXT_KEYS, "preferred weight") if kind.key == "lora" or k not in _LORA_ONLY]
    with gr.Accordion("Edit metadata", open=False, elem_id=f"{prefix}_edit_user_metadata"):
        name = gr.Dropdown(label="Card", choices=names, value=None, elem_id=f"{prefix}_edit_user_metadata_name")
        fields: dict[str, Any] = {}
        for key in keys:
            elem_id = f"{prefix}_edit_user_metadata_{key.replace(' ', '_')}"
            if key == "preferred weight":
                fields[key] = gr.Slider(0, 2, value=0, step=0.05, label="Preferred weight (0: 1)", elem_id=elem_id)
            else:
                fields[key] = gr.Textbox(label=key.capitalize(), lines=2 if key != "notes" else 4, elem_id=elem_id)
        save = gr.Button("Save", variant="primary", elem_id=f"{prefix}_edit_user_metadata_save")
        result = gr.HTML("", elem_id=f"{prefix}_edit_user_metadata_result")
    return MetadataEditor(name, fields, save, result)


def metadata_values(ctx: AppContext, kind: Kind, name: str | None, keys: list[str]) -> list[Any]:
    """The values of ``keys`` in card ``name``'s ``<name>.json`` (empty, or 0 for the weight, when unset)."""
    file = next((f for f in kind.files(ctx, False) if f.name == name), None)
    meta = file.user_metadata() if file is not None else {}
    values: list[Any] = []
    for key in keys:
        value = meta.get(key)
        if key == "preferred weight":
            values.append(value if isinstance(value, int | float) and not isinstance(value, bool) else 0)
        else:
            values.append("" if value is None else str(value))
    return values


def save_metadata(ctx: AppContext, kind: Kind, name: str | None, keys: list[str], values: list[Any]) -> str:
    """Write the editor's values into card ``name``'s ``<name>.json`` (other keys kept); the message to show.

    Raises:
        gr.Error: No card chosen, or a JSON file that is there but not readable (it is left as it is).
    """
    file = next((f for f in kind.files(ctx, False) if f.name == name), None)
    if file is None:
        raise gr.Error("Choose a card first.")
    pairs = zip(keys, values, strict=True)
    updates = {key: (float(v or 0) if key == "preferred weight" else str(v or "")) for key, v in pairs}
    try:
        path = file.save_user_metadata(updates)
    except (ValueError, OSError) as exc:
        raise gr.Error(str(exc)) from exc
    return f"Saved {path.name}."


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
    if c.editor is not None:
        _wire_editor(ctx, c, c.editor, private)


def _wire_editor(ctx: AppContext, c: NetworkCards, e: MetadataEditor, private: dict[str, Any]) -> None:
    keys = list(e.fields)
    outputs = list(e.fields.values())
    e.name.focus(lambda: gr.update(choices=[f.name for f in c.kind.files(ctx, False)]), outputs=e.name, **private)
    e.name.change(lambda name: metadata_values(ctx, c.kind, name, keys), inputs=e.name, outputs=outputs, **private)
    e.save.click(
        lambda name, *values: save_metadata(ctx, c.kind, name, keys, list(values)),
        inputs=[e.name, *outputs],
        outputs=e.result,
        **private,
    )
