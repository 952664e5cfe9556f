"""HTML fragments the UI shows: progress bar, infotext panel, PNG Info chunks, token counter, checkpoint notice."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class JobView(Protocol):
    """The parts of ``modules.jobs.Job`` the progress bar reads."""

    step: int
    total_steps: int
    job_no: int
    job_count: int
    textinfo: str

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1]."""

    @property
    def eta(self) -> float | None:
        """Seconds left, or None."""


def format_eta(seconds: float | None) -> str:
    """Human-readable time left: ``42s``, ``3m 05s``, ``1h 02m``; ``…`` when unknown.

    >>> format_eta(4.2), format_eta(185), format_eta(3720), format_eta(None)
    ('4s', '3m 05s', '1h 02m', '…')
    """
    if seconds is None:
        return "…"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def progress_text(job: JobView, queued_ahead: int | None = None) -> str:
    """One-line progress: queue position, the job's status text, or ``Step s/t`` (with batch) and ETA."""
    if queued_ahead is not None:
        return f"Waiting in queue ({queued_ahead} job{'s' if queued_ahead != 1 else ''} ahead)"
    if job.total_steps <= 0:
        return job.textinfo or "Starting…"
    batch = f"Batch {job.job_no + 1}/{job.job_count}, " if job.job_count > 1 else ""
    return f"{batch}Step {job.step}/{job.total_steps}, ETA {format_eta(job.eta)}"


def progress_html(job: JobView, queued_ahead: int | None = None) -> str:
    """A progress bar with the text of ``progress_text`` over it."""
    percent = 0.0 if queued_ahead is not None else max(0.0, min(job.progress, 1.0)) * 100
    text = html.escape(progress_text(job, queued_ahead))
    return (
        f"<div class='progress-track' role='progressbar' aria-valuenow='{percent:.0f}'>"
        f"<div class='progress-bar' style='width:{percent:.1f}%'></div>"
        f"<div class='progress-text'>{text}</div></div>"
    )


def live_preview_html(data: bytes, fmt: str) -> str:
    """The live preview under the progress bar (A1111's ``livePreview``), from the encoded image ``data``."""
    mime = {"jpg": "jpeg"}.get(fmt, fmt)
    uri = f"data:image/{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f"<div class='livePreview'><img src='{uri}' alt='Live preview'></div>"


def infotext_html(infotext: str, seconds: float | None = None, comment: str = "") -> str:
    """The infotext panel under the gallery: escaped text, newlines kept, and the time taken."""
    body = html.escape(infotext).replace("\n", "<br>\n")
    parts = [f"<div class='infotext'><p>{body}</p></div>"]
    if comment:
        parts.append(f"<p class='comments'>{html.escape(comment)}</p>")
    if seconds is not None:
        parts.append(f"<div class='performance'><p class='time'>Time taken: <b>{seconds:.2f} s</b></p></div>")
    return "\n".join(parts)


def pnginfo_html(infotext: str | None, items: Mapping[str, Any]) -> str:
    """PNG Info panel: the ``parameters`` text first, then every other text chunk, each under its name."""
    blocks: list[str] = []
    if infotext:
        blocks.append(_chunk_html("parameters", infotext))
    blocks.extend(_chunk_html(key, value) for key, value in items.items() if key != "parameters")
    if not blocks:
        return "<div><p>No generation parameters found in this image.</p></div>"
    return "\n".join(blocks)


def _chunk_html(key: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    body = html.escape(text).replace("\n", "<br>\n")
    return f"<div class='pnginfo-item'><p><b>{html.escape(str(key))}</b><br>{body}</p></div>"


def token_counter_html(count: int, limit: int) -> str:
    """A1111's token counter: ``<span>N/75</span>`` (the limit grows by 75 per chunk)."""
    return f"<span>{count}/{limit}</span>"


def notice_html(checkpoint_dir: Path, download: Any | None, downloading: bool) -> str:
    """The message shown when there is no checkpoint: where to put one, and the first-run download's state.

    Args:
        checkpoint_dir: The folder to put checkpoints in.
        download: ``ctx.download`` (``done``, ``total``, ``error``, ``finished``), or None.
        downloading: Whether the download job is running now.
    """
    where = html.escape(str(checkpoint_dir))
    lines = [
        "<b>No Stable Diffusion checkpoint found.</b>",
        f"Put a <code>.safetensors</code> or <code>.ckpt</code> file into <code>{where}</code> "
        "and press 🔄 next to the checkpoint list.",
    ]
    if download is not None and download.error:
        lines.append(f"The automatic download failed: {html.escape(str(download.error))}")
    elif downloading and download is not None:
        done_mb = download.done / (1 << 20)
        if download.total:
            total_mb = download.total / (1 << 20)
            lines.append(
                f"Downloading the default model: {done_mb:.0f} / {total_mb:.0f} MB "
                f"({100 * download.done / download.total:.0f}%)…"
            )
        else:
            lines.append(f"Downloading the default model: {done_mb:.0f} MB…")
    return "<div class='notice'>" + "<br>".join(lines) + "</div>"
