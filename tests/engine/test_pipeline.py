"""generate() end to end on the tiny checkpoints of every kind, through the real loader."""

import numpy as np
import pytest

from modules.engine.infotext import parse_infotext
from modules.engine.pipeline import generate
from modules.engine.progress import NoControls
from modules.engine.types import GenerationOptions, GenerationRequest
from modules.errors import InvalidRequestError

KINDS = ["sd1", "sd2v", "sd1-inpaint", "sdxl"]
FAST = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "scheduler": "Automatic"}


def pixels(image):
    return np.asarray(image)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_generates(load_tiny, tiny_models, kind):
    model = load_tiny(tiny_models[kind])
    req = GenerationRequest(prompt="a (red:1.2) cat", negative_prompt="blurry", seed=42, **FAST)
    res = generate(model, req, GenerationOptions(version="test"))
    assert len(res.images) == 1 and res.images[0].size == (64, 64)
    assert res.seeds == [42]
    info = parse_infotext(res.infotexts[0])
    assert info["Prompt"] == "a (red:1.2) cat" and info["Negative prompt"] == "blurry"
    assert info["Steps"] == "3" and info["Seed"] == "42" and info["Size-1"] == "64"
    assert info["Model hash"] == "abababab" + "ab" and info["Model"] == kind


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_bfloat16_unet_and_text_encoders_generate_close_to_float32(tiny_models, kind):
    """``--bf16``'s dtype through the real loader and sampler: same picture as fp32 within bf16 rounding."""
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo

    path = tiny_models[kind]
    info = CheckpointInfo(path, path.name, config=path.with_suffix(".yaml"))
    req = GenerationRequest(prompt="a red cat", seed=5, **FAST)
    manager = ModelManager()
    try:
        full = pixels(generate(manager.get(info, LoadOptions()), req).images[0]).astype(int)
        model = manager.get(info, LoadOptions(dtype="bfloat16"))
        parts = model.components
        encoders = [m for m in (parts.text_encoder, parts.text_encoder_2) if m is not None]
        assert {str(next(m.parameters()).dtype) for m in [parts.unet, *encoders]} == {"torch.bfloat16"}
        assert str(parts.vae.dtype) == "torch.float32"
        half = pixels(generate(model, req).images[0]).astype(int)
    finally:
        manager.unload()
    assert np.isfinite(half).all() and half.shape == full.shape
    assert np.abs(half - full).mean() < 8  # bf16 keeps 8 bits of mantissa: close, not equal


def test_same_seed_same_image_and_different_seed_differs(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    a = generate(model, GenerationRequest(prompt="x", seed=7, **FAST)).images[0]
    b = generate(model, GenerationRequest(prompt="x", seed=7, **FAST)).images[0]
    c = generate(model, GenerationRequest(prompt="x", seed=8, **FAST)).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_batch_image_i_equals_single_with_seed_plus_i(load_tiny, tiny_models, sampler):
    model = load_tiny(tiny_models["sd1"])
    fast = {**FAST, "sampler_name": sampler}
    batch = generate(model, GenerationRequest(prompt="x", seed=100, batch_size=2, n_iter=2, **fast))
    assert batch.seeds == [100, 101, 102, 103]
    for i in (1, 3):
        single = generate(model, GenerationRequest(prompt="x", seed=100 + i, **fast))
        assert np.abs(pixels(batch.images[i]).astype(int) - pixels(single.images[0]).astype(int)).max() <= 1


def test_interrupt_returns_what_was_made(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])

    class StopAfterFirstBatch(NoControls):
        steps = 0

        def report(self, step, total, job_no=0, job_count=1):
            self.steps += 1

        def should_stop(self):
            return self.steps >= 3

        def should_skip(self):
            return False

        def clear_skip(self):
            pass

    res = generate(model, GenerationRequest(prompt="x", seed=1, n_iter=3, **FAST), controls=StopAfterFirstBatch())
    assert res.interrupted and len(res.images) == 1


def test_stop_after_the_batch_finishes_the_current_batch_and_starts_no_other(load_tiny, tiny_models):
    """A1111's "Don't Interrupt in the middle": asked during batch 2 of 3, batch 2 runs to its last step."""
    model = load_tiny(tiny_models["sd1"])
    request = GenerationRequest(prompt="x", seed=1, n_iter=3, batch_size=2, **FAST)

    class StopDuringSecondBatch(NoControls):
        asked = False

        def report(self, step, total, job_no=0, job_count=1):
            self.asked = self.asked or (job_no == 1 and step == 1)

        def should_stop_after_batch(self):
            return self.asked

    full = generate(model, request)
    res = generate(model, request, controls=StopDuringSecondBatch())
    assert res.interrupted and len(res.images) == 4 and res.seeds == full.seeds[:4]
    for finished, whole in zip(res.images, full.images[:4], strict=True):
        assert np.array_equal(np.asarray(finished), np.asarray(whole))  # every step of batch 2 ran


def test_clip_skip_written_and_changes_image(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(prompt="a cat", seed=3, **FAST)
    one = generate(model, req, GenerationOptions(clip_skip=1))
    two = generate(model, req, GenerationOptions(clip_skip=2))
    assert "Clip skip" not in one.infotexts[0] and "Clip skip: 2" in two.infotexts[0]
    assert not np.array_equal(pixels(one.images[0]), pixels(two.images[0]))


def test_long_prompt_is_chunked(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    long_prompt = ", ".join(f"word{i}" for i in range(120))
    res = generate(model, GenerationRequest(prompt=long_prompt, seed=5, **FAST))
    assert res.images[0].size == (64, 64)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "DDIM", "UniPC", "Heun", "LMS", "DPM2 a"])
def test_other_samplers_run(load_tiny, tiny_models, sampler):
    model = load_tiny(tiny_models["sd1"])
    res = generate(model, GenerationRequest(prompt="x", seed=5, **{**FAST, "sampler_name": sampler}))
    assert f"Sampler: {sampler}" in res.infotexts[0]


def test_bad_request_rejected_before_work(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    with pytest.raises(InvalidRequestError, match="width"):
        generate(model, GenerationRequest(**{**FAST, "width": 65}))
    with pytest.raises(InvalidRequestError, match="Unknown sampler_name"):
        generate(model, GenerationRequest(**{**FAST, "sampler_name": "No such sampler"}))


def test_warm_up_prepares_nothing_off_cuda(load_tiny, tiny_models):
    from modules.engine.pipeline import warm_up

    model = load_tiny(tiny_models["sd1"])
    assert model.device == "cpu"
    assert warm_up(model) is None  # no graphs to capture on CPU: the start-up load does no extra job
    res = generate(model, GenerationRequest(prompt="x", seed=7, **FAST))
    assert len(res.images) == 1
