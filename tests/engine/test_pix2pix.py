"""instruct-pix2pix checkpoints (8-channel UNet): detection, loading, image CFG as A1111 combines it, txt2img/hires."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.engine.denoiser import CFGDenoiser, StepConds, TextCond
from modules.engine.infotext import infotext_to_request_fields, parse_infotext
from modules.engine.pipeline import generate
from modules.engine.sampling import DiscreteModel
from modules.engine.types import GenerationRequest, ModelType

FAST = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "prompt": "make it snow", "seed": 3}


@pytest.fixture(scope="module")
def pix2pix_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_checkpoints import ldm_state_dict, save_checkpoint, write_yaml

    path = tmp_path_factory.mktemp("ip2p") / "ip2p.safetensors"
    save_checkpoint(ldm_state_dict("sd1-pix2pix", "tiny", dtype=torch.float16, seed=11), path, seed=11)
    write_yaml("sd1-pix2pix", path, "tiny")
    return path


@pytest.fixture(scope="module")
def model(load_tiny, pix2pix_path):
    return load_tiny(pix2pix_path)


def source(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8"))


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_loads_as_an_edit_model_with_eight_input_channels(model):
    assert model.model_type is ModelType.SD1_PIX2PIX
    assert model.components.unet.config.in_channels == 8
    assert list(model.components.models()) == ["text_encoder", "unet", "vae"]


def test_denoiser_combines_like_a1111s_edit_model(model):
    unet = model.components.unet
    discrete = DiscreteModel.from_config(model.components.schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen) * 3
    sigma = torch.tensor([3.0])
    image = torch.randn(1, 4, 8, 8, generator=gen)
    cond, uncond = (TextCond(torch.randn(77, 32, generator=gen)) for _ in range(2))
    conds = StepConds([[(cond, 1.0)]], [uncond])
    denoiser = CFGDenoiser(unet, discrete.sigma_to_t, "epsilon", lambda i: conds, 7.0, image_cond=image,
                           image_cfg_scale=1.5)  # fmt: skip

    def denoised(context: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
        model_in = torch.cat([x / (sigma**2 + 1) ** 0.5, image_latent], dim=1)
        eps = unet(model_in, discrete.sigma_to_t(sigma), encoder_hidden_states=context[None]).sample
        return x - eps * sigma

    with torch.inference_mode():
        got = denoiser(x, sigma)
        out_cond = denoised(cond.context, image)
        out_img = denoised(uncond.context, image)
        out_blank = denoised(uncond.context, torch.zeros_like(image))
    expected = out_blank + 7.0 * (out_cond - out_img) + 1.5 * (out_img - out_blank)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # image CFG 1 (or None) is plain text guidance with the image on both rows
    plain = CFGDenoiser(unet, discrete.sigma_to_t, "epsilon", lambda i: conds, 7.0, image_cond=image,
                        image_cfg_scale=1.0)  # fmt: skip
    with torch.inference_mode():
        torch.testing.assert_close(plain(x, sigma), out_img + 7.0 * (out_cond - out_img), atol=1e-4, rtol=1e-4)


def test_img2img_image_cfg_changes_the_result_and_is_in_the_infotext(model):
    base = {"init_images": (source(),), "denoising_strength": 0.9, **FAST}
    text_only = generate(model, GenerationRequest(**base))
    one = generate(model, GenerationRequest(image_cfg_scale=1.0, **base))
    guided = generate(model, GenerationRequest(image_cfg_scale=1.5, **base))
    assert np.array_equal(px(text_only.images[0]), px(one.images[0]))
    assert np.abs(px(guided.images[0]) - px(one.images[0])).max() > 2
    params = parse_infotext(guided.infotexts[0])
    assert params["Image CFG scale"] == "1.5"
    assert "Image CFG scale" not in parse_infotext(text_only.infotexts[0])
    # the infotext round trip regenerates the guided image
    fields = infotext_to_request_fields(parse_infotext(guided.infotexts[0]))
    fields = {k: v for k, v in fields.items() if k in GenerationRequest.__dataclass_fields__}
    assert fields["image_cfg_scale"] == 1.5
    again = generate(model, GenerationRequest(init_images=(source(),), **fields))
    assert np.array_equal(px(again.images[0]), px(guided.images[0]))


def test_the_source_image_conditions_the_edit(model):
    base = {"denoising_strength": 1.0, "image_cfg_scale": 1.5, **FAST}
    a = generate(model, GenerationRequest(init_images=(source(0),), **base))
    b = generate(model, GenerationRequest(init_images=(source(1),), **base))
    assert np.abs(px(a.images[0]) - px(b.images[0])).max() > 2


def test_latent_upscale_resize_mode_works(model):
    small = source().resize((32, 32))
    out = generate(model, GenerationRequest(init_images=(small,), resize_mode=3, image_cfg_scale=1.5, **FAST))
    assert out.images[0].size == (64, 64)


def test_txt2img_and_hires_fix_work(model):
    out = generate(model, GenerationRequest(**FAST))
    assert out.images[0].size == (64, 64) and px(out.images[0]).std() > 0
    hires = generate(model, GenerationRequest(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, **FAST))
    assert hires.images[0].size == (96, 96)
    assert "Image CFG scale" not in parse_infotext(out.infotexts[0])


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_timestep_samplers_edit_with_image_guidance(model, sampler):
    source = Image.new("RGB", (64, 64), (30, 160, 90))
    req = GenerationRequest(**{**FAST, "sampler_name": sampler}, init_images=(source,))
    guided = np.asarray(generate(model, dataclasses.replace(req, image_cfg_scale=2.5)).images[0], dtype=int)
    plain = np.asarray(generate(model, dataclasses.replace(req, image_cfg_scale=1.0)).images[0], dtype=int)
    assert guided.std() > 0 and not np.array_equal(guided, plain)
