"""tiling: circular padding for the job, so the networks see the image wrapping around; zero padding after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.engine.pipeline import generate
from modules.engine.tiling import CIRCULAR, CircularPadding, tiling
from modules.engine.types import GenerationOptions, GenerationRequest

REQUEST = GenerationRequest(prompt="a brick wall", width=64, height=64, steps=3, seed=4, sampler_name="Euler")


def _padding_modes(model) -> set[str]:
    networks = (model.components.unet, model.components.vae)
    return {m.padding_mode for n in networks for m in n.modules() if isinstance(m, torch.nn.Conv2d) and m.padding[0]}


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_with_tiling_the_networks_shift_with_their_input(load_tiny, tiny_models, kind):
    """Circular padding makes the UNet and the VAE decoder commute with a circular shift of the latent (by whole
    cells of the UNet's downsampling): what makes the image repeat seamlessly."""
    model = load_tiny(tiny_models[kind])
    unet, vae = model.components.unet, model.components.vae
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 16, 16)
    shift = 8  # latent pixels: a whole cell of the UNet's three halvings
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    extra = {}
    if model.model_type.is_sdxl:  # the pooled text and the six size conditions
        cfg = unet.config
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled), "time_ids": torch.tensor([[128.0] * 6])}}

    def unet_out(x):
        return unet(x, torch.tensor([500]), encoder_hidden_states=context, **extra).sample

    def roll(x, by):
        return torch.roll(x, shifts=(by, by), dims=(-2, -1))

    with torch.inference_mode():
        plain = unet_out(latent)
        assert not torch.allclose(unet_out(roll(latent, shift)), roll(plain, shift), atol=1e-4)  # zeros: edges differ
        padding = CircularPadding()
        padding.apply(model)
        try:
            assert getattr(unet, CIRCULAR) and _padding_modes(model) == {"circular"}
            torch.testing.assert_close(unet_out(roll(latent, shift)), roll(unet_out(latent), shift), atol=1e-4, rtol=0)
            decoded = vae.decode(latent).sample
            torch.testing.assert_close(vae.decode(roll(latent, 2)).sample, roll(decoded, 2 * 8), atol=1e-4, rtol=0)
        finally:
            padding.restore()
        assert not getattr(unet, CIRCULAR) and _padding_modes(model) == {"zeros"}
        torch.testing.assert_close(unet_out(latent), plain)  # exactly the network it was


def test_a_tiling_job_is_written_in_the_infotext_and_leaves_the_model_as_it_was(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    plain = generate(model, REQUEST)
    tiled = generate(model, REQUEST, GenerationOptions(tiling=True))
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert np.abs(np.asarray(tiled.images[0], np.int16) - np.asarray(plain.images[0], np.int16)).max() > 0
    assert _padding_modes(model) == {"zeros"}
    assert np.array_equal(np.asarray(generate(model, REQUEST).images[0]), np.asarray(plain.images[0]))


def test_the_padding_comes_back_when_the_job_fails_and_other_models_tile_too(load_tiny, tiny_models):
    model, other = load_tiny(tiny_models["sd1"]), load_tiny(tiny_models["sd2v"])
    with pytest.raises(RuntimeError, match="boom"), tiling(True, model, lambda name: other) as load:
        assert load("sd2v") is other and _padding_modes(other) == {"circular"}  # a hires or refiner checkpoint
        raise RuntimeError("boom")
    assert _padding_modes(model) == _padding_modes(other) == {"zeros"}
    with tiling(False, model, None) as load:
        assert load is None and _padding_modes(model) == {"zeros"}
