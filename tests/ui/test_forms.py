"""Form values → GenerationRequest, infotext paste values, and the Settings field → widget mapping."""

from __future__ import annotations

import gradio as gr
import pytest

from modules.engine.types import GenerationRequest
from modules.settings import Settings
from modules.ui import forms

SAMPLERS = ["Euler", "Euler a", "DPM++ 2M"]
SCHEDULES = ["Automatic", "Karras"]


def form(**overrides):
    values = {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "styles": [],
        "sampler_name": "DPM++ 2M",
        "scheduler": "Automatic",
        "steps": 20,
        "width": 512,
        "height": 512,
        "n_iter": 1,
        "batch_size": 1,
        "cfg_scale": 7,
        "seed": -1,
        "subseed_show": False,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_w": 0,
        "seed_resize_from_h": 0,
    }
    values.update(overrides)
    return values


def test_to_request_maps_every_field_by_name():
    req = forms.to_request(
        form(steps=4.0, width=64, height=128, n_iter=3, batch_size=2, cfg_scale=6.5, seed=1234.0, styles=["s1"]),
        samplers=SAMPLERS,
        schedulers=SCHEDULES,
    )
    assert req == GenerationRequest(
        prompt="a cat",
        negative_prompt="blurry",
        styles=("s1",),
        sampler_name="DPM++ 2M",
        scheduler="Automatic",
        steps=4,
        width=64,
        height=128,
        n_iter=3,
        batch_size=2,
        cfg_scale=6.5,
        seed=1234,
    )
    assert isinstance(req.steps, int) and isinstance(req.seed, int) and isinstance(req.cfg_scale, float)


def test_to_request_defaults_and_empty_seed():
    req = forms.to_request({"prompt": "x", "seed": None})
    assert req.seed == -1
    assert req.steps == GenerationRequest().steps
    assert req.mode == "txt2img"


def test_variation_seed_used_only_with_extra_checked():
    extra = {"subseed": 77, "subseed_strength": 0.3, "seed_resize_from_w": 256, "seed_resize_from_h": 320}
    off = forms.to_request(form(subseed_show=False, **extra))
    assert (off.subseed, off.subseed_strength, off.seed_resize_from_w, off.seed_resize_from_h) == (-1, 0.0, -1, -1)
    on = forms.to_request(form(subseed_show=True, **extra))
    assert (on.subseed, on.subseed_strength, on.seed_resize_from_w, on.seed_resize_from_h) == (77, 0.3, 256, 320)
    zero = forms.to_request(form(subseed_show=True, seed_resize_from_w=0, seed_resize_from_h=0))
    assert (zero.seed_resize_from_w, zero.seed_resize_from_h) == (-1, -1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "Sampling steps must be between 1 and 150"),
        ({"steps": 151}, "Sampling steps must be between 1 and 150"),
        ({"steps": 4.5}, "must be a whole number"),
        ({"steps": "abc"}, "is not a number"),
        ({"steps": None}, "a number is required"),
        ({"width": 60}, "Width must be between 64 and 2048"),
        ({"height": 100}, "Height must be a multiple of 8"),
        ({"batch_size": 9}, "Batch size must be between 1 and 8"),
        ({"n_iter": 101}, "Batch count must be between 1 and 100"),
        ({"cfg_scale": 31}, "CFG Scale must be between 1 and 30"),
        ({"seed": 1.5}, "must be a whole number"),
        ({"sampler_name": "Nope"}, "Sampling method: unknown value 'Nope'"),
        ({"scheduler": "Weird"}, "Schedule type: unknown value 'Weird'"),
    ],
)
def test_to_request_rejects_bad_values_with_readable_errors(overrides, message):
    with pytest.raises(gr.Error) as info:
        forms.to_request(form(**overrides), samplers=SAMPLERS, schedulers=SCHEDULES)
    assert message in str(info.value.message)


def test_paste_values_respects_send_seed_and_send_size():
    fields = {
        "prompt": "p",
        "negative_prompt": "n",
        "steps": 4,
        "sampler_name": "Euler a",
        "scheduler": "Karras",
        "cfg_scale": 5.0,
        "seed": 42,
        "width": 64,
        "height": 96,
        "subseed": 9,
        "subseed_strength": 0.25,
        "clip_skip": 2,
    }
    choices = {"sampler_name": SAMPLERS, "scheduler": SCHEDULES}
    both = forms.paste_values(fields, Settings(), choices)
    assert both == {
        "prompt": "p",
        "negative_prompt": "n",
        "steps": 4,
        "sampler_name": "Euler a",
        "scheduler": "Karras",
        "cfg_scale": 5.0,
        "seed": 42,
        "width": 64,
        "height": 96,
        "subseed": 9,
        "subseed_strength": 0.25,
        "subseed_show": True,
    }
    neither = forms.paste_values(fields, Settings(send_seed=False, send_size=False), choices)
    assert not {"seed", "subseed", "subseed_strength", "width", "height", "subseed_show"} & set(neither)
    assert neither["steps"] == 4


def test_paste_values_drops_unknown_dropdown_choices():
    out = forms.paste_values({"sampler_name": "Mystery", "steps": 3}, Settings(), {"sampler_name": SAMPLERS})
    assert out == {"steps": 3}


def test_widget_spec_mapping_from_settings_schema():
    specs = {s.key: s for s in forms.settings_specs()}
    assert specs["samples_save"].kind == "checkbox"
    assert specs["samples_format"].kind == "dropdown"
    assert specs["samples_format"].choices == ("png", "jpg", "jpeg", "webp")
    clip = specs["CLIP_stop_at_last_layers"]
    assert (clip.kind, clip.minimum, clip.maximum, clip.step, clip.is_int) == ("slider", 1, 12, 1, True)
    assert clip.label == "Clip skip" and clip.elem_id == "setting_CLIP_stop_at_last_layers"
    ensd = specs["eta_noise_seed_delta"]
    assert (ensd.kind, ensd.minimum, ensd.maximum, ensd.is_int) == ("number", 0, None, True)
    assert specs["outdir_samples"].kind == "textbox"
    assert specs["send_seed"].section == "ui"


def test_settings_specs_exclude_and_group_by_section():
    specs = forms.settings_specs(exclude=["sd_model_checkpoint"])
    assert "sd_model_checkpoint" not in {s.key for s in specs}
    assert len(specs) == len(Settings.model_fields) - 1
    groups = forms.group_by_section(specs)
    assert next(iter(groups)) == "Stable Diffusion"
    assert "CLIP_stop_at_last_layers" in {s.key for s in groups["Stable Diffusion"]}
    assert {s.key for s in groups["Saving images/grids"]} >= {"samples_save", "samples_format"}


def test_settings_changes_and_description():
    current = Settings()
    values = {"CLIP_stop_at_last_layers": 2.0, "samples_save": True, "jpeg_quality": 80, "outdir_save": None}
    changes = forms.settings_changes(values, current)
    assert changes == {"CLIP_stop_at_last_layers": 2, "outdir_save": ""}
    assert isinstance(changes["CLIP_stop_at_last_layers"], int)
    assert forms.describe_changes(changes) == "2 settings changed: CLIP_stop_at_last_layers, outdir_save."
    assert forms.describe_changes({"a": 1}) == "1 setting changed: a."
    assert forms.describe_changes({}) == "Nothing changed."


def test_override_entries_round_trip_to_settings():
    from modules.settings import Settings, infotext_settings
    from modules.ui.forms import override_entries, overrides_from_entries

    fields = {"steps": 20, "clip_skip": 2, "eta_ddim": 0.3, "s_noise": 1.0, "uni_pc_variant": "nope", "seed": 1}
    pasted = infotext_settings(fields, {"steps", "seed"})
    assert pasted == {"CLIP_stop_at_last_layers": 2, "eta_ddim": 0.3, "s_noise": 1.0, "uni_pc_variant": "nope"}
    entries = override_entries(pasted, Settings())  # s_noise is the default already; "nope" is not a variant
    assert entries == ["Clip skip: 2", "Eta for DDIM: 0.3"]
    overrides = overrides_from_entries(entries)
    assert overrides == {"CLIP_stop_at_last_layers": "2", "eta_ddim": "0.3"}
    applied = Settings().with_overrides(overrides)
    assert (applied.CLIP_stop_at_last_layers, applied.eta_ddim) == (2, 0.3)
