"""img2img scripts over real HTTP: Poor man's outpainting, the script lists, and refusals."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import decode_image, info_of

pytestmark = pytest.mark.slow  # drives a real server


def b64_png(w=64, h=64):
    image = Image.fromarray((np.random.RandomState(2).rand(h, w, 3) * 255).astype("uint8"))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_scripts_are_listed_with_their_arguments(server):
    assert server.get("scripts").json() == {"txt2img": [], "img2img": ["poor man's outpainting", "outpainting mk2"]}
    poor, mk2 = server.get("script-info").json()
    assert poor["name"] == "poor man's outpainting" and poor["is_img2img"] is True
    assert poor["args"][0]["label"] == "Pixels to expand"
    assert mk2["name"] == "outpainting mk2" and [a["value"] for a in mk2["args"][1:3]] == [128, 8]


def test_poor_mans_outpainting_over_http(server):
    body = server.post(
        "img2img",
        {
            "init_images": [b64_png()],
            "prompt": "sky",
            "steps": 3,
            "seed": 8,
            "denoising_strength": 1,
            "script_name": "Poor man's outpainting",
            "script_args": [32, 4, "fill", ["right"]],
        },
    ).json()
    image = decode_image(body["images"][0])
    assert image.size == (128, 64)
    assert "Masked content: fill" in info_of(body)["infotexts"][0]


def test_outpainting_mk2_over_http(server):
    body = server.post(
        "img2img",
        {
            "init_images": [b64_png()],
            "prompt": "sky",
            "steps": 3,
            "seed": 8,
            "denoising_strength": 0.8,
            "script_name": "Outpainting mk2",
            "script_args": [None, 32, 8, ["down"], 1.0, 0.05],
        },
    )
    assert body.status_code == 200, body.text
    assert decode_image(body.json()["images"][0]).size == (64, 128)
    infotext = info_of(body.json())["infotexts"][0]
    assert "Mask blur: 8" in infotext and "Masked content" not in infotext  # "original", A1111's default


@pytest.mark.parametrize(
    ("endpoint", "payload", "needle"),
    [
        ("img2img", {"script_name": "x/y/z plot"}, "not found"),
        ("img2img", {"script_name": "poor man's outpainting", "script_args": [2]}, "pixels must be between"),
        ("img2img", {"script_name": "poor man's outpainting", "script_args": [64, 4, 0, ["north"]]}, "direction"),
        ("txt2img", {"script_name": "poor man's outpainting"}, "not found"),
        ("img2img", {"script_name": "outpainting mk2", "script_args": ["", 64, 8, ["up"], 9.0]}, "noise_q"),
    ],
)
def test_bad_script_requests_are_422(server, endpoint, payload, needle):
    extra = {"init_images": [b64_png()]} if endpoint == "img2img" else {}
    response = server.post(endpoint, {"prompt": "x", "steps": 2, **extra, **payload})
    assert response.status_code == 422 and needle in response.text
