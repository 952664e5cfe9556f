import pytest

from modules.engine.infotext import (
    format_infotext,
    infotext_to_request_fields,
    parse_infotext,
    parsed_to_params,
)

TXT2IMG_HIRES = (
    "masterpiece, best quality, 1girl, (blue eyes:1.2), [smile]\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4)\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 2, "
    "Hires upscaler: Latent, Version: v1.10.1"
)

MULTILINE_LORA = (
    "a photo of a cat\n"
    "sitting on a windowsill <lora:add_detail:0.8>\n"
    "Negative prompt: blurry\n"
    "low quality, easynegative\n"
    "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5.5, Seed: 42, Size: 768x512, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Variation seed: 99, Variation seed strength: 0.3, "
    'Seed resize from: 640x448, ENSD: 31337, RNG: CPU, Lora hashes: "add_detail: 7c6bad76eb54", '
    'TI hashes: "easynegative: c74b4e810b03", Emphasis: No norm, Version: v1.10.1-5-gabcdef0'
)

INPAINT = (
    "portrait of an old man\n"
    "Steps: 25, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 3000000000, Size: 512x512, "
    "Model hash: abcdef0123, Model: realisticVision, Denoising strength: 0.45, Mask blur: 4, "
    "Inpaint area: Only masked, Masked area padding: 32, Masked content: original, Version: v1.10.1"
)

QUOTED_EXTRAS = (
    "castle\n"
    "Negative prompt: fog\n"
    "Steps: 12, Sampler: Euler, Schedule type: Automatic, CFG scale: 4.5, Seed: 7, Size: 1024x1024, "
    'Hires prompt: "castle, at night\\nwith \\"stars\\"", Hires steps: 10, Version: v1.10.1'
)

GOLDEN = [TXT2IMG_HIRES, MULTILINE_LORA, INPAINT, QUOTED_EXTRAS]


@pytest.mark.parametrize("text", GOLDEN)
def test_round_trip_exact(text):
    assert format_infotext(*parsed_to_params(parse_infotext(text, add_defaults=False))) == text


def test_parse_txt2img_hires():
    r = parse_infotext(TXT2IMG_HIRES)
    assert r["Prompt"] == "masterpiece, best quality, 1girl, (blue eyes:1.2), [smile]"
    assert r["Negative prompt"] == "lowres, bad anatomy, (worst quality:1.4)"
    assert r["Steps"] == "20"
    assert (r["Size-1"], r["Size-2"]) == ("512", "768")
    assert "Size" not in r
    assert r["Clip skip"] == "2"
    assert r["Hires upscaler"] == "Latent"
    assert r["Version"] == "v1.10.1"
    assert r["Emphasis"] == "Original"  # default added because the prompt uses brackets
    assert r["RNG"] == "GPU"  # default


def test_parse_multiline_and_quoted():
    r = parse_infotext(MULTILINE_LORA)
    assert r["Prompt"] == "a photo of a cat\nsitting on a windowsill <lora:add_detail:0.8>"
    assert r["Negative prompt"] == "blurry\nlow quality, easynegative"
    assert r["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert r["Seed resize from-1"] == "640"
    assert r["Emphasis"] == "No norm"
    assert r["Clip skip"] == "1"
    q = parse_infotext(QUOTED_EXTRAS)
    assert q["Hires prompt"] == 'castle, at night\nwith "stars"'


def test_defaults_only_when_missing():
    r = parse_infotext(INPAINT)
    assert r["Negative prompt"] == ""
    assert r["Masked area padding"] == "32"
    assert r["Mask mode"] == "Inpaint masked"
    assert r["Hires resize-1"] == 0
    assert r["Schedule type"] == "Karras"
    assert "Emphasis" not in r
    bare = parse_infotext(INPAINT, add_defaults=False)
    assert "Mask mode" not in bare and "Clip skip" not in bare


def test_last_line_needs_three_params():
    r = parse_infotext("a cat\nSteps: 20, Seed: 5", add_defaults=False)
    assert r == {"Prompt": "a cat\nSteps: 20, Seed: 5", "Negative prompt": ""}
    r = parse_infotext("a cat\nSteps: 20, Seed: 5, Sampler: Euler", add_defaults=False)
    assert r["Prompt"] == "a cat" and r["Sampler"] == "Euler"


def test_legacy_first_pass_size():
    r = parse_infotext("x\nSteps: 20, Size: 1024x1024, First pass size: 0x0, Seed: 1")
    assert (r["Size-1"], r["Size-2"]) == (512, 512)
    assert (r["Hires resize-1"], r["Hires resize-2"]) == (1024, 1024)


def test_hypernet_becomes_tag():
    r = parse_infotext("x\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.5")
    assert r["Prompt"] == "x<hypernet:anime:0.5>"


def test_format_order_none_and_bare_keys():
    params = {
        "Version": "v1.10.1",
        "Lora hashes": "a: 1, b: 2",
        "Seed": 5,
        "Steps": 20,
        "Clip skip": None,
        "Tiling": "Tiling",
        "User": "bob",
        "Emphasis": "No norm",
    }
    text = format_infotext("p", "", params)
    assert text == (
        'p\nSteps: 20, Seed: 5, Tiling, Lora hashes: "a: 1, b: 2", Emphasis: No norm, Version: v1.10.1, User: bob'
    )


def test_format_quotes_newlines_and_unicode():
    text = format_infotext("猫", "neg", {"Steps": 1, "Hires prompt": "é\nb", "Seed": 2})
    assert text == '猫\nNegative prompt: neg\nSteps: 1, Seed: 2, Hires prompt: "é\\nb"'


def test_request_fields_txt2img():
    f = infotext_to_request_fields(parse_infotext(TXT2IMG_HIRES))
    assert f["prompt"].startswith("masterpiece")
    assert (f["steps"], f["sampler_name"], f["scheduler"]) == (20, "DPM++ 2M", "Karras")
    assert (f["cfg_scale"], f["seed"], f["width"], f["height"]) == (7.0, 1234567890, 512, 768)
    assert f["denoising_strength"] == 0.7
    assert f["clip_skip"] == 2
    assert f["enable_hr"] is True and f["hr_scale"] == 2.0
    assert f["hr_sampler_name"] == "Use same sampler"


def test_request_fields_variation_and_options():
    f = infotext_to_request_fields(parse_infotext(MULTILINE_LORA))
    assert (f["subseed"], f["subseed_strength"]) == (99, 0.3)
    assert (f["seed_resize_from_w"], f["seed_resize_from_h"]) == (640, 448)
    assert (f["eta_noise_seed_delta"], f["randn_source"], f["emphasis"]) == (31337, "CPU", "No norm")
    assert f["clip_skip"] == 1
    assert "enable_hr" not in f


def test_request_fields_legacy_sampler_and_bad_values():
    f = infotext_to_request_fields(parse_infotext("x\nSteps: abc, Sampler: DPM++ 2M SDE Karras, Seed: 3"))
    assert (f["sampler_name"], f["scheduler"]) == ("DPM++ 2M SDE", "Karras")
    assert "steps" not in f
    assert f["seed"] == 3


REFINER_HIRES_SDXL = (
    "a lighthouse at dusk\n"
    "Negative prompt: text, watermark\n"
    "Steps: 30, Sampler: DPM++ 2M SDE, Schedule type: Align Your Steps, CFG scale: 6, Seed: 77, Size: 1024x1024, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.35, Hires resize: 1536x1536, "
    "Hires steps: 12, Hires upscaler: R-ESRGAN 4x+, Hires sampler: DPM fast, Hires schedule type: Karras, "
    "Hires checkpoint: sdxl_other, Hires negative prompt: blurry, Refiner: sd_xl_refiner_1.0 [7440042bbd], "
    "Refiner switch at: 0.8, Version: v1.10.1"
)

PIX2PIX_INPAINT = (
    "make it winter\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Image CFG scale: 1.5, Seed: 5, "
    "Size: 512x512, Model hash: fbc31a67aa, Model: instruct-pix2pix-00-22000, Denoising strength: 1, Mask blur: 8, "
    "Masked content: latent noise, Mask mode: Inpaint not masked, Version: v1.10.1"
)


@pytest.mark.parametrize("text", [REFINER_HIRES_SDXL, PIX2PIX_INPAINT])
def test_round_trip_exact_refiner_hires_pix2pix(text):
    assert format_infotext(*parsed_to_params(parse_infotext(text, add_defaults=False))) == text


def test_request_fields_refiner_hires_and_inpaint_labels():
    fields = infotext_to_request_fields(parse_infotext(REFINER_HIRES_SDXL))
    assert fields["scheduler"] == "Align Your Steps" and fields["hr_sampler_name"] == "DPM fast"
    assert (fields["hr_resize_x"], fields["hr_resize_y"], fields["enable_hr"]) == (1536, 1536, True)
    assert fields["hr_checkpoint_name"] == "sdxl_other" and fields["hr_negative_prompt"] == "blurry"
    assert fields["refiner_checkpoint"] == "sd_xl_refiner_1.0 [7440042bbd]" and fields["refiner_switch_at"] == 0.8
    edit = infotext_to_request_fields(parse_infotext(PIX2PIX_INPAINT))
    assert edit["image_cfg_scale"] == 1.5 and edit["mask_blur"] == 8
    assert (edit["inpainting_fill"], edit["inpainting_mask_invert"]) == (2, 1)
    assert infotext_to_request_fields(parse_infotext(INPAINT))["inpaint_full_res"] is True
    bad = infotext_to_request_fields(parse_infotext(PIX2PIX_INPAINT.replace("latent noise", "glitter")))
    assert "inpainting_fill" not in bad  # an unknown label is skipped, not guessed


def test_sampler_parameter_keys_map_to_settings():
    text = (
        "a [b:c:1] cat\nSteps: 20, Sampler: UniPC, Schedule type: Beta, CFG scale: 7, Seed: 1, Size: 64x64, "
        "Discard penultimate sigma: True, Schedule min sigma: 0.1, Schedule max sigma: 10, Schedule rho: 5, "
        "Beta scheduler alpha: 0.4, Beta schedule beta: 0.7, Eta: 0.3, Eta DDIM: 0.2, Sigma churn: 1, "
        "Sigma noise: 0.99, UniPC variant: bh2, UniPC order: 2, NGMS: 0.8, NGMS all steps: True, Version: v1.5.1"
    )
    fields = infotext_to_request_fields(parse_infotext(text))
    sampler_keys = {"always_discard_next_to_last_sigma", "sigma_min", "sigma_max", "rho", "beta_dist_alpha"}
    sampler_keys |= {"beta_dist_beta", "eta_ancestral", "eta_ddim", "s_churn", "s_noise", "uni_pc_variant"}
    sampler_keys |= {"uni_pc_order", "use_old_scheduling", "s_min_uncond", "s_min_uncond_all"}
    assert {k: fields[k] for k in sampler_keys if k in fields} == {
        "always_discard_next_to_last_sigma": True,
        "sigma_min": 0.1,
        "sigma_max": 10.0,
        "rho": 5.0,
        "beta_dist_alpha": 0.4,
        "beta_dist_beta": 0.7,
        "eta_ancestral": 0.3,
        "eta_ddim": 0.2,
        "s_churn": 1.0,
        "s_noise": 0.99,
        "uni_pc_variant": "bh2",
        "uni_pc_order": 2,
        "s_min_uncond": 0.8,
        "s_min_uncond_all": True,
        "use_old_scheduling": True,  # A1111's back-compat: prompt editing in an infotext older than 1.6.0
    }
    newer = infotext_to_request_fields(parse_infotext(text.replace("v1.5.1", "v1.10.1")))
    assert "use_old_scheduling" not in newer
