"""Event wiring of a generation tab: Generate (submit + progress polling), Interrupt/Skip, seeds, tokens, paste."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import WebuiError
from modules.settings import infotext_settings
from modules.ui import extra_networks, hires, styles_editor
from modules.ui.forms import override_entries, overrides_from_entries, paste_values, to_request
from modules.ui.views import infotext_html, live_preview_html, progress_html, token_counter_html

if TYPE_CHECKING:
    from gradio.components import Component

    from modules.context import AppContext
    from modules.jobs import Job
    from modules.ui.txt2img import GenerationTab

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25


def watch(ctx: AppContext, job: Job, interval: float = POLL_INTERVAL_S) -> Iterator[str]:
    """Yield the progress-bar HTML, with the live preview under it, each time it changes, until ``job`` is done.

    Watching is what asks the worker for live previews (``Settings → Live previews``); a new preview replaces the
    shown one at most every ``live_preview_refresh_period`` ms, encoded once in ``live_previews_image_format``.
    """
    last, preview_id, preview, shown_at = None, 0, "", -math.inf
    while not job.done:
        pending = ctx.jobs.pending
        ahead = pending.index(job) + (ctx.jobs.current is not None) if job in pending else None
        snap = ctx.settings
        if snap.live_previews_enable and ahead is None:
            job.want_preview()
            image, due = job.current_image, time.monotonic() - shown_at >= snap.live_preview_refresh_period / 1000
            if image is not None and job.id_live_preview != preview_id and due:
                fmt = snap.live_previews_image_format
                preview_id, preview = job.id_live_preview, live_preview_html(ctx.encode_image(image, fmt, None), fmt)
                shown_at = time.monotonic()
        html = progress_html(job, ahead) + preview
        if html != last:
            last = html
            yield html
        time.sleep(interval)


def show_output(
    output: Any, with_grid: bool, seconds: float | None, pnginfo: bool = True
) -> tuple[list[Any], str, str]:
    """Gallery images, infotext HTML and info JSON of a finished job (``index_of_first_image`` set for the grid).

    With ``pnginfo`` each gallery image carries its infotext (as A1111's do), so a downloaded or dragged gallery
    image still has its parameters.
    """
    images = output.gallery(with_grid=with_grid)
    offset = len(images) - len(output.result.images)
    texts = output.result.infotexts
    if pnginfo and texts:
        for pos, image in enumerate(images):
            image.info["parameters"] = texts[min(max(pos - offset, 0), len(texts) - 1)]
    info = dict(output.info, index_of_first_image=offset)
    first = output.result.infotexts[0] if output.result.infotexts else ""
    comment = "Interrupted: showing the images finished so far." if output.result.interrupted else ""
    return images, infotext_html(first, seconds, comment), json.dumps(info, default=str)


def selected_seed(info_json: str, index: int, key: str = "all_seeds") -> int:
    """Seed (``all_seeds``) or variation seed (``all_subseeds``) of the selected gallery image; −1 if unknown."""
    try:
        info = json.loads(info_json) if info_json else {}
    except ValueError:
        return -1
    seeds = info.get(key) or []
    if not seeds:
        return -1
    pos = (index or 0) - int(info.get("index_of_first_image", 0))
    return int(seeds[pos] if 0 <= pos < len(seeds) else seeds[0])


def selected_infotext(info_json: str, index: int) -> str | None:
    """Infotext of the selected gallery image (the first image's for the grid), or None."""
    try:
        info = json.loads(info_json) if info_json else {}
    except ValueError:
        return None
    texts = info.get("infotexts") or []
    if not texts:
        return None
    pos = (index or 0) - int(info.get("index_of_first_image", 0))
    return str(texts[pos] if 0 <= pos < len(texts) else texts[0])


def read_paste_source(ctx: AppContext, prompt: str) -> str | None:
    """Text for ↙️: the prompt box when it holds an infotext, else the last generation's params.txt."""
    if prompt and prompt.strip():
        return prompt
    params = ctx.flags.data_dir / "params.txt"
    return params.read_text(encoding="utf-8") if params.exists() else None


def paste_updates(ctx: AppContext, t: GenerationTab, text: str | None) -> dict[Component, Any]:
    """Updates that fill the tab's fields from an infotext (A1111's paste / send-to)."""
    if not text:
        return {}
    fields = ctx.infotext_fields(text)
    choices = {"sampler_name": ctx.sampler_names(), "scheduler": ctx.schedule_labels()}
    values = paste_values(fields, ctx.settings, choices)
    updates: dict[Component, Any] = {t.fields[k]: v for k, v in values.items() if k in t.fields}
    if "override_settings" in t.fields:
        entries = override_entries(infotext_settings(fields, t.fields), ctx.settings)
        updates[t.fields["override_settings"]] = gr.update(choices=entries, value=entries, visible=bool(entries))
    if values.get("subseed_show") and t.subseed_row is not None:
        updates[t.subseed_row] = gr.update(visible=True)
    return updates


def _run_generation(ctx: AppContext, t: GenerationTab, values: dict[str, Any]) -> Iterator[dict[Component, Any]]:
    """Generate handler body: validate, submit, stream progress, then show the images or raise gr.Error."""
    custom = t.runner(ctx, t, values) if t.runner is not None else None
    if custom is not None:
        yield from custom
        return
    request = to_request(values, samplers=ctx.sampler_names(), schedulers=ctx.schedule_labels())
    if t.extra_values is not None:
        request = dataclasses.replace(request, **t.extra_values(values))
    started = time.time()
    try:
        job = ctx.submit(request, overrides_from_entries(values.get("override_settings")) or None)
    except WebuiError as exc:
        raise gr.Error(str(exc)) from exc
    for html in watch(ctx, job):
        yield {t.progress: html}
    try:
        output = job.wait()
    except WebuiError as exc:
        yield {t.progress: ""}
        raise gr.Error(str(exc), title="Generation failed") from exc
    snap = ctx.settings
    images, info_html, info_json = show_output(output, snap.return_grid, time.time() - started, snap.enable_pnginfo)
    yield {t.progress: "", t.gallery: images, t.html_info: info_html, t.generation_info: info_json, t.selected_index: 0}


def interrupt_job(ctx: AppContext) -> None:
    """The Interrupt button (and Esc): stop the running job.

    With several batches and "Don't Interrupt in the middle" (A1111's ``interrupt_after_current``), the first press
    lets the current batch finish and the next press stops at once, as in A1111.
    """
    job = ctx.jobs.current
    if job is None:
        return
    if not job.stopping_generation and job.job_count > 1 and ctx.settings.interrupt_after_current:
        job.stop_generating()
        gr.Info("Generation will stop after finishing this image, click again to stop immediately.")
    else:
        job.interrupt()


def wire_generate(ctx: AppContext, t: GenerationTab) -> None:
    """Generate (queued, streamed progress) and Interrupt/Skip (unqueued, so they run while a job does)."""

    def generate(**values: Any) -> Iterator[dict[Component, Any]]:
        yield from _run_generation(ctx, t, values)

    def interrupt() -> None:
        interrupt_job(ctx)

    def skip() -> None:
        job = ctx.jobs.current
        if job is not None:
            job.skip()

    outputs = [t.progress, t.gallery, t.html_info, t.generation_info, t.selected_index]
    t.generate.click(
        generate,
        inputs_kwargs=dict(t.fields),
        outputs=outputs,
        api_name=t.tabname,
        show_progress="minimal",
        concurrency_id="generate",
        concurrency_limit=None,
    )
    t.interrupt.click(interrupt, queue=False, api_name=f"{t.tabname}_interrupt", show_progress="hidden")
    t.skip.click(skip, queue=False, api_name=f"{t.tabname}_skip", show_progress="hidden")


def wire_helpers(ctx: AppContext, t: GenerationTab) -> None:
    """Token counters, gallery selection, size swap, clear and ↙️ paste."""

    def count(text: str) -> str:
        return token_counter_html(*ctx.count_tokens(text or ""))

    prompts = ((t.fields["prompt"], t.token_counter), (t.fields["negative_prompt"], t.negative_token_counter))
    for box, counter in prompts:
        box.change(count, inputs=box, outputs=counter, queue=False, show_progress="hidden", api_visibility="private")

    def on_select(evt: gr.SelectData, info_json: str) -> tuple[int, Any]:
        text = selected_infotext(info_json, evt.index)
        return evt.index, (infotext_html(text) if text is not None else gr.update())

    t.gallery.select(
        on_select,
        inputs=t.generation_info,
        outputs=[t.selected_index, t.html_info],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )
    t.swap_size.click(
        lambda w, h: (h, w),
        inputs=[t.fields["width"], t.fields["height"]],
        outputs=[t.fields["width"], t.fields["height"]],
        queue=False,
        api_visibility="private",
    )
    t.clear_prompt.click(
        lambda: ("", ""),
        outputs=[t.fields["prompt"], t.fields["negative_prompt"]],
        queue=False,
        api_visibility="private",
    )

    def paste(prompt: str) -> dict[Component, Any]:
        return paste_updates(ctx, t, read_paste_source(ctx, prompt))

    t.paste.click(
        paste,
        inputs=t.fields["prompt"],
        outputs=[*t.fields.values(), t.subseed_row],
        api_visibility="private",
        show_progress="hidden",
    )


def wire_seeds(t: GenerationTab) -> None:
    """🎲 and ♻️ for seed and variation seed, and the "Extra" checkbox."""
    t.random_seed.click(lambda: -1, outputs=t.fields["seed"], queue=False, api_visibility="private")
    t.random_subseed.click(lambda: -1, outputs=t.fields["subseed"], queue=False, api_visibility="private")
    t.reuse_seed.click(
        lambda info, i: selected_seed(info, i),
        inputs=[t.generation_info, t.selected_index],
        outputs=t.fields["seed"],
        queue=False,
        api_visibility="private",
    )
    t.reuse_subseed.click(
        lambda info, i: selected_seed(info, i, "all_subseeds"),
        inputs=[t.generation_info, t.selected_index],
        outputs=t.fields["subseed"],
        queue=False,
        api_visibility="private",
    )
    t.fields["subseed_show"].change(
        lambda show: gr.update(visible=bool(show)),
        inputs=t.fields["subseed_show"],
        outputs=t.subseed_row,
        queue=False,
        api_visibility="private",
    )


def wire(ctx: AppContext, t: GenerationTab, checkpoint: gr.Dropdown | None = None) -> None:
    """Attach every event of a generation tab (``checkpoint``: the dropdown a Checkpoints card click sets)."""
    wire_generate(ctx, t)
    wire_helpers(ctx, t)
    wire_seeds(t)
    for cards in t.networks:
        extra_networks.wire(ctx, t, cards, checkpoint)
    if t.styles_editor is not None:
        styles_editor.wire(ctx, t, t.styles_editor)
    if t.hires_accordion is not None and t.hires_info is not None:
        hires.wire(t, t.hires_info)
