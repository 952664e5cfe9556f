"""previews: live previews drawn by the worker while someone watches, never changing what is sampled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from modules.engine import previews
from modules.engine.pipeline import generate
from modules.engine.progress import NoControls
from modules.engine.types import GenerationOptions, GenerationRequest, PreviewSettings
from modules.engine.vae import decode_latents

BASE = {"prompt": "a cat", "negative_prompt": "blurry", "width": 96, "height": 64, "seed": 3, "cfg_scale": 7.0}


class Watcher(NoControls):
    """A job someone watches: every drawn preview is kept with its step."""

    def __init__(self, watching: bool = True) -> None:
        self.watching = watching
        self.shown: list[tuple[int, Image.Image]] = []

    def preview_wanted(self) -> bool:
        return self.watching

    def show_preview(self, image: Image.Image, step: int) -> None:
        self.shown.append((step, image))


def _options(**preview: object) -> GenerationOptions:
    return GenerationOptions(preview=PreviewSettings(**preview))


def _run(model, controls, steps=6, sampler="Euler", **preview):
    request = GenerationRequest(**BASE, steps=steps, sampler_name=sampler)
    return generate(model, request, _options(**preview), controls)


def test_the_cheap_map_gives_each_latent_channel_its_colour():
    latent = torch.zeros(1, 4, 2, 3)
    latent[0, 0] = 1.0  # only the first channel: its row of the map, from [-1, 1] to 0-255 (truncated)
    (sd,) = previews.approx_cheap(latent, sdxl=False)
    (xl,) = previews.approx_cheap(latent, sdxl=True)
    assert sd.size == (3, 2) and sd.getpixel((0, 0)) == (165, 153, 154)  # (0.298, 0.207, 0.208)
    assert xl.getpixel((2, 1)) == (177, 179, 185)  # (0.3920, 0.4054, 0.4549)
    latent[0, 3] = 10.0  # far out of range: clamped, not wrapped
    assert previews.approx_cheap(latent, sdxl=False)[0].getpixel((0, 0)) == (0, 0, 0)


def test_a_batch_grid_is_near_square():
    tiles = [Image.new("RGB", (8, 6), (i * 40, 0, 0)) for i in range(3)]
    sheet = previews.grid(tiles)
    assert sheet.size == (16, 12)
    assert [sheet.getpixel(p)[0] for p in ((0, 0), (8, 0), (0, 6))] == [0, 40, 80]
    assert sheet.getpixel((8, 6)) == (0, 0, 0)  # the empty place
    assert previews.grid(tiles[:1]) is tiles[0]


def test_previews_come_every_n_steps_while_watched_and_change_nothing(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    plain = _run(model, NoControls())
    watched = Watcher()
    result = _run(model, watched, every_n_steps=2)
    assert [step for step, _ in watched.shown] == [2, 4, 6]
    assert all(image.size == (96 // 8, 64 // 8) for _, image in watched.shown)  # Approx NN draws as Approx cheap
    for a, b in zip(plain.images, result.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # drawing previews never changes the image
    unwatched = Watcher(watching=False)
    _run(model, unwatched, every_n_steps=2)
    assert unwatched.shown == []  # nobody asked: nothing drawn
    never = Watcher()
    _run(model, never, every_n_steps=0)
    assert never.shown == []


def test_a_full_preview_of_the_last_step_is_the_image(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    watched = Watcher()
    result = _run(model, watched, steps=4, every_n_steps=4, method="Full", content="Combined")
    ((step, image),) = watched.shown
    assert step == 4 and image.size == result.images[0].size
    # Euler's last step lands on its denoised prediction: the preview is the image, up to float rounding
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(result.images[0], dtype=np.int16))
    assert diff.max() <= 2


def test_the_content_setting_picks_the_prompts_or_the_negative_prompts_prediction(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    drawn = {}
    for content in ("Combined", "Prompt", "Negative prompt"):
        watched = Watcher()
        _run(model, watched, steps=2, every_n_steps=2, method="Full", content=content)
        drawn[content] = np.asarray(watched.shown[0][1], dtype=np.int16)
    assert np.abs(drawn["Prompt"] - drawn["Combined"]).max() > 0
    assert np.abs(drawn["Negative prompt"] - drawn["Prompt"]).max() > 0
    # the rows the denoiser kept are the predictions themselves: CFG recombines them into the drawn Combined one
    rows = previews.DenoiserRows()
    cond, uncond = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    rows.record(cond, [0, 1], uncond)
    combined = uncond + (cond - uncond) * 7.0
    assert torch.equal(rows.pick("Prompt", combined), cond) and torch.equal(
        rows.pick("Negative prompt", combined), uncond
    )
    rows.record(torch.randn(3, 4, 6, 8), [0, 0, 1], None)  # an AND prompt: each image's first part; no uncond pass
    assert torch.equal(rows.pick("Prompt", combined), rows.cond[[0, 2]])
    assert rows.pick("Negative prompt", combined) is combined


def test_a_batch_preview_is_a_grid_or_its_first_image(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    request = GenerationRequest(**BASE, steps=2, sampler_name="Euler", batch_size=3)
    for grid, size in ((True, (24, 16)), (False, (12, 8))):
        watched = Watcher()
        generate(model, request, _options(every_n_steps=2, grid=grid), watched)
        assert watched.shown[0][1].size == size


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC", "DPM++ 2M"])
def test_every_sampler_family_draws_previews(load_tiny, tiny_models, sampler):
    model = load_tiny(tiny_models["sd1"])
    watched = Watcher()
    _run(model, watched, steps=5, sampler=sampler, every_n_steps=2, method="Full")  # DDIM: 4 steps (A1111's)
    assert [step for step, _ in watched.shown] == [2, 4]
    assert all(np.asarray(image).std() > 0 for _, image in watched.shown)


def test_a_preview_that_runs_out_of_memory_is_drawn_cheaply(load_tiny, tiny_models, monkeypatch):
    model = load_tiny(tiny_models["sd1"])

    def out_of_memory(vae, latents):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(previews, "decode_latents", out_of_memory)
    watched = Watcher()
    result = _run(model, watched, steps=2, every_n_steps=2, method="Full")
    assert len(result.images) == 1 and watched.shown[0][1].size == (12, 8)


def test_sdxl_previews_use_its_own_map(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sdxl"])
    watched = Watcher()
    request = GenerationRequest(**{**BASE, "width": 64, "height": 64}, steps=2, sampler_name="Euler")
    generate(model, request, _options(every_n_steps=2), watched)
    ((_, image),) = watched.shown
    latents = torch.randn(1, 4, 8, 8)
    assert previews.approx_cheap(latents, sdxl=True)[0] != previews.approx_cheap(latents, sdxl=False)[0]
    assert image.size == (8, 8)
    full = dataclasses.replace(PreviewSettings(), method="Full")
    assert previews.draw(model, latents, full).size == decode_latents(model.components.vae, latents)[0].size


def test_a_period_of_minus_one_shows_each_finished_batch(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    request = GenerationRequest(**BASE, steps=3, sampler_name="Euler", n_iter=2)
    watched = Watcher()
    result = generate(model, request, _options(every_n_steps=-1), watched)
    assert [step for step, _ in watched.shown] == [3, 3]  # none while sampling, one per batch
    for (_, shown), image in zip(watched.shown, result.images, strict=True):
        assert np.array_equal(np.asarray(shown), np.asarray(image))
    unwatched = Watcher(watching=False)
    generate(model, request, _options(every_n_steps=-1), unwatched)
    assert unwatched.shown == []
