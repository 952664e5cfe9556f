"""Request/response models of /sdapi/v1: A1111 API defaults, legacy keys, conversion and validation messages."""

import base64
import io
import json

import pytest
from PIL import Image
from pydantic import ValidationError

from modules.api.schemas import ImageResponse, ImageToImageRequest, TextToImageRequest
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

# The base payload of A1111's own test/test_txt2img.py, with the legacy keys it sends.
A1111_TXT2IMG = {
    "batch_size": 1,
    "cfg_scale": 7,
    "denoising_strength": 0,
    "enable_hr": False,
    "eta": 0,
    "firstphase_height": 0,
    "firstphase_width": 0,
    "height": 64,
    "n_iter": 1,
    "negative_prompt": "",
    "prompt": "example prompt",
    "restore_faces": False,
    "s_churn": 0,
    "s_noise": 1,
    "s_tmax": 0,
    "s_tmin": 0,
    "sampler_index": "Euler a",
    "seed": -1,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "steps": 3,
    "styles": [],
    "subseed": -1,
    "subseed_strength": 0,
    "tiling": False,
    "width": 64,
}


def png_b64(size=(64, 64), color=(10, 20, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_txt2img_api_defaults_differ_from_ui_defaults():
    req = TextToImageRequest()
    assert (req.steps, req.sampler_name, req.sampler_index, req.save_images) == (50, None, "Euler", False)
    assert (req.send_images, req.width, req.height, req.cfg_scale, req.seed) == (True, 512, 512, 7.0, -1)
    assert req.override_settings_restore_afterwards is True
    assert req.enable_hr is False and req.hr_scale == 2.0 and req.denoising_strength == 0.75
    engine = req.to_request()
    assert isinstance(engine, GenerationRequest)
    assert (engine.steps, engine.sampler_name, engine.scheduler) == (50, "Euler", "Automatic")
    assert engine.mode == "txt2img"


def test_img2img_defaults():
    req = ImageToImageRequest()
    assert req.inpaint_full_res is True and req.include_init_images is False
    assert (req.mask_blur_x, req.mask_blur_y, req.resize_mode, req.inpainting_fill) == (4, 4, 0, 0)
    assert req.init_images is None and req.steps == 50


def test_a1111_payload_with_legacy_keys_is_accepted():
    req = TextToImageRequest.model_validate({**A1111_TXT2IMG, "unknown_future_key": 1, "alwayson_scripts": {"X": {}}})
    engine = req.to_request()
    assert engine.sampler_name == "Euler a"  # sampler_index is used when sampler_name is null
    assert (engine.width, engine.height, engine.steps, engine.prompt) == (64, 64, 3, "example prompt")
    assert not hasattr(req, "unknown_future_key")
    req.check_supported()  # restore_faces false, eta, s_churn, alwayson_scripts: accepted, no error


def test_sampler_name_wins_over_sampler_index_and_scheduler_passes_through():
    req = TextToImageRequest(sampler_name="k_euler_a", sampler_index="DDIM", scheduler="karras")
    engine = req.to_request()
    assert (engine.sampler_name, engine.scheduler) == ("k_euler_a", "karras")
    assert req.echo()["sampler_name"] == "k_euler_a"


def test_empty_sampler_name_falls_back_to_sampler_index():
    assert TextToImageRequest(sampler_name="").to_request().sampler_name == "Euler"


def test_a1111_img2img_payload_coerces_bool_and_mask_blur():
    req = ImageToImageRequest.model_validate(
        {"init_images": [png_b64()], "inpainting_mask_invert": False, "mask_blur": 4, "include_init_images": True}
    )
    assert req.inpainting_mask_invert == 0
    engine = req.to_request()
    assert engine.mode == "img2img" and engine.init_images[0].size == (64, 64)


def test_mask_is_decoded():
    engine = ImageToImageRequest(init_images=[png_b64()], mask=png_b64(color=(255, 255, 255))).to_request()
    assert engine.mask is not None and engine.mask.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", "many"), ("width", 64.5), ("seed", None), ("batch_size", [1]), ("prompt", {"a": 1}), ("styles", "x")],
)
def test_type_errors_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        TextToImageRequest.model_validate({field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"script_name": "x/y/z plot"}, "script_name 'x/y/z plot' not found"),
    ],
)
def test_unsupported_features_are_refused_with_the_field_named(payload, needle):
    with pytest.raises(InvalidRequestError, match=needle.replace("/", ".")):
        TextToImageRequest.model_validate(payload).check_supported()


def test_ignored_features_are_logged(caplog):
    caplog.set_level("INFO", logger="modules.api.schemas")
    TextToImageRequest(
        restore_faces=True, tiling=True, alwayson_scripts={"ADetailer": {"args": [False]}}
    ).check_supported()
    assert "restore_faces" in caplog.text and "ADetailer" in caplog.text
    assert "tiling" not in caplog.text  # it works (engine/tiling.py)


def test_undecodable_init_image_names_the_field():
    with pytest.raises(InvalidRequestError, match=r"init_images\[1\] is not valid base64"):
        ImageToImageRequest(init_images=[png_b64(), "!!!not base64!!!"]).to_request()
    with pytest.raises(InvalidRequestError, match=r"mask is base64 but not an image"):
        ImageToImageRequest(init_images=[png_b64()], mask=base64.b64encode(b"hello").decode()).to_request()


def test_echo_fills_defaults_and_blanks_init_images():
    req = ImageToImageRequest(init_images=[png_b64()], prompt="p")
    echo = req.echo()
    assert echo["steps"] == 50 and echo["sampler_name"] == "Euler" and echo["prompt"] == "p"
    assert echo["init_images"] == [] and echo["mask"] is None
    kept = ImageToImageRequest(init_images=["abc"], include_init_images=True).echo()
    assert kept["init_images"] == ["abc"]
    json.dumps(echo)  # the echo must be JSON-serialisable


def test_response_info_is_a_string():
    resp = ImageResponse(images=["x"], parameters={"a": 1}, info=json.dumps({"seed": 1}))
    body = resp.model_dump()
    assert isinstance(body["info"], str) and json.loads(body["info"]) == {"seed": 1}
    with pytest.raises(ValidationError):
        ImageResponse(info={"seed": 1})
