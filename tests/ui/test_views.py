"""HTML fragments: progress bar, infotext panel, PNG Info chunks, token counter, checkpoint notice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from modules.ui import views


def job(**kw):
    base = {"step": 0, "total_steps": 0, "job_no": 0, "job_count": 1, "textinfo": "", "progress": 0.0, "eta": None}
    base.update(kw)
    return SimpleNamespace(**base)


def test_progress_text_states():
    assert views.progress_text(job(textinfo="Loading sd1.safetensors")) == "Loading sd1.safetensors"
    assert views.progress_text(job()) == "Starting…"
    assert views.progress_text(job(step=3, total_steps=20, eta=75.0)) == "Step 3/20, ETA 1m 15s"
    assert views.progress_text(job(step=1, total_steps=4, job_no=1, job_count=3)) == "Batch 2/3, Step 1/4, ETA …"
    assert views.progress_text(job(), queued_ahead=1) == "Waiting in queue (1 job ahead)"


def test_progress_html_bar_width_and_escaping():
    html = views.progress_html(job(step=1, total_steps=4, progress=0.25, eta=3.0))
    assert "width:25.0%" in html and "Step 1/4, ETA 3s" in html
    assert "&lt;x&gt;" in views.progress_html(job(textinfo="<x>"))


def test_infotext_html():
    html = views.infotext_html("a <cat>\nSteps: 4", seconds=1.234, comment="Interrupted")
    assert "a &lt;cat&gt;<br>\nSteps: 4" in html
    assert "Time taken: <b>1.23 s</b>" in html and "Interrupted" in html


def test_pnginfo_html_orders_parameters_first():
    html = views.pnginfo_html("Steps: 4", {"Software": "x", "parameters": "dup", "dpi": 72})
    assert html.index("parameters") < html.index("Software")
    assert html.count("<b>parameters</b>") == 1 and "<b>dpi</b><br>72" in html
    assert "No generation parameters" in views.pnginfo_html(None, {})


def test_token_counter_html():
    assert views.token_counter_html(80, 150) == "<span>80/150</span>"


def test_notice_html_download_states():
    folder = Path("/data/models/Stable-diffusion")
    idle = views.notice_html(folder, None, False)
    assert "/data/models/Stable-diffusion" in idle and "No Stable Diffusion checkpoint found" in idle
    running = views.notice_html(folder, SimpleNamespace(done=512 << 20, total=2048 << 20, error=None), True)
    assert "512 / 2048 MB (25%)" in running
    unknown = views.notice_html(folder, SimpleNamespace(done=3 << 20, total=None, error=None), True)
    assert "3 MB" in unknown
    failed = views.notice_html(folder, SimpleNamespace(done=0, total=None, error="offline <b>"), False)
    assert "The automatic download failed: offline &lt;b&gt;" in failed
