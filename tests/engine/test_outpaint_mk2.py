"""Outpainting mk2: argument parsing, the spectrum-matched noise fill, the canvas/mask geometry, a real run."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from modules.engine.outpaint_mk2 import Mk2Args, expand, match_histograms, matched_noise
from modules.engine.pipeline import generate
from modules.engine.scripts import apply_script
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError


def noise_image(w=64, h=64, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def test_script_args_parse_like_a1111():
    assert Mk2Args.from_script_args([]) == Mk2Args()
    assert Mk2Args.from_script_args(["<p>info</p>", 64, 4, ["up"], 0.5, 0.1]) == Mk2Args(64, 4, ("up",), 0.5, 0.1)
    assert Mk2Args.from_script_args([None, 32]).mask_blur == 8
    for bad, needle in [
        ([None, 4], "pixels"),
        ([None, 64, 99], "mask_blur"),
        ([None, 64, 8, ["east"]], "direction"),
        ([None, 64, 8, ["up"], -1], "noise_q"),
        ([None, 64, 8, ["up"], 1, 2], "color_variation"),
        ([None, "many"], "script_args"),
        ([None] * 7, "6 arguments"),
    ]:
        with pytest.raises(InvalidRequestError, match=needle):
            Mk2Args.from_script_args(bad)


def test_histogram_matching_takes_the_reference_distribution():
    rng = np.random.default_rng(1)
    values, reference = rng.random((500, 3)), rng.normal(5, 2, (500, 3))
    out = match_histograms(values, reference)
    for c in range(3):
        np.testing.assert_allclose(np.sort(out[:, c]), np.sort(reference[:, c]))
        assert np.array_equal(np.argsort(out[:, c]), np.argsort(values[:, c]))  # order preserved


def test_matched_noise_fills_only_the_mask_with_the_images_colours():
    image = np.zeros((64, 96, 3))
    image[:, :48] = np.asarray(noise_image(48, 64), dtype=float) / 255 * [0.3, 1.0, 0.2]  # a green-ish picture
    mask = np.zeros((64, 96))
    mask[:, 48:] = 1.0
    out = matched_noise(image, mask, 1.0, 0.05)
    assert np.array_equal(out[:, :48], image[:, :48])
    fill, ref = out[:, 48:].reshape(-1, 3), image[:, :48].reshape(-1, 3)
    assert fill.std() > 0.01 and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(fill.mean(axis=0), ref.mean(axis=0), atol=0.02)  # histogram-matched colours
    assert np.array_equal(out, matched_noise(image, mask, 1.0, 0.05))  # fixed noise seed: deterministic
    assert not np.array_equal(out, matched_noise(image, mask, 2.0, 0.05))  # the fall-off exponent shapes it


def test_expand_builds_a_noise_filled_canvas_and_inset_mask():
    source = noise_image()
    req = expand(GenerationRequest(init_images=(source,)), Mk2Args(pixels=32, mask_blur=4, direction=("right",)))
    assert (req.width, req.height) == (128, 64) and req.init_images[0].size == (128, 64)
    canvas, mask = np.asarray(req.init_images[0]), np.asarray(req.mask)
    assert np.array_equal(canvas[:, :64], np.asarray(source))
    assert canvas[:, 64:].std() > 5  # filled with matched noise, not black
    assert mask[:, :61].max() == 0 and mask[:, 61:].min() == 255  # inset by mask_blur (PIL's inclusive edge)
    assert (req.mask_blur_x, req.inpainting_fill, req.inpaint_full_res) == (4, 1, False)
    with pytest.raises(InvalidRequestError, match="needs an init image"):
        expand(GenerationRequest(), Mk2Args())


def test_outpainting_mk2_run_keeps_the_original(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    source = noise_image()
    request = GenerationRequest(
        prompt="sky", init_images=(source,), steps=3, sampler_name="Euler", seed=4, denoising_strength=0.8,
        script_name="Outpainting mk2", script_args=(None, 32, 4, ["left", "up"]),
    )  # fmt: skip
    assert apply_script(request).width == 128
    result = generate(model, request)
    out = np.asarray(result.images[0], dtype=int)
    assert result.images[0].size == (128, 128)
    assert np.array_equal(out[80:, 80:], np.asarray(source, dtype=int)[16:, 16:])  # far from the seam: unchanged
    assert "Mask blur: 4" in result.infotexts[0] and "Masked content" not in result.infotexts[0]  # "original"
    txt2img = dataclasses.replace(request, init_images=())
    with pytest.raises(InvalidRequestError, match="not found"):
        apply_script(txt2img)
