"""instruct-pix2pix over HTTP: img2img with ``image_cfg_scale`` on an 8-channel checkpoint, and a clear 422."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.api.conftest import DEFAULT_MODEL, LiveServer, decode_image, info_of, start_server


@pytest.fixture(scope="module")
def ip2p_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from tests.support.tiny_checkpoints import ldm_state_dict, save_checkpoint, write_yaml

    models = tmp_path_factory.mktemp("ip2p-models")
    shutil.copy(tiny_models_dir / DEFAULT_MODEL, models / DEFAULT_MODEL)
    path = models / "ip2p.safetensors"
    save_checkpoint(ldm_state_dict("sd1-pix2pix", "tiny", dtype=torch.float16, seed=11), path, seed=11)
    write_yaml("sd1-pix2pix", path, "tiny")
    yield from start_server(tmp_path_factory.mktemp("ip2p-data"), models, [])


def png_b64(seed: int = 0) -> str:
    pixels = (np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BASE = {
    "prompt": "turn it into a painting",
    "width": 64,
    "height": 64,
    "steps": 3,
    "seed": 5,
    "sampler_name": "Euler a",
    "denoising_strength": 0.9,
    "override_settings": {"sd_model_checkpoint": "ip2p"},
}


def test_img2img_with_image_cfg_scale(ip2p_server: LiveServer) -> None:
    guided = ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()], "image_cfg_scale": 1.5})
    assert guided.status_code == 200, guided.text
    text = ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()]})
    assert text.status_code == 200, text.text
    info = info_of(guided.json())
    assert "Image CFG scale: 1.5" in info["infotexts"][0] and "Model: ip2p" in info["infotexts"][0]
    assert "Image CFG scale" not in info_of(text.json())["infotexts"][0]
    a, b = (np.asarray(decode_image(r.json()["images"][0])).astype(int) for r in (guided, text))
    assert np.abs(a - b).max() > 2


def test_timestep_samplers_edit_and_an_unknown_sampler_is_a_422(ip2p_server: LiveServer) -> None:
    response = ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()], "sampler_name": "PLMS"})
    assert response.status_code == 200
    assert "Sampler: PLMS" in info_of(response.json())["infotexts"][0]
    bad = ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()], "sampler_name": "Nope"})
    assert bad.status_code == 422 and "Nope" in bad.text


def test_a_negative_image_cfg_scale_is_a_422_and_the_next_request_works(ip2p_server: LiveServer) -> None:
    bad = ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()], "image_cfg_scale": -2})
    assert bad.status_code == 422 and "image_cfg_scale" in bad.text
    assert ip2p_server.post("img2img", {**BASE, "init_images": [png_b64()], "image_cfg_scale": 2}).status_code == 200
