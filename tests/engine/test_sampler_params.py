"""Sampler parameters (η, churn, schedule overrides, discard, UniPC): what each sampler gets, the infotext keys A1111
writes for them, and that they reach the trajectory (against k-diffusion's own functions)."""

import dataclasses
import math
import types

import numpy as np
import pytest
import torch

from modules.engine.ksampling.schedules import ScheduleParams, sigmas_for
from modules.engine.pipeline import generate
from modules.engine.sampler_params import resolve_params
from modules.engine.samplers import resolve_sampler
from modules.engine.sampling import DiscreteModel
from modules.engine.types import GenerationOptions, GenerationRequest, SamplerSettings
from tests.support.kdiffusion_ref import load_sampling
from tests.support.toy_denoiser import SD_CONFIG
from tests.support.unet_calls import record_unet_calls

K = load_sampling()
MODEL = DiscreteModel.from_config(SD_CONFIG)
BASE = {"prompt": "a red cat", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 5, "cfg_scale": 5.0}


def params(sampler, schedule=None, settings=None, **request):
    spec, sched = resolve_sampler(sampler, schedule)
    return resolve_params(spec, sched, GenerationRequest(**request), settings or SamplerSettings())


def test_defaults_write_nothing_and_give_k_diffusions_defaults():
    for name in ("Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "DPM++ 2M SDE"):
        p = params(name)
        assert p.infotext == {}, name
        assert (p.options.s_churn, p.options.s_tmin, p.options.s_tmax, p.options.s_noise) == (0, 0, math.inf, 1)
    assert params("Euler a").options.eta == 1.0 and params("DDIM").options.eta == 0.0


def test_eta_goes_to_samplers_that_take_it_with_the_right_infotext_key():
    assert params("Euler a", eta=0.5).infotext == {"Eta": 0.5}
    assert params("Euler a", eta=0.5).options.eta == 0.5
    assert params("DDIM", eta=0.5).infotext == {"Eta DDIM": 0.5}
    settings = SamplerSettings(eta_ancestral=0.3, eta_ddim=0.2)
    assert params("DPM++ 2M SDE", settings=settings).options.eta == 0.3
    assert params("DDIM CFG++", settings=settings).infotext == {"Eta DDIM": 0.2}
    # samplers without η ignore it (A1111 passes η only where the step function takes it)
    assert params("DPM++ 2M", eta=0.5).infotext == {} and params("PLMS", eta=0.5).infotext == {}


def test_churn_goes_to_euler_heun_dpm2_and_s_noise_to_the_noisy_samplers():
    p = params("Euler", s_churn=2.0, s_tmin=0.5, s_tmax=10.0, s_noise=1.003)
    assert (p.options.s_churn, p.options.s_tmin, p.options.s_tmax, p.options.s_noise) == (2.0, 0.5, 10.0, 1.003)
    assert p.infotext == {"Sigma churn": 2.0, "Sigma tmin": 0.5, "Sigma tmax": 10.0, "Sigma noise": 1.003}
    settings = SamplerSettings(s_churn=1.0, s_noise=0.99)
    assert params("Heun", settings=settings).infotext == {"Sigma churn": 1.0, "Sigma noise": 0.99}
    assert params("Heun", settings=settings, s_churn=3.0).options.s_churn == 3.0  # the request wins
    sde = params("DPM++ SDE", settings=settings)
    assert (sde.options.s_churn, sde.options.s_noise, sde.infotext) == (0.0, 0.99, {"Sigma noise": 0.99})
    assert params("Euler a", settings=settings).options.s_noise == 1.0  # not in A1111's list for Euler a
    assert params("LMS", settings=settings).infotext == {}


def test_schedule_overrides_and_their_keys():
    settings = SamplerSettings(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    karras = params("Euler", "Karras", settings)
    assert karras.infotext == {"Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    assert (karras.schedule.sigma_min, karras.schedule.sigma_max, karras.schedule.rho) == (0.1, 10.0, 5.0)
    exponential = params("Euler", "Exponential", settings)  # no ρ in this schedule
    assert "Schedule rho" not in exponential.infotext and exponential.schedule.rho is None
    beta = params("Euler", "Beta", SamplerSettings(beta_dist_alpha=0.4, beta_dist_beta=0.7))
    assert beta.infotext == {"Beta schedule alpha": 0.4, "Beta schedule beta": 0.7}
    assert (beta.schedule.beta_alpha, beta.schedule.beta_beta) == (0.4, 0.7)
    assert params("DDIM", "Karras", settings).infotext == {}  # timestep samplers have no σ schedule


def test_always_discard_next_to_last_sigma():
    settings = SamplerSettings(always_discard_next_to_last_sigma=True)
    euler = params("Euler", settings=settings)
    assert euler.discard_next_to_last and euler.infotext == {"Discard penultimate sigma": True}
    dpm2 = params("DPM2", settings=settings)  # discards already: no key
    assert dpm2.discard_next_to_last and dpm2.infotext == {}
    assert params("DDIM", settings=settings).discard_next_to_last


@pytest.mark.skipif(K is None, reason="k-diffusion is not installed")
def test_schedule_overrides_match_k_diffusion():
    ours = sigmas_for("karras", 9, MODEL, params=ScheduleParams(rho=3.0, sigma_min=0.05, sigma_max=8.0))
    assert torch.allclose(ours, K.get_sigmas_karras(9, 0.05, 8.0, rho=3.0), atol=1e-6)
    ours = sigmas_for("polyexponential", 7, MODEL, params=ScheduleParams(rho=2.0))
    ref = K.get_sigmas_polyexponential(7, MODEL.sigma_min, MODEL.sigma_max, rho=2.0)
    assert torch.allclose(ours, ref.float(), rtol=1e-5)
    ours = sigmas_for("exponential", 6, MODEL, params=ScheduleParams(sigma_max=5.0))
    assert torch.allclose(ours, K.get_sigmas_exponential(6, MODEL.sigma_min, 5.0), rtol=1e-5)


class ImageRNGHijack(types.SimpleNamespace):
    """A1111's TorchHijack: k-diffusion's ``torch.randn_like`` draws the next noise from the per-image generators."""

    def __init__(self, generators, shape):
        super().__init__()
        self._generators, self._shape = generators, shape

    def randn_like(self, x):
        return torch.stack([torch.randn(self._shape, generator=g) for g in self._generators])

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.skipif(K is None, reason="k-diffusion is not installed")
def test_euler_with_churn_equals_k_diffusion(load_tiny, tiny_models, monkeypatch):
    from modules.engine.pipeline import decode_latents
    from modules.engine.rng import NoiseSpec, batch_noise
    from tests.engine.test_kloop import reference_latents  # k-diffusion's run of A1111's txt2img

    model = load_tiny(tiny_models["sd1"])
    churn = {"s_churn": 2.0, "s_tmin": 0.2, "s_tmax": 12.0, "s_noise": 1.01}
    req = GenerationRequest(**BASE, sampler_name="Euler", seed=21, batch_size=2, **churn)
    spec = NoiseSpec((4, 8, 8), torch.device("cpu"), "GPU")
    _, generators = batch_noise([21, 22], spec)
    monkeypatch.setattr(K, "torch", ImageRNGHijack(generators, spec.shape))
    monkeypatch.setattr(K, "sample_euler", _with_kwargs(K.sample_euler, **churn))
    ref = decode_latents(model, reference_latents(model, req, [21, 22], "sample_euler", "automatic"))
    monkeypatch.undo()
    result = generate(model, req)
    plain = generate(model, dataclasses.replace(req, s_churn=0.0))
    for a, b in zip(result.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    assert "Sigma churn: 2.0, Sigma tmin: 0.2, Sigma tmax: 12.0, Sigma noise: 1.01" in result.infotexts[0]


def _with_kwargs(fn, **fixed):
    return lambda *args, **kwargs: fn(*args, **{**kwargs, **fixed})


def test_settings_reach_generate(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**BASE, sampler_name="Euler a", scheduler="Beta", seed=3)
    plain = generate(model, req)
    tuned = generate(model, req, GenerationOptions(sampler=SamplerSettings(eta_ancestral=0.5, beta_dist_alpha=0.4)))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(tuned.images[0]))
    text = tuned.infotexts[0]
    assert "Beta schedule alpha: 0.4, Beta schedule beta: 0.6, Eta: 0.5" in text
    discard = generate(model, req, GenerationOptions(sampler=SamplerSettings(always_discard_next_to_last_sigma=True)))
    assert "Discard penultimate sigma: True" in discard.infotexts[0]
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(discard.images[0]))


def test_old_prompt_editing_timelines_change_the_image_and_are_written(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**{**BASE, "prompt": "a [red:blue:1.0] cat"}, sampler_name="Euler", seed=4)
    new = generate(model, req)
    old = generate(model, req, GenerationOptions(use_old_scheduling=True))
    assert "Old prompt editing timelines: True" in old.infotexts[0]
    assert "Old prompt editing timelines" not in new.infotexts[0]
    assert not np.array_equal(np.asarray(new.images[0]), np.asarray(old.images[0]))


def test_ngms_skips_the_uncond_pass_below_its_sigma(load_tiny, tiny_models, monkeypatch):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**BASE, sampler_name="Euler", seed=8)
    cond_only = generate(model, dataclasses.replace(req, cfg_scale=1.0)).images[0]
    rows = record_unet_calls(model, monkeypatch).rows
    all_steps = GenerationOptions(sampler=SamplerSettings(s_min_uncond_all=True))
    every = generate(model, dataclasses.replace(req, s_min_uncond=15.0), all_steps)
    # above every σ (the largest is 14.6), on every step: the cond prediction alone (CFG scale 1), one row per UNet call
    assert rows == [1] * 5
    assert np.array_equal(np.asarray(every.images[0]), np.asarray(cond_only))
    assert "NGMS: 15.0, NGMS all steps: True" in every.infotexts[0]
    rows.clear()
    alternate = generate(model, dataclasses.replace(req, s_min_uncond=15.0))
    assert rows == [2, 1, 2, 1, 2]  # A1111 skips on odd model calls only
    plain = generate(model, req).images[0]
    arrays = [np.asarray(im, dtype=int) for im in (alternate.images[0], plain, cond_only)]
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])
    rows.clear()
    # σ = 14.6, 4.09, 1.62, 0.695, 0.029: below 1.0 are calls 3 and 4, and only the odd one skips
    generate(model, dataclasses.replace(req, s_min_uncond=1.0))
    assert rows == [2, 2, 2, 1, 2]
