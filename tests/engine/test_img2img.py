"""img2img and inpainting through generate() on the tiny checkpoints."""

import numpy as np
import pytest
from PIL import Image

from modules.engine.img2img import effective_steps
from modules.engine.infotext import parse_infotext
from modules.engine.pipeline import generate
from modules.engine.progress import NoControls
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

FAST = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "prompt": "a cat"}


def noise_image(w=96, h=80, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def px(image):
    return np.asarray(image.convert("RGB")).astype(int)


def test_effective_steps_as_a1111():
    assert effective_steps(GenerationRequest(steps=20, denoising_strength=0.75)) == 16
    assert effective_steps(GenerationRequest(steps=20, denoising_strength=1.0)) == 20
    assert effective_steps(GenerationRequest(steps=20, denoising_strength=0.01)) == 1
    assert effective_steps(GenerationRequest(steps=4, denoising_strength=0.1)) == 1


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_img2img_size_determinism_and_infotext(load_tiny, tiny_models, kind):
    model = load_tiny(tiny_models[kind])
    req = GenerationRequest(init_images=(noise_image(),), seed=7, denoising_strength=0.5, **FAST)
    a, b = generate(model, req), generate(model, req)
    assert a.images[0].size == (64, 64)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    params = parse_infotext(a.infotexts[0])
    assert params["Denoising strength"] == "0.5" and params["Seed"] == "7"


def test_img2img_batch_image_equals_single_with_seed_plus_i(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    init = (noise_image(),)
    batch = generate(model, GenerationRequest(init_images=init, seed=20, batch_size=2, **FAST))
    single = generate(model, GenerationRequest(init_images=init, seed=21, **FAST))
    assert batch.seeds == [20, 21]
    assert np.abs(px(batch.images[1]) - px(single.images[0])).max() <= 1


class Recorder(NoControls):
    def __init__(self):
        self.reports = []

    def report(self, step, total, job_no=0, job_count=1):
        self.reports.append((step, total))

    def should_stop(self):
        return False

    def should_skip(self):
        return False

    def clear_skip(self):
        pass


@pytest.mark.parametrize(("strength", "executed"), [(0.1, 2), (0.75, 8)])
def test_denoising_strength_runs_a1111s_number_of_steps(load_tiny, tiny_models, strength, executed):
    model = load_tiny(tiny_models["sd1"])
    rec = Recorder()
    req = GenerationRequest(
        init_images=(noise_image(64, 64),), seed=1, denoising_strength=strength, **{**FAST, "steps": 10}
    )
    generate(model, req, controls=rec)
    assert rec.reports[-1] == (executed, executed) and len(rec.reports) == executed


@pytest.mark.parametrize("kind", ["sd1", "sd1-inpaint"])
def test_inpainting_keeps_unmasked_pixels(load_tiny, tiny_models, kind):
    model = load_tiny(tiny_models[kind])
    init = noise_image(64, 64, seed=2)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    req = GenerationRequest(init_images=(init,), mask=mask, seed=3, mask_blur_x=4, mask_blur_y=4, **FAST)
    res = generate(model, req)
    out, original = px(res.images[0]), px(init)
    assert np.abs(out[44:, 44:] - original[44:, 44:]).max() == 0  # far from the (blurred) mask: unchanged
    assert np.abs(out[:20, :20] - original[:20, :20]).mean() > 1  # inside: repainted
    assert parse_infotext(res.infotexts[0])["Mask blur"] == "4"


def test_inverted_mask_repaints_the_other_side(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    init = noise_image(64, 64, seed=4)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    req = GenerationRequest(
        init_images=(init,), mask=mask, inpainting_mask_invert=1, seed=3, mask_blur_x=0, mask_blur_y=0, **FAST
    )
    res = generate(model, req)
    out, original = px(res.images[0]), px(init)
    assert np.abs(out[:32, :32] - original[:32, :32]).max() == 0
    assert "Mask mode: Inpaint not masked" in res.infotexts[0]


def test_mask_of_another_size_is_refused(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(init_images=(noise_image(64, 64),), mask=Image.new("L", (10, 10)), **FAST)
    with pytest.raises(InvalidRequestError, match="mask"):
        generate(model, req)


def test_only_masked_keeps_the_original_size_and_pixels_outside(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    init = noise_image(160, 120, seed=6)
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (100, 60, 120, 80))
    req = GenerationRequest(
        init_images=(init,),
        mask=mask,
        seed=2,
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        mask_blur_x=2,
        mask_blur_y=2,
        **FAST,
    )
    res = generate(model, req)
    out, original = px(res.images[0]), px(init)
    assert res.images[0].size == (160, 120)  # A1111: only-masked output keeps the original resolution
    assert np.abs(out[:50, :] - original[:50, :]).max() == 0 and np.abs(out[:, :90] - original[:, :90]).max() == 0
    assert np.abs(out[62:78, 102:118] - original[62:78, 102:118]).mean() > 1
    params = parse_infotext(res.infotexts[0])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8"


def test_only_masked_needs_a_painted_mask(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(init_images=(noise_image(),), mask=Image.new("L", (96, 80)), inpaint_full_res=True, **FAST)
    with pytest.raises(InvalidRequestError, match="mask is empty"):
        generate(model, req)


@pytest.mark.parametrize(("fill", "label"), [(0, "fill"), (2, "latent noise"), (3, "latent nothing")])
def test_masked_content_modes_keep_unmasked_pixels(load_tiny, tiny_models, fill, label):
    model = load_tiny(tiny_models["sd1"])
    init = noise_image(64, 64, seed=8)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    common = {"init_images": (init,), "mask": mask, "seed": 3, "denoising_strength": 0.5, **FAST}
    req = GenerationRequest(inpainting_fill=fill, **common)
    plain = generate(model, GenerationRequest(inpainting_fill=1, **common))
    res = generate(model, req)
    out, original = px(res.images[0]), px(init)
    assert np.abs(out[44:, 44:] - original[44:, 44:]).max() == 0
    assert np.abs(out[:16, :16] - px(plain.images[0])[:16, :16]).mean() > 1  # differs from "original"
    assert parse_infotext(res.infotexts[0])["Masked content"] == label
    assert "Masked content" not in plain.infotexts[0]


def test_latent_noise_batch_image_equals_single_with_seed_plus_i(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1-inpaint"])
    init, mask = (noise_image(64, 64, seed=9),), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    common = {"init_images": init, "mask": mask, "inpainting_fill": 2, "denoising_strength": 0.5, **FAST}
    batch = generate(model, GenerationRequest(seed=30, batch_size=2, **common))
    single = generate(model, GenerationRequest(seed=31, **common))
    assert np.abs(px(batch.images[1]) - px(single.images[0])).max() <= 1
    assert np.abs(px(batch.images[0]) - px(batch.images[1])).mean() > 1


def test_latent_upscale_resizes_the_latent(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    common = {"init_images": (noise_image(40, 36),), "seed": 4, "denoising_strength": 0.5, **FAST}
    res = generate(model, GenerationRequest(resize_mode=3, **common))
    assert res.images[0].size == (64, 64)
    just = generate(model, GenerationRequest(resize_mode=0, **common))
    assert np.abs(px(res.images[0]) - px(just.images[0])).mean() > 1  # not the pixel-space resize


def test_denoising_zero_runs_one_step_and_keeps_the_input(load_tiny, tiny_models):
    """A1111 at denoising 0 still runs int(steps × 0) + 1 = 1 step at the smallest noise level: the result is the
    init image re-encoded, so it follows the init image, while at denoising 1 the init image hardly matters."""
    model = load_tiny(tiny_models["sd1"])
    inits = (noise_image(64, 64, seed=10), Image.new("RGB", (64, 64), (200, 40, 40)))
    rec = Recorder()

    def run(init, strength, controls=None):
        req = GenerationRequest(init_images=(init,), seed=1, denoising_strength=strength, **FAST)
        return px(generate(model, req, controls=controls).images[0])

    keep = [run(init, 0.0, rec) for init in inits]
    assert len(rec.reports) == 2  # one step per image
    redraw = [run(init, 1.0) for init in inits]
    assert np.abs(keep[0] - keep[1]).mean() > 2 * np.abs(redraw[0] - redraw[1]).mean()
