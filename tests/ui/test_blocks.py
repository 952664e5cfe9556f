"""create_ui(ctx) builds with a real AppContext; the A1111 element ids, tab labels and title are there."""

from __future__ import annotations

import pytest

from modules.ui import create_ui

REQUIRED_IDS = [
    "tabs",
    "tab_txt2img",
    "tab_img2img",
    "tab_pnginfo",
    "tab_settings",
    "quicksettings",
    "setting_sd_model_checkpoint",
    "refresh_sd_model_checkpoint",
    "txt2img_prompt",
    "txt2img_neg_prompt",
    "txt2img_token_counter",
    "txt2img_negative_token_counter",
    "txt2img_generate",
    "txt2img_interrupt",
    "txt2img_skip",
    "txt2img_styles",
    "txt2img_paste",
    "txt2img_sampling",
    "txt2img_scheduler",
    "txt2img_steps",
    "txt2img_width",
    "txt2img_height",
    "txt2img_batch_count",
    "txt2img_batch_size",
    "txt2img_cfg_scale",
    "txt2img_seed",
    "txt2img_random_seed",
    "txt2img_reuse_seed",
    "txt2img_subseed_show",
    "txt2img_subseed",
    "txt2img_subseed_strength",
    "txt2img_seed_resize_from_w",
    "txt2img_seed_resize_from_h",
    "txt2img_gallery",
    "html_info_txt2img",
    "generation_info_txt2img",
    "pnginfo_image",
    "pnginfo_generation_info",
    "settings_submit",
    "settings_result",
    "setting_CLIP_stop_at_last_layers",
    "setting_samples_format",
    "setting_send_seed",
    "setting_send_size",
    # img2img (issue 4)
    "mode_img2img",
    "img2img_image",
    "img2img_sketch",
    "img2maskimg",
    "inpaint_sketch",
    "img_inpaint_base",
    "img_inpaint_mask",
    "img2img_batch_input_dir",
    "img2img_batch_output_dir",
    "img2img_batch_inpaint_mask_dir",
    "resize_mode",
    "img2img_scale",
    "img2img_width",
    "img2img_denoising_strength",
    "img2img_mask_blur",
    "img2img_mask_mode",
    "img2img_inpainting_fill",
    "img2img_inpaint_full_res",
    "img2img_inpaint_full_res_padding",
    "img2img_gallery",
    "html_info_img2img",
    "generation_info_img2img",
    "img2img_token_counter",
    "img2img_send_to_inpaint",
    # hires fix
    "txt2img_hr",
    "txt2img_enable_hr",
    "txt2img_hr_upscaler",
    "txt2img_hires_steps",
    "txt2img_denoising_strength",
    "txt2img_hr_scale",
    "txt2img_hr_resize_x",
    "txt2img_hr_resize_y",
    "hr_checkpoint",
    "hr_sampler",
    "hr_scheduler",
    "hires_prompt",
    "hires_neg_prompt",
    # refiner and img2img script
    "txt2img_refiner",
    "txt2img_refiner_checkpoint",
    "txt2img_refiner_switch_at",
    "img2img_refiner_checkpoint",
    "script_list",
    # send-to and Extras
    "txt2img_send_to_img2img",
    "txt2img_send_to_inpaint",
    "txt2img_send_to_extras",
    "pnginfo_send_to_img2img",
    "pnginfo_send_to_inpaint",
    "pnginfo_send_to_extras",
    "tab_extras",
    "extras_image",
    "extras_image_batch",
    "extras_batch_input_dir",
    "extras_upscaler_1",
    "extras_upscaler_2",
    "extras_upscaler_2_visibility",
    "extras_upscaling_resize",
    "extras_upscaling_resize_w",
    "extras_upscaling_crop",
    "extras_generate",
    "extras_gallery",
    "html_info_extras",
]


@pytest.fixture(scope="module")
def page(shared_empty_ctx):
    blocks = create_ui(shared_empty_ctx)
    by_id = {}
    for comp in blocks.config["components"]:
        elem_id = comp["props"].get("elem_id")
        if elem_id:
            assert elem_id not in by_id, f"duplicate elem_id {elem_id}"
            by_id[elem_id] = comp
    return blocks, by_id


def test_title(page):
    blocks, _ = page
    assert blocks.config["title"] == "Stable Diffusion"


def test_required_elem_ids_present(page):
    _, by_id = page
    missing = [i for i in REQUIRED_IDS if i not in by_id]
    assert not missing, f"missing elem_ids: {missing}"


def test_tabs_labels_ids_and_order(page):
    blocks, by_id = page
    tabs = [c["props"] for c in blocks.config["components"] if c["type"] == "tabitem"]
    top = [(p["label"], p["id"], p["elem_id"]) for p in tabs if p["elem_id"].startswith("tab_")]
    assert top == [
        ("txt2img", "txt2img", "tab_txt2img"),
        ("img2img", "img2img", "tab_img2img"),
        ("Extras", "extras", "tab_extras"),
        ("PNG Info", "pnginfo", "tab_pnginfo"),
        ("Settings", "settings", "tab_settings"),
    ]
    assert by_id["tabs"]["type"] == "tabs"
    for tab in ("txt2img", "img2img"):  # A1111's extra-network tabs beside the generation controls
        inner = [
            (p["label"], p["elem_id"]) for p in tabs if p["elem_id"].startswith(f"{tab}_") and "_tab" in p["elem_id"]
        ]
        assert inner[:1] == [("Generation", f"{tab}_generation_tab")] and ("Lora", f"{tab}_lora_tab") in inner
        assert ("Textual Inversion", f"{tab}_textual_inversion_tab") in inner
        assert ("Checkpoints", f"{tab}_checkpoints_tab") in inner
        assert by_id[f"{tab}_lora_cards"]["type"] == by_id[f"{tab}_checkpoints_cards"]["type"] == "gallery"


@pytest.mark.parametrize(
    ("elem_id", "kind", "props"),
    [
        ("txt2img_prompt", "textbox", {"label": "Prompt", "lines": 3}),
        ("txt2img_neg_prompt", "textbox", {"label": "Negative prompt"}),
        ("txt2img_generate", "button", {"value": "Generate", "variant": "primary"}),
        ("txt2img_interrupt", "button", {"value": "Interrupt"}),
        ("txt2img_skip", "button", {"value": "Skip"}),
        ("txt2img_styles", "dropdown", {"label": "Styles", "multiselect": True}),
        ("txt2img_sampling", "dropdown", {"label": "Sampling method", "value": "DPM++ 2M"}),
        ("txt2img_scheduler", "dropdown", {"label": "Schedule type", "value": "Automatic"}),
        ("txt2img_steps", "slider", {"label": "Sampling steps", "minimum": 1, "maximum": 150, "value": 20}),
        ("txt2img_width", "slider", {"label": "Width", "minimum": 64, "maximum": 2048, "step": 8, "value": 512}),
        ("txt2img_height", "slider", {"label": "Height", "minimum": 64, "maximum": 2048, "step": 8, "value": 512}),
        ("txt2img_batch_count", "slider", {"label": "Batch count", "minimum": 1, "maximum": 100, "value": 1}),
        ("txt2img_batch_size", "slider", {"label": "Batch size", "minimum": 1, "maximum": 8, "value": 1}),
        ("txt2img_cfg_scale", "slider", {"label": "CFG Scale", "minimum": 1, "maximum": 30, "step": 0.5, "value": 7}),
        ("txt2img_seed", "number", {"label": "Seed", "value": -1}),
        ("txt2img_random_seed", "button", {"value": "🎲"}),
        ("txt2img_reuse_seed", "button", {"value": "♻️"}),
        ("txt2img_subseed_show", "checkbox", {"label": "Extra", "value": False}),
        ("txt2img_subseed", "number", {"label": "Variation seed", "value": -1}),
        ("txt2img_subseed_strength", "slider", {"label": "Variation strength", "minimum": 0, "maximum": 1}),
        ("txt2img_gallery", "gallery", {"label": "Output", "columns": 4}),
        ("txt2img_token_counter", "html", {"value": "<span>0/75</span>"}),
        ("generation_info_txt2img", "textbox", {"visible": "hidden"}),
        ("html_info_txt2img", "html", {}),
        ("pnginfo_image", "image", {}),
        ("pnginfo_generation_info", "textbox", {"visible": "hidden"}),
        ("setting_sd_model_checkpoint", "dropdown", {"label": "Stable Diffusion checkpoint"}),
        ("settings_submit", "button", {"value": "Apply settings"}),
        ("setting_CLIP_stop_at_last_layers", "slider", {"label": "Clip skip", "minimum": 1, "maximum": 12}),
        ("setting_samples_save", "checkbox", {"label": "Always save all generated images", "value": True}),
    ],
)
def test_component_kinds_and_a1111_defaults(page, elem_id, kind, props):
    _, by_id = page
    comp = by_id[elem_id]
    assert comp["type"] == kind
    for key, value in props.items():
        assert comp["props"][key] == value, f"{elem_id}.{key}"


def test_sampler_and_schedule_choices_come_from_the_context(page, shared_empty_ctx):
    _, by_id = page
    samplers = [c[0] for c in by_id["txt2img_sampling"]["props"]["choices"]]
    schedules = [c[0] for c in by_id["txt2img_scheduler"]["props"]["choices"]]
    assert samplers == shared_empty_ctx.sampler_names() and "Euler a" in samplers
    assert schedules == shared_empty_ctx.schedule_labels() and schedules[0] == "Automatic"


def test_no_checkpoint_notice_names_the_folder(page, shared_empty_ctx):
    _, by_id = page
    notice = by_id["no_checkpoint_notice"]["props"]
    assert notice["visible"] is True
    assert str(shared_empty_ctx.flags.checkpoint_dirs[-1]) in notice["value"]
    assert by_id["setting_sd_model_checkpoint"]["props"]["choices"] == []


def test_every_setting_has_a_widget_except_quicksettings(page, shared_empty_ctx):
    _, by_id = page
    keys = {i.removeprefix("setting_") for i in by_id if i.startswith("setting_")}
    assert keys == set(type(shared_empty_ctx.settings).model_fields)


def test_generate_is_a_named_api_endpoint(page):
    blocks, _ = page
    names = {d.get("api_name") for d in blocks.config["dependencies"]}
    assert {"txt2img", "pnginfo", "apply_settings", "select_checkpoint"} <= names


def test_styles_and_vae_choices_come_from_the_users_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tests.ui.conftest import make_context

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nNoir,film noir,\nPastel,pastel,\n", "utf-8")
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "models" / "VAE" / "mse.safetensors"))
    ctx = make_context(tmp_path)
    try:
        by_id = {c["props"].get("elem_id"): c["props"] for c in create_ui(ctx).config["components"]}
        for tab in ("txt2img", "img2img"):
            assert [c[0] for c in by_id[f"{tab}_styles"]["choices"]] == ["Noir", "Pastel"]
        assert [c[0] for c in by_id["setting_sd_vae"]["choices"]] == ["Automatic", "None", "mse.safetensors"]
    finally:
        ctx.close()
