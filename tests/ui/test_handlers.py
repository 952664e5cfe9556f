"""UI event handlers against a real AppContext without checkpoints: settings, generate errors, PNG Info, paste."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from modules.context import AppContext
from modules.settings import Settings
from modules.ui import generation, pnginfo, quicksettings, settings_tab, txt2img

INFOTEXT = (
    "a (red:1.2) cat, <b>bold</b>\nNegative prompt: blurry\n"
    "Steps: 4, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, Size: 64x96, "
    "Variation seed: 77, Variation seed strength: 0.3, Clip skip: 2"
)


@pytest.fixture
def tab(empty_ctx):
    with gr.Blocks():
        t = txt2img.build_tab(empty_ctx)
    return t


def test_apply_settings_saves_changes_to_config_json(empty_ctx):
    text = settings_tab.apply_settings(
        empty_ctx, {"CLIP_stop_at_last_layers": 2.0, "samples_format": "jpg", "samples_save": True}
    )
    assert text == "2 settings changed: CLIP_stop_at_last_layers, samples_format."
    assert empty_ctx.settings.CLIP_stop_at_last_layers == 2
    saved = json.loads(empty_ctx.flags.settings_file.read_text(encoding="utf-8"))
    assert saved["CLIP_stop_at_last_layers"] == 2 and saved["samples_format"] == "jpg"
    assert settings_tab.apply_settings(empty_ctx, {"samples_format": "jpg"}) == "Nothing changed."


def test_apply_settings_reports_invalid_values_and_changes_nothing(empty_ctx):
    text = settings_tab.apply_settings(empty_ctx, {"jpeg_quality": 0, "samples_format": "webp"})
    assert "Settings not applied" in text and "jpeg_quality" in text
    assert empty_ctx.settings.jpeg_quality == 80 and empty_ctx.settings.samples_format == "png"


def test_generate_without_checkpoint_says_where_to_put_one(empty_ctx, tab):
    values = {"prompt": "x", "steps": 4, "width": 64, "height": 64}
    with pytest.raises(gr.Error) as info:
        list(generation._run_generation(empty_ctx, tab, values))
    assert "No checkpoints found" in info.value.message
    assert str(empty_ctx.flags.checkpoint_dirs[-1]) in info.value.message


def test_generate_rejects_bad_form_values_before_submitting(empty_ctx, tab):
    with pytest.raises(gr.Error, match="Sampling steps must be between 1 and 150"):
        list(generation._run_generation(empty_ctx, tab, {"prompt": "x", "steps": 0}))
    assert empty_ctx.jobs.pending == [] and empty_ctx.jobs.current is None


def test_unknown_checkpoint_warns_and_keeps_the_ui_state(empty_ctx):
    with pytest.warns(UserWarning, match="Could not load nope.safetensors"):
        update = quicksettings.change_checkpoint(empty_ctx, "nope.safetensors")
    assert update["choices"] == [] and update["value"] is None
    assert empty_ctx.settings.sd_model_checkpoint == ""


def test_notice_reflects_download_progress_and_error(empty_ctx):
    assert str(empty_ctx.flags.checkpoint_dirs[-1]) in quicksettings.notice(empty_ctx)["value"]
    empty_ctx.download.error = "HTTP 404 for https://example.invalid/model.safetensors"
    update = quicksettings.notice(empty_ctx)
    assert update["visible"] is True
    assert "The automatic download failed: HTTP 404" in update["value"]


def _png_with_text(tmp_path, **chunks):
    meta = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        meta.add_text(key, value)
    path = tmp_path / "in.png"
    Image.new("RGB", (8, 8), "red").save(path, pnginfo=meta)
    return Image.open(path)


def test_pnginfo_reads_parameters_and_other_chunks(empty_ctx, tmp_path):
    image = _png_with_text(tmp_path, parameters=INFOTEXT, Software="test-suite")
    html, text = pnginfo.read_info(empty_ctx, image)
    assert text == INFOTEXT
    assert "<b>parameters</b>" in html and "Steps: 4, Sampler: Euler a" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the infotext is escaped, never rendered as HTML
    assert "<b>Software</b><br>test-suite" in html
    assert pnginfo.read_info(empty_ctx, None) == ("", "")
    plain_html, plain_text = pnginfo.read_info(empty_ctx, Image.new("RGB", (4, 4)))
    assert plain_text == "" and "No generation parameters" in plain_html


def test_paste_updates_fill_txt2img_fields(empty_ctx, tab):
    updates = generation.paste_updates(empty_ctx, tab, INFOTEXT)
    by_name = {name: updates[comp] for name, comp in tab.fields.items() if comp in updates}
    assert by_name["prompt"] == "a (red:1.2) cat, <b>bold</b>"
    assert by_name["negative_prompt"] == "blurry"
    assert (by_name["steps"], by_name["sampler_name"], by_name["scheduler"]) == (4, "Euler a", "Karras")
    assert (by_name["cfg_scale"], by_name["seed"], by_name["width"], by_name["height"]) == (5.5, 1234, 64, 96)
    assert (by_name["subseed"], by_name["subseed_strength"], by_name["subseed_show"]) == (77, 0.3, True)
    assert updates[tab.subseed_row]["visible"] is True


def test_paste_without_seed_and_size_when_settings_say_so(empty_ctx, tab):
    empty_ctx.update_settings({"send_seed": False, "send_size": False})
    updates = generation.paste_updates(empty_ctx, tab, INFOTEXT)
    assert tab.fields["seed"] not in updates and tab.fields["width"] not in updates
    assert updates[tab.fields["steps"]] == 4


def test_paste_source_falls_back_to_params_txt(empty_ctx):
    assert generation.read_paste_source(empty_ctx, "") is None
    (empty_ctx.flags.data_dir / "params.txt").write_text(INFOTEXT, encoding="utf-8")
    assert generation.read_paste_source(empty_ctx, "  ") == INFOTEXT
    assert generation.read_paste_source(empty_ctx, "typed") == "typed"


def test_selected_seed_and_infotext_account_for_the_grid():
    info = json.dumps(
        {"all_seeds": [10, 11], "all_subseeds": [5, 6], "infotexts": ["a", "b"], "index_of_first_image": 1}
    )
    assert generation.selected_seed(info, 0) == 10  # the grid → the first image
    assert generation.selected_seed(info, 2) == 11
    assert generation.selected_seed(info, 2, "all_subseeds") == 6
    assert generation.selected_infotext(info, 1) == "a"
    assert generation.selected_infotext(info, 2) == "b"
    assert generation.selected_seed("", 0) == -1
    assert generation.selected_seed("not json", 0) == -1


class FakeJob:
    def __init__(self, steps):
        self.steps, self.polls = steps, 0
        self.step, self.total_steps, self.job_no, self.job_count, self.textinfo = 0, steps, 0, 1, ""
        self.eta = 1.0
        self.current_image, self.id_live_preview, self.wanted = None, 0, 0

    def want_preview(self):
        self.wanted += 1

    @property
    def done(self):
        return self.polls > self.steps

    @property
    def progress(self):
        return self.step / self.total_steps


def test_watch_streams_progress_until_the_job_is_done():
    job = FakeJob(3)
    jobs = SimpleNamespace(pending=[], current=job)
    ctx = SimpleNamespace(jobs=jobs, settings=Settings())
    seen = []
    for html in generation.watch(ctx, job, interval=0):
        seen.append(html)
        job.polls += 1
        job.step = min(job.polls, 3)
    assert len(seen) == 4
    assert "Step 0/3" in seen[0] and "Step 3/3, ETA 1s" in seen[-1]
    assert "width:100.0%" in seen[-1]


def test_watch_shows_queue_position():
    job, running = FakeJob(1), FakeJob(1)
    ctx = SimpleNamespace(jobs=SimpleNamespace(pending=[FakeJob(1), job], current=running), settings=Settings())
    first = next(generation.watch(ctx, job, interval=0))
    assert "Waiting in queue (2 jobs ahead)" in first and job.wanted == 0  # a queued job has nothing to preview


class PreviewedJob(FakeJob):
    """Checked once per poll: the worker draws a preview after the second poll; the step stops at 1."""

    @property
    def done(self):
        self.polls += 1
        self.step = min(self.polls - 1, 1)
        if self.polls == 3:
            self.current_image, self.id_live_preview = Image.new("RGB", (12, 8), "red"), 1
        return self.polls > 5


@pytest.mark.parametrize("enabled", [True, False])
def test_watch_asks_for_live_previews_and_shows_each_new_one_once(enabled):
    job = PreviewedJob(4)
    settings = Settings(live_previews_enable=enabled, live_previews_image_format="jpeg")
    jobs = SimpleNamespace(pending=[], current=job)
    ctx = SimpleNamespace(jobs=jobs, settings=settings, encode_image=AppContext.encode_image)
    seen = list(generation.watch(ctx, job, interval=0))
    previews = [html for html in seen if "livePreview" in html]
    if not enabled:
        assert previews == [] and job.wanted == 0 and len(seen) == 2  # step 0, step 1
        return
    assert job.wanted == 5  # every poll of the running job asks the worker for previews
    assert len(seen) == 3 and len(previews) == 1  # step 0, step 1, then the preview: nothing sent twice
    data = previews[0].split("data:image/jpeg;base64,", 1)[1].split("'", 1)[0]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (12, 8)


def test_pasted_settings_are_offered_as_overrides_and_apply_to_that_job_only(tmp_path, tiny_models_dir):
    from tests.ui.conftest import make_context

    ctx = make_context(tmp_path, "--ckpt-dir", str(tiny_models_dir))
    try:
        ctx.update_settings({"sd_model_checkpoint": "sd1"})
        with gr.Blocks():
            t = txt2img.build_tab(ctx)
        text = (
            "a cat\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 7, Size: 64x64, Clip skip: 2, ENSD: 31337, "
            "Eta: 0.5, Sigma noise: 1"
        )
        dropdown = generation.paste_updates(ctx, t, text)[t.fields["override_settings"]]
        # Sigma noise 1 equals the current setting: not offered
        expected = ["Clip skip: 2", "Eta noise seed delta: 31337", "Eta for k-diffusion samplers: 0.5"]
        assert (dropdown["value"], dropdown["choices"], dropdown["visible"]) == (expected, expected, True)
        values = {"prompt": "a cat", "steps": 3, "sampler_name": "Euler a", "cfg_scale": 5, "seed": 7}
        values.update(width=64, height=64, override_settings=dropdown["value"])
        outputs = list(generation._run_generation(ctx, t, values))
        infotext = json.loads(outputs[-1][t.generation_info])["infotexts"][0]
        assert "Clip skip: 2" in infotext and "ENSD: 31337" in infotext and "Eta: 0.5" in infotext
        assert ctx.settings.CLIP_stop_at_last_layers == 1 and ctx.settings.eta_ancestral == 1.0
        nothing = generation.paste_updates(ctx, t, "a cat\nSteps: 3, Sampler: Euler a, Seed: 7, Size: 64x64")
        assert nothing[t.fields["override_settings"]]["visible"] is False
        with pytest.raises(gr.Error, match="not a setting"):
            list(generation._run_generation(ctx, t, {**values, "override_settings": ["Nope: 1"]}))
    finally:
        ctx.close()


@pytest.mark.parametrize(("setting", "batches", "first", "second"), [
    (True, 3, "stopping", "interrupted"),  # A1111's default: let the image finish, then a second press stops
    (True, 1, "interrupted", "interrupted"),  # one batch: at once
    (False, 3, "interrupted", "interrupted"),
])  # fmt: skip
def test_interrupt_lets_the_current_batch_finish_first_when_set(setting, batches, first, second, monkeypatch):
    from modules.jobs import Job

    job = Job(fn=lambda job: None)
    job.report(1, 10, 0, batches)
    ctx = SimpleNamespace(jobs=SimpleNamespace(current=job), settings=Settings(interrupt_after_current=setting))
    monkeypatch.setattr(gr, "Info", lambda message: None)

    def state():
        return "interrupted" if job.should_stop() else "stopping" if job.stopping_generation else "running"

    generation.interrupt_job(ctx)
    assert state() == first
    generation.interrupt_job(ctx)
    assert state() == second
    generation.interrupt_job(SimpleNamespace(jobs=SimpleNamespace(current=None), settings=Settings()))  # no job
