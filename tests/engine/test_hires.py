"""Hires. fix through generate() on the tiny checkpoints: sizes, steps, latent/image upscalers, infotext."""

from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from modules.engine import hires
from modules.engine.infotext import infotext_to_request_fields, parse_infotext
from modules.engine.pipeline import generate
from modules.engine.progress import NoControls
from modules.engine.types import LATENT_UPSCALE_MODES, GenerationRequest
from modules.errors import InvalidRequestError

FAST = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "prompt": "a cat", "seed": 5}
HR = {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}


def px(image):
    return np.asarray(image.convert("RGB")).astype(int)


class Recorder(NoControls):
    """Job controls that record every progress report."""

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


class PilUpscaler:
    """A real image upscaler (PIL's filters by name) standing in for the app's registry."""

    filters: ClassVar[dict] = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}

    def __init__(self):
        self.calls = []

    def upscale(self, image, width, height, name):
        self.calls.append((image.size, width, height, name))
        return image.resize((width, height), self.filters[name])


@pytest.mark.parametrize(
    ("fields", "upscale", "truncate", "final"),
    [
        ({"hr_scale": 2.0}, (1024, 1024), (0, 0), (1024, 1024)),
        ({"hr_scale": 1.5, "height": 768}, (768, 1152), (0, 0), (768, 1152)),
        ({"hr_resize_x": 1024}, (1024, 1024), (0, 0), (1024, 1024)),
        ({"hr_resize_y": 1536, "height": 768}, (1024, 1536), (0, 0), (1024, 1536)),
        ({"hr_resize_x": 1024, "hr_resize_y": 1024, "height": 768}, (1024, 1536), (0, 64), (1024, 1024)),
        ({"hr_resize_x": 1024, "hr_resize_y": 512, "height": 768}, (1024, 1536), (0, 128), (1024, 512)),
        ({"hr_resize_x": 600, "hr_resize_y": 1200}, (1200, 1200), (75, 0), (600, 1200)),
    ],
)
def test_target_as_a1111(fields, upscale, truncate, final):
    t = hires.target(GenerationRequest(width=512, **{"height": 512, **fields}))
    assert (t.upscale_width, t.upscale_height) == upscale
    assert (t.truncate_x, t.truncate_y) == truncate
    assert t.size == final


def test_schedule_runs_exactly_the_hires_steps():
    req = GenerationRequest(steps=20, denoising_strength=0.7, **{"enable_hr": True})
    assert hires.hires_steps(req) == 20 and hires.schedule_steps(req) == 28
    req = GenerationRequest(steps=20, hr_second_pass_steps=10, denoising_strength=0.3, enable_hr=True)
    assert hires.hires_steps(req) == 10 and hires.schedule_steps(req) == 33


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "sd1-inpaint"])
def test_latent_hires_doubles_the_size_and_writes_the_infotext(load_tiny, tiny_models, kind):
    model = load_tiny(tiny_models[kind])
    controls = Recorder()
    result = generate(model, GenerationRequest(**FAST, **HR), controls=controls)
    assert result.images[0].size == (128, 128) and (result.width, result.height) == (128, 128)
    assert np.isfinite(px(result.images[0])).all() and px(result.images[0]).std() > 0
    params = parse_infotext(result.infotexts[0])
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")  # A1111 writes the first pass's size
    assert params["Denoising strength"] == "0.5"
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Latent"
    assert "Hires steps" not in result.infotexts[0] and "Hires sampler" not in result.infotexts[0]
    # progress: 3 first-pass steps, then exactly 3 hires steps, counted against 6
    assert controls.reports == [(i, 6) for i in range(1, 7)]


def test_hires_is_deterministic_and_differs_from_plain_upscale(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    a = generate(model, GenerationRequest(**FAST, **HR))
    b = generate(model, GenerationRequest(**FAST, **HR))
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    untouched = generate(model, GenerationRequest(**FAST, **{**HR, "denoising_strength": 0.0}))
    assert untouched.images[0].size == (128, 128)
    assert not np.array_equal(px(a.images[0]), px(untouched.images[0]))


def test_hires_steps_count_and_infotext(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    controls = Recorder()
    req = GenerationRequest(**FAST, **HR, hr_second_pass_steps=2)
    text = generate(model, req, controls=controls).infotexts[0]
    params = parse_infotext(text)
    assert controls.reports[-1] == (5, 5) and len(controls.reports) == 5
    assert params["Hires steps"] == "2"
    assert text.index("Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent") > text.index("Denoising strength")


@pytest.mark.parametrize("mode", LATENT_UPSCALE_MODES)
def test_every_latent_mode_runs(load_tiny, tiny_models, mode):
    model = load_tiny(tiny_models["sd1"])
    result = generate(model, GenerationRequest(**FAST, **{**HR, "hr_scale": 1.5}, hr_upscaler=mode))
    assert result.images[0].size == (96, 96)
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == mode


def test_latent_modes_give_different_pictures(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    nearest = generate(model, GenerationRequest(**FAST, **HR, hr_upscaler="Latent (nearest)"))
    bilinear = generate(model, GenerationRequest(**FAST, **HR, hr_upscaler="Latent"))
    assert not np.array_equal(px(nearest.images[0]), px(bilinear.images[0]))


def test_resize_to_box_crops_the_latent(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**{**FAST, "height": 96}, **HR, hr_resize_x=128, hr_resize_y=128)
    result = generate(model, req)
    assert result.images[0].size == (128, 128)
    assert (
        parse_infotext(result.infotexts[0])["Hires resize-1"],
        parse_infotext(result.infotexts[0])["Hires resize-2"],
    ) == ("128", "128")


def test_image_upscaler_decodes_upscales_and_encodes(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    upscaler = PilUpscaler()
    req = GenerationRequest(**FAST, **HR, hr_upscaler="Lanczos", batch_size=2)
    result = generate(model, req, upscaler=upscaler, upscaler_names=["None", "Lanczos", "Nearest"])
    assert [im.size for im in result.images] == [(128, 128), (128, 128)]
    assert upscaler.calls == [((64, 64), 128, 128, "Lanczos")] * 2
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == "Lanczos"
    nearest = generate(
        model, GenerationRequest(**FAST, **HR, hr_upscaler="Nearest"), upscaler=upscaler, upscaler_names=["Nearest"]
    )
    assert not np.array_equal(px(nearest.images[0]), px(result.images[0]))


def test_unknown_upscaler_and_bad_fields_are_refused_before_any_work(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    with pytest.raises(InvalidRequestError, match=r"could not find upscaler named 'ESRGAN_4x'.*Latent"):
        generate(model, GenerationRequest(**FAST, **HR, hr_upscaler="ESRGAN_4x"), upscaler_names=["Lanczos"])
    with pytest.raises(InvalidRequestError, match="hr_scale"):
        generate(model, GenerationRequest(**FAST, **{**HR, "hr_scale": 0.0}))
    with pytest.raises(InvalidRequestError, match="hires fix target"):
        generate(model, GenerationRequest(**FAST, **{**HR, "hr_scale": 0.5}))
    with pytest.raises(InvalidRequestError, match="hr_checkpoint_name: this caller cannot load"):
        generate(model, GenerationRequest(**FAST, **HR, hr_checkpoint_name="other.safetensors"))


def test_batch_image_equals_single_job_with_seed_plus_one(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    batch = generate(model, GenerationRequest(**{**FAST, "seed": 30}, **HR, batch_size=2))
    single = generate(model, GenerationRequest(**{**FAST, "seed": 31}, **HR))
    assert np.abs(px(batch.images[1]) - px(single.images[0])).max() <= 1


def test_hires_prompt_and_sampler_change_the_second_pass(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    base = generate(model, GenerationRequest(**FAST, **HR))
    other = generate(
        model,
        GenerationRequest(**FAST, **HR, hr_prompt="a dog", hr_sampler_name="DPM++ 2M", hr_scheduler="Karras"),
    )
    assert not np.array_equal(px(base.images[0]), px(other.images[0]))
    params = parse_infotext(other.infotexts[0])
    assert params["Hires prompt"] == "a dog"
    assert params["Hires sampler"] == "DPM++ 2M" and params["Hires schedule type"] == "Karras"
    same = generate(model, GenerationRequest(**FAST, **HR, hr_prompt="a cat", hr_sampler_name="Use same sampler"))
    assert np.array_equal(px(base.images[0]), px(same.images[0]))
    assert "Hires prompt" not in same.infotexts[0] and "Hires sampler" not in same.infotexts[0]


def test_infotext_round_trip_turns_hires_back_on(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    result = generate(model, GenerationRequest(**FAST, **HR, hr_second_pass_steps=2, hr_upscaler="Latent (bicubic)"))
    fields = infotext_to_request_fields(parse_infotext(result.infotexts[0]))
    names = set(GenerationRequest.__dataclass_fields__)
    again = generate(model, GenerationRequest(**{k: v for k, v in fields.items() if k in names}))
    assert fields["enable_hr"] is True and fields["hr_upscaler"] == "Latent (bicubic)"
    assert np.array_equal(px(result.images[0]), px(again.images[0]))


def test_img2img_ignores_hires(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    init = Image.new("RGB", (64, 64), (120, 30, 200))
    result = generate(model, GenerationRequest(**FAST, **HR, init_images=(init,)))
    assert result.images[0].size == (64, 64)
    assert "Hires upscale" not in parse_infotext(result.infotexts[0])


def test_hires_checkpoint_samples_and_decodes_the_second_pass(load_tiny, tiny_models):
    from modules.engine.loader import LoadOptions, load_checkpoint
    from modules.engine.types import CheckpointInfo

    model = load_tiny(tiny_models["sd1"])
    path = tiny_models["sd2v"]
    other = load_checkpoint(
        CheckpointInfo(path, path.name, sha256="ef" * 32, config=path.with_suffix(".yaml")),
        LoadOptions(device="cpu", dtype="float32", vae_dtype="float32"),
    )
    calls = []

    def loader(name):
        calls.append(name)
        return other

    base = generate(model, GenerationRequest(**FAST, **HR))
    swapped = generate(
        model, GenerationRequest(**FAST, **HR, hr_checkpoint_name="sd2v", batch_size=2), load_model=loader
    )
    assert calls == ["sd2v"] and swapped.images[0].size == (128, 128)
    assert not np.array_equal(px(base.images[0]), px(swapped.images[0]))
    assert "Hires checkpoint: sd2v [efefefefef]" in swapped.infotexts[0]
    same = generate(model, GenerationRequest(**FAST, **HR, hr_checkpoint_name="Use same checkpoint"))
    assert np.array_equal(px(base.images[0]), px(same.images[0]))
