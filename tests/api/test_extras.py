"""Extras and upscalers over real HTTP: /extra-single-image, /extra-batch-images, /upscalers, hires with a model."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.api.conftest import decode_image, info_of, start_server
from tests.support.tiny_upscalers import write_upscaler

pytestmark = pytest.mark.slow  # drives a real server


@pytest.fixture(scope="module")
def up_server(tiny_models_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("upscalers")
    write_upscaler("esrgan", models / "esrgan" / "4x_tiny.pth")
    write_upscaler("compact", models / "realesrgan" / "2x_compact.safetensors")
    flags = ["--esrgan-models-path", str(models / "esrgan"), "--realesrgan-models-path", str(models / "realesrgan")]
    yield from start_server(tmp_path_factory.mktemp("webui-extras"), tiny_models_dir, flags)


def b64_png(w=40, h=24, parameters=None):
    image = Image.fromarray((np.random.RandomState(1).rand(h, w, 3) * 255).astype("uint8"))
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def test_upscalers_list(up_server):
    items = {i["name"]: i for i in up_server.get("upscalers").json()}
    assert list(items)[:3] == ["None", "Lanczos", "Nearest"]
    assert items["4x_tiny"]["model_path"].endswith("4x_tiny.pth") and items["4x_tiny"]["scale"] == 4
    assert items["2x_compact"]["scale"] == 2


def test_extra_single_image_with_a_model_keeps_the_infotext(up_server):
    body = up_server.post(
        "extra-single-image",
        {"image": b64_png(parameters="a cat\nSteps: 20, Seed: 1"), "upscaling_resize": 2, "upscaler_1": "4x_tiny"},
    ).json()
    image = decode_image(body["image"])
    assert image.size == (80, 48)
    assert image.info["parameters"] == "a cat\nSteps: 20, Seed: 1"
    assert "Postprocess upscale by: 2, Postprocess upscaler: 4x_tiny" in body["html_info"]
    assert not list((up_server.data_dir / "outputs").rglob("*.png"))  # the API does not save (A1111)


def test_extra_single_image_lanczos_as_a1111_test(up_server):
    # A1111's own test_simple_upscaling_performed payload shape
    payload = {
        "resize_mode": 0,
        "show_extras_results": True,
        "gfpgan_visibility": 0,
        "codeformer_visibility": 0,
        "codeformer_weight": 0,
        "upscaling_resize": 2,
        "upscaling_resize_w": 128,
        "upscaling_resize_h": 128,
        "upscaling_crop": True,
        "upscaler_1": "Lanczos",
        "upscaler_2": "None",
        "extras_upscaler_2_visibility": 0,
        "image": b64_png(64, 64),
    }
    response = up_server.post("extra-single-image", payload)
    assert response.status_code == 200 and decode_image(response.json()["image"]).size == (128, 128)


def test_extra_batch_images_scale_to_with_crop(up_server):
    body = up_server.post(
        "extra-batch-images",
        {
            "imageList": [{"data": b64_png(), "name": "a.png"}, {"data": b64_png(30, 30), "name": "b.png"}],
            "resize_mode": 1,
            "upscaling_resize_w": 64,
            "upscaling_resize_h": 64,
            "upscaler_1": "2x_compact",
            "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.3,
        },
    ).json()
    assert [decode_image(b).size for b in body["images"]] == [(64, 64), (64, 64)]
    assert "Postprocess upscaler 2: Nearest" in body["html_info"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"upscaler_1": "ESRGAN_9x"}, "could not find upscaler named 'ESRGAN_9x'"),
        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 1}, "face restoration"),
        ({"upscaler_1": "Lanczos", "image": "not base64!"}, "image"),
        ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 0}, "upscaling_resize_w"),
    ],
)
def test_bad_extras_requests_are_4xx(up_server, payload, needle):
    response = up_server.post("extra-single-image", {"image": b64_png(), **payload})
    assert 400 <= response.status_code < 500 and needle in response.text
    assert up_server.get("upscalers").status_code == 200


def test_hires_fix_with_a_model_upscaler(up_server):
    body = up_server.txt2img(
        prompt="x",
        width=64,
        height=64,
        steps=2,
        seed=3,
        enable_hr=True,
        hr_upscaler="2x_compact",
        denoising_strength=0.4,
        hr_second_pass_steps=1,
    )
    assert decode_image(body["images"][0]).size == (128, 128)
    assert "Hires upscaler: 2x_compact" in info_of(body)["infotexts"][0]
