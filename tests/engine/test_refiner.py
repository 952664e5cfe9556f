"""The refiner: a second checkpoint takes over sampling at ``refiner_switch_at`` (tiny SDXL base + SDXL refiner)."""

import numpy as np
import pytest

from modules.engine.loader import LoadOptions, load_checkpoint
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from modules.errors import InvalidRequestError
from tests.support.tiny_checkpoints import write_checkpoint

BASE = {"prompt": "a cat", "negative_prompt": "ugly", "width": 64, "height": 64, "steps": 6, "seed": 3}
CPU = LoadOptions(device="cpu", dtype="float32", vae_dtype="float32")


@pytest.fixture(scope="module")
def refiner_model(tmp_path_factory):
    path = write_checkpoint("sdxl-refiner", tmp_path_factory.mktemp("refiner") / "refiner.safetensors", size="tiny")
    return load_checkpoint(CheckpointInfo(path, path.name, sha256="cd" * 32), CPU)


class Loader:
    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, name):
        self.calls.append(name)
        return self.model


def pixels(result):
    return np.asarray(result.images[0], dtype=int)


def test_refiner_takes_over_and_writes_the_infotext(load_tiny, tiny_models, refiner_model):
    base = load_tiny(tiny_models["sdxl"])
    plain = generate(base, GenerationRequest(**BASE, sampler_name="DPM++ 2M"))
    loader = Loader(refiner_model)
    req = GenerationRequest(**BASE, sampler_name="DPM++ 2M", refiner_checkpoint="refiner", refiner_switch_at=0.5)
    refined = generate(base, req, load_model=loader)
    assert loader.calls == ["refiner"]
    assert not np.array_equal(pixels(plain), pixels(refined))
    assert "Refiner: refiner [cdcdcdcdcd], Refiner switch at: 0.5" in refined.infotexts[0]


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_timestep_samplers_switch_to_the_refiner_by_timestep(load_tiny, tiny_models, refiner_model, sampler):
    base = load_tiny(tiny_models["sdxl"])
    plain = generate(base, GenerationRequest(**BASE, sampler_name=sampler))
    loader = Loader(refiner_model)
    req = GenerationRequest(**BASE, sampler_name=sampler, refiner_checkpoint="refiner", refiner_switch_at=0.5)
    refined = generate(base, req, load_model=loader)
    assert loader.calls == ["refiner"] and not np.array_equal(pixels(plain), pixels(refined))
    assert "Refiner switch at: 0.5" in refined.infotexts[0]


def test_switch_point_decides_how_much_the_refiner_does(load_tiny, tiny_models, refiner_model):
    base = load_tiny(tiny_models["sdxl"])
    plain = pixels(generate(base, GenerationRequest(**BASE, sampler_name="Euler")))
    never = Loader(refiner_model)
    late = generate(
        base,
        GenerationRequest(**BASE, sampler_name="Euler", refiner_checkpoint="refiner", refiner_switch_at=1.0),
        load_model=never,
    )
    assert never.calls == [] and np.array_equal(pixels(late), plain) and "Refiner" not in late.infotexts[0]
    early = generate(
        base,
        GenerationRequest(**BASE, sampler_name="Euler", refiner_checkpoint="refiner", refiner_switch_at=0.2),
        load_model=Loader(refiner_model),
    )
    mid = generate(
        base,
        GenerationRequest(**BASE, sampler_name="Euler", refiner_checkpoint="refiner", refiner_switch_at=0.6),
        load_model=Loader(refiner_model),
    )
    assert not np.array_equal(pixels(early), pixels(mid))


def test_refiner_in_the_hires_pass_and_in_img2img(load_tiny, tiny_models, refiner_model):
    base = load_tiny(tiny_models["sdxl"])
    hr = GenerationRequest(
        **BASE,
        sampler_name="Euler a",
        enable_hr=True,
        hr_scale=1.5,
        denoising_strength=0.6,
        refiner_checkpoint="refiner",
        refiner_switch_at=0.5,
    )
    result = generate(base, hr, load_model=Loader(refiner_model))
    assert result.images[0].size == (96, 96) and "Refiner switch at: 0.5" in result.infotexts[0]
    init = result.images[0].resize((64, 64))
    i2i = GenerationRequest(**BASE, init_images=(init,), denoising_strength=0.9, refiner_checkpoint="refiner")
    assert "Refiner: refiner" in generate(base, i2i, load_model=Loader(refiner_model)).infotexts[0]


def test_refiner_equal_to_the_base_does_not_switch(load_tiny, tiny_models):
    base = load_tiny(tiny_models["sd1"])
    plain = generate(base, GenerationRequest(**BASE, sampler_name="Euler"))
    same = generate(
        base,
        GenerationRequest(**BASE, sampler_name="Euler", refiner_checkpoint="sd1", refiner_switch_at=0.3),
        load_model=lambda name: base,
    )
    assert np.array_equal(pixels(plain), pixels(same)) and "Refiner" not in same.infotexts[0]


def test_refiner_errors_are_clear(load_tiny, tiny_models):
    base = load_tiny(tiny_models["sd1"])
    with pytest.raises(InvalidRequestError, match="refiner_switch_at"):
        generate(base, GenerationRequest(**BASE, refiner_checkpoint="x", refiner_switch_at=0), load_model=print)
    with pytest.raises(InvalidRequestError, match="cannot load a second checkpoint"):
        generate(base, GenerationRequest(**BASE, refiner_checkpoint="x"))
