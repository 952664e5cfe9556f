"""Extras tab handler (with a stand-in facade), hires-fix form mapping and the send-to helpers."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from modules.ui import extras, hires
from modules.ui.forms import to_request
from modules.ui.sendto import gallery_image


def fake_ctx(calls):
    def run_extras(image, save, **options):
        calls.append((image.size, save, options))
        return image.resize((image.width * 2, image.height * 2))

    return SimpleNamespace(run_extras=run_extras, upscaler_list=lambda: ["Latent", "None", "Lanczos", "R-ESRGAN 4x+"])


def test_single_image_goes_through_the_facade_with_api_names():
    calls = []
    out, html = extras.run(
        fake_ctx(calls),
        {
            "extras_mode": "single",
            "image": Image.new("RGB", (8, 6)),
            "resize_mode": 1,
            "upscaling_resize_w": 64,
            "upscaling_resize_h": 48,
            "upscaling_crop": True,
            "upscaler_1": "Lanczos",
            "upscaler_2": "R-ESRGAN 4x+",
            "extras_upscaler_2_visibility": 0.5,
        },
    )
    assert out[0].size == (16, 12) and "8x6 → 16x12" in html
    _, save, options = calls[0]
    assert save is True and options["resize_mode"] == 1 and options["upscaling_resize_w"] == 64
    assert (options["upscaler_1"], options["upscaler_2"], options["extras_upscaler_2_visibility"]) == (
        "Lanczos",
        "R-ESRGAN 4x+",
        0.5,
    )


def test_directory_mode_saves_without_overwriting(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(), out.mkdir()
    Image.new("RGB", (4, 4)).save(src / "a.png")
    (out / "a.png").write_bytes(b"old")
    calls = []
    shown, html = extras.run(
        fake_ctx(calls), {"extras_mode": "directory", "input_dir": str(src), "output_dir": str(out)}
    )
    assert (out / "a.png").read_bytes() == b"old" and Image.open(out / "a-1.png").size == (8, 8)
    assert calls[0][1] is False and len(shown) == 1 and "Processed 1 image(s)" in html


def test_batch_files_and_errors(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    calls = []
    shown, _ = extras.run(fake_ctx(calls), {"extras_mode": "batch", "image_batch": [str(tmp_path / "b.png")]})
    assert len(shown) == 1 and calls[0][1] is True
    with pytest.raises(gr.Error, match="upload one or more"):
        extras.run(fake_ctx([]), {"extras_mode": "batch", "image_batch": []})
    with pytest.raises(gr.Error, match="does not exist"):
        extras.run(fake_ctx([]), {"extras_mode": "directory", "input_dir": str(tmp_path / "nope")})


def test_upscaler_choices():
    ctx = fake_ctx([])
    assert extras.upscaler_choices(ctx) == ["None", "Lanczos", "R-ESRGAN 4x+"]
    assert hires.upscaler_choices(ctx) == ["Latent", "Lanczos", "R-ESRGAN 4x+"]


def test_hires_fields_to_request():
    request = to_request(
        {
            "prompt": "p",
            "enable_hr": True,
            "hr_scale": 1.5,
            "hr_upscaler": "Latent (bicubic)",
            "hr_second_pass_steps": 10,
            "denoising_strength": 0.7,
            "hr_resize_x": 0,
            "hr_resize_y": 768,
            "hr_sampler_name": "Use same sampler",
        }
    )
    assert request.enable_hr is True and request.hr_scale == 1.5 and request.hr_upscaler == "Latent (bicubic)"
    assert (request.hr_second_pass_steps, request.hr_resize_y, request.denoising_strength) == (10, 768, 0.7)
    assert request.hr_sampler_name is None
    assert to_request({"enable_hr": False}).enable_hr is False
    with pytest.raises(gr.Error, match="Upscale by must be between 1 and 4"):
        to_request({"hr_scale": 5})


def test_hires_size_info():
    assert "from <b>512x512</b> to <b>1024x1024</b>" in hires.size_info(512, 512, 2, 0, 0)
    assert "to <b>768x1152</b>" in hires.size_info(512, 768, 2, 0, 1152)


def test_gallery_image_from_paths_and_pil(tmp_path):
    Image.new("RGB", (3, 5), "red").save(tmp_path / "g.png")
    assert gallery_image([(str(tmp_path / "g.png"), None)], 0).size == (3, 5)
    second = Image.new("RGB", (2, 2))
    assert gallery_image([(Image.new("RGB", (1, 1)), None), (second, "c")], 1) is second
    assert gallery_image([], 0) is None


def test_single_image_through_the_real_context_saves_with_the_original_infotext(tmp_path):
    from modules.context import AppContext
    from modules.flags import parse_flags
    from modules.settings import Settings
    from tests.support.tiny_upscalers import write_upscaler

    write_upscaler("compact", tmp_path / "models" / "RealESRGAN" / "2x_compact.pth")
    flags = parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"], environ={})
    ctx = AppContext(flags=flags, settings=Settings())
    ctx.start()
    try:
        assert "2x_compact" in extras.upscaler_choices(ctx) and "Latent" in hires.upscaler_choices(ctx)
        source = Image.new("RGB", (16, 12), (200, 30, 30))
        source.info["parameters"] = "a cat\nSteps: 20, Seed: 5"
        values = {"extras_mode": "single", "image": source, "upscaling_resize": 2, "upscaler_1": "2x_compact"}
        out, html = extras.run(ctx, {**extras_defaults(), **values})
        assert out[0].size == (32, 24) and "16x12 → 32x24" in html
        (saved,) = (tmp_path / "outputs" / "extras-images").rglob("*.png")
        with Image.open(saved) as png:
            assert png.size == (32, 24) and png.info["parameters"] == "a cat\nSteps: 20, Seed: 5"
            assert png.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: 2x_compact"
        with pytest.raises(gr.Error, match="could not find upscaler"):
            extras.run(ctx, {**extras_defaults(), **values, "upscaler_1": "missing"})
    finally:
        ctx.close()


def extras_defaults():
    return {"resize_mode": 0, "upscaling_crop": True, "upscaler_2": "None", "extras_upscaler_2_visibility": 0}


def test_refiner_fields_map_to_the_request():
    request = to_request({"refiner_checkpoint": "sdxl_refiner.safetensors", "refiner_switch_at": 0.65})
    assert request.refiner_checkpoint == "sdxl_refiner.safetensors" and request.refiner_switch_at == 0.65
    assert to_request({"refiner_checkpoint": "None"}).refiner_checkpoint == "None"  # the engine's "no refiner"


def test_hires_pass_fields_map_to_the_request():
    request = to_request(
        {
            "enable_hr": True,
            "hr_checkpoint_name": "Use same checkpoint",
            "hr_sampler_name": "DPM++ 2M",
            "hr_scheduler": "Use same scheduler",
            "hr_prompt": "a dog",
            "hr_negative_prompt": "",
        }
    )
    assert request.hr_checkpoint_name is None and request.hr_scheduler is None
    assert request.hr_sampler_name == "DPM++ 2M" and request.hr_prompt == "a dog"
