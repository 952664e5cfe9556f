"""DDIM, DDIM CFG++, PLMS (A1111's timestep samplers) and LCM: their math against diffusers' independent schedulers,
and generate() on tiny checkpoints against a reference run built from diffusers + A1111's noise.

The pure-function tests report the largest latent difference they measure (``-s`` shows it).
"""

import importlib

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from modules.engine.ksampling.timesteps import a1111_timesteps, ddim, ddim_cfgpp, img2img_start, plms
from modules.engine.pipeline import decode_latents, generate
from modules.engine.prompts import encode_prompt_pair
from modules.engine.rng import NoiseSpec, batch_noise
from modules.engine.sampling import DiscreteModel
from modules.engine.types import GenerationOptions, GenerationRequest, SamplerSettings
from tests.support.kdiffusion_ref import load_sampling
from tests.support.unet_calls import record_unet_calls

K = load_sampling()

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
ALPHAS = DiscreteModel.from_config(SD_BETAS).alphas_cumprod
W = torch.tensor([[0.9, 0.1, 0.0, -0.2], [0.0, 0.8, 0.3, 0.0], [0.1, 0.0, 0.7, 0.2], [-0.1, 0.2, 0.0, 0.9]])
BASE = {"prompt": "a red cat", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 6, "cfg_scale": 5.0}


def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear ε model of x and t."""
    tt = (t.float() / 1000).view(-1, 1, 1, 1)
    return torch.einsum("bchw,cd->bdhw", x, W) * (1 - tt) * 0.5 + torch.tanh(x) * 0.3


def diffusers_scheduler(cls, steps, **kw):
    sched = cls.from_config(
        {**SD_BETAS, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading", **kw}
    )
    sched.alphas_cumprod = ALPHAS.clone()  # the same fp32 table (diffusers builds its own in fp32)
    sched.set_timesteps(steps)
    return sched


def test_a1111_timesteps():
    assert a1111_timesteps(20).tolist() == list(range(1, 1000, 50))
    assert a1111_timesteps(3).tolist() == [1, 334, 667, 999]  # 1000 // 3 leaves a fourth (A1111)
    assert a1111_timesteps(20, discard_next_to_last=True).tolist() == [t + 1 for t in range(0, 1000, 47)]
    assert a1111_timesteps(1).tolist() == [1]


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_follows_diffusers_ddim_scheduler(eta):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=gen)
    draws = [torch.randn(2, 4, 8, 8, generator=gen) for _ in range(19)]
    pending = list(draws)
    calls = []
    ours = ddim(
        lambda x, t: calls.append(float(t[0])) or eps_model(x, t),
        x0.clone(),
        a1111_timesteps(20),
        alphas_cumprod=ALPHAS,
        callback=lambda i, x, d: None,
        noise=lambda: pending.pop(0),
        eta=eta,
    )
    sched = diffusers_scheduler(DDIMScheduler, 20, clip_sample=False)
    assert sched.timesteps.tolist()[:19] == list(range(951, 0, -50))[:19]
    x = x0.clone()
    for k, t in enumerate(sched.timesteps[:19]):  # A1111 stops at t = 1, one update before diffusers
        kw = {"variance_noise": draws[k]} if eta else {}
        x = sched.step(eps_model(x, t.expand(2)), t, x, eta=eta, **kw).prev_sample
    diff = float((ours - x).abs().max())
    print(f"DDIM eta={eta}: max latent difference vs diffusers {diff:.2e}")
    assert calls == [float(t) for t in range(951, 1, -50)]
    assert diff < 1e-5 and not pending if eta else diff < 1e-5


def test_plms_follows_diffusers_pndm_scheduler():
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    calls = []
    ours = plms(
        lambda x, t: calls.append(float(t[0])) or eps_model(x, t),
        x0.clone(),
        a1111_timesteps(10),
        alphas_cumprod=ALPHAS,
        callback=lambda i, x, d: None,
    )
    sched = diffusers_scheduler(PNDMScheduler, 10, skip_prk_steps=True)
    x = x0.clone()
    for t in sched.timesteps[:-1]:  # every call but the last update (A1111 ends at t = 1)
        x = sched.step(eps_model(x, t.expand(1)), t, x).prev_sample
    diff = float((ours - x).abs().max())
    print(f"PLMS: max latent difference vs diffusers {diff:.2e}")
    assert calls[:3] == [901.0, 801.0, 801.0]  # the first update evaluates twice (pseudo improved Euler)
    assert len(calls) == 10 and diff < 1e-5


def test_ddim_cfgpp_steers_by_the_unconditional_prediction():
    class Guided:
        last_uncond = None

        def __call__(self, x, t):
            self.last_uncond = torch.tanh(x)
            return x * 0.5

    x = torch.randn(1, 4, 2, 2)
    out = ddim_cfgpp(
        Guided(), x, torch.tensor([1, 51]), alphas_cumprod=ALPHAS, callback=lambda *a: None, noise=lambda: None
    )
    a, a_prev = float(ALPHAS[51]), float(ALPHAS[1])
    pred_x0 = (x - (1 - a) ** 0.5 * x * 0.5) / a**0.5
    expected = a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * torch.tanh(x)
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="unconditional"):
        ddim_cfgpp(eps_model, x, torch.tensor([1, 51]), alphas_cumprod=ALPHAS, callback=lambda *a: None, noise=None)


def test_img2img_start_noises_to_the_timestep_above_the_first_update():
    init, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    x, ts = img2img_start(init, noise, a1111_timesteps(10), 5, ALPHAS)
    a = float(ALPHAS[501])
    assert ts.tolist() == [1, 101, 201, 301, 401]
    assert torch.allclose(x, init * a**0.5 + noise * (1 - a) ** 0.5)


def cfg_eps_reference(model, req):
    """ε with A1111's CFG over the tiny UNet (v models: converted to ε)."""
    pipe = model.components
    embeds = encode_prompt_pair(pipe, model.model_type, [req.prompt], [req.negative_prompt])
    v = model.prediction_type == "v_prediction"

    def eps(x, t):
        bs = x.shape[0]
        ctx = torch.cat([embeds.prompt_embeds.expand(bs, -1, -1), embeds.negative_prompt_embeds.expand(bs, -1, -1)])
        tt = t.expand(bs).float()
        out = pipe.unet(torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=ctx).sample
        if v:
            a = ALPHAS[int(t)]
            out = a.sqrt() * out + (1 - a).sqrt() * torch.cat([x, x])
        cond, uncond = out[:bs], out[bs:]
        return uncond + (cond - uncond) * req.cfg_scale

    return eps


@pytest.mark.parametrize(
    ("kind", "sampler", "eta"), [("sd1", "DDIM", 0.0), ("sd1", "DDIM", 0.7), ("sd2v", "DDIM", 0.0)]
)
def test_generate_ddim_equals_diffusers_reference_with_a1111_noise(load_tiny, tiny_models, kind, sampler, eta):
    model = load_tiny(tiny_models[kind])
    # 5 steps: 1000 // 5 spaces A1111's timesteps exactly like diffusers' "leading" ones
    req = GenerationRequest(**{**BASE, "steps": 5}, sampler_name=sampler, seed=42, batch_size=2, eta=eta)
    spec = NoiseSpec((4, 8, 8), torch.device("cpu"), "GPU")
    noise, generators = batch_noise([42, 43], spec)
    eps = cfg_eps_reference(model, req)
    sched = diffusers_scheduler(DDIMScheduler, req.steps, clip_sample=False)
    x = noise.clone()
    with torch.inference_mode():
        for t in sched.timesteps[:-1]:
            z = torch.stack([torch.randn(spec.shape, generator=g) for g in generators]) if eta else None
            x = sched.step(eps(x, t), t, x, eta=eta, variance_noise=z).prev_sample
    ref = decode_latents(model, x)
    result = generate(model, req)
    for a, b in zip(result.images, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert ("Eta DDIM: 0.7" in result.infotexts[0]) == bool(eta)


def test_generate_plms_equals_diffusers_reference(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**{**BASE, "steps": 5}, sampler_name="PLMS", seed=5)
    noise, _ = batch_noise([5], NoiseSpec((4, 8, 8), torch.device("cpu"), "GPU"))
    eps = cfg_eps_reference(model, req)
    sched = diffusers_scheduler(PNDMScheduler, req.steps, skip_prk_steps=True)
    x = noise.clone()
    with torch.inference_mode():
        for t in sched.timesteps[:-1]:
            x = sched.step(eps(x, t), t, x).prev_sample
    ref = np.asarray(decode_latents(model, x)[0], dtype=int)
    assert np.abs(np.asarray(generate(model, req).images[0], dtype=int) - ref).max() <= 1


def test_ddim_with_eta_batch_equals_single_jobs(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    batch = generate(model, GenerationRequest(**BASE, sampler_name="DDIM", seed=100, batch_size=3, eta=1.0)).images
    for i, image in enumerate(batch):
        single = generate(model, GenerationRequest(**BASE, sampler_name="DDIM", seed=100 + i, eta=1.0)).images[0]
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(single, dtype=int)).max() <= 1


def test_img2img_with_ddim_runs_a1111s_steps(load_tiny, tiny_models, monkeypatch):
    from PIL import Image

    model = load_tiny(tiny_models["sd1"])
    calls = record_unet_calls(model, monkeypatch).timesteps
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    req = GenerationRequest(**{**BASE, "steps": 10}, sampler_name="DDIM", seed=3, init_images=(init,))
    req = __import__("dataclasses").replace(req, denoising_strength=0.5)
    image = generate(model, req).images[0]
    assert np.asarray(image).std() > 0
    # t_enc = int(0.5 · 10) = 5: timesteps [1, 101, 201, 301, 401]; updates from 401 down to 101
    assert calls == [401.0, 301.0, 201.0, 101.0]


def test_every_new_sampler_generates_finite_distinct_reproducible_images(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    arrays = {}
    for sampler in ("DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"):
        req = GenerationRequest(**{**BASE, "steps": 4}, sampler_name=sampler, seed=9)
        arrays[sampler] = np.asarray(generate(model, req).images[0], dtype=np.int16)
        assert arrays[sampler].std() > 0, sampler
    names = sorted(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(arrays[a], arrays[b]), (a, b)
    again = generate(model, GenerationRequest(**{**BASE, "steps": 4}, sampler_name="LCM", seed=9)).images[0]
    assert np.array_equal(np.asarray(again, dtype=np.int16), arrays["LCM"])


def test_lcm_runs_a1111s_lcm_denoiser(load_tiny, tiny_models, monkeypatch):
    """LCM: timesteps 999 … 19 on the 50-step grid, and the output is its boundary-condition step."""
    model = load_tiny(tiny_models["sd1"])
    calls = record_unet_calls(model, monkeypatch).timesteps
    req = GenerationRequest(**{**BASE, "steps": 4}, sampler_name="LCM", seed=9)
    generate(model, req)
    # uniform over the LCM grid: t = 999, 679, 339, 19 (nearest of 20k + 19 for linspace(49, 0, 4) = 49, 32.67, …)
    assert calls == [999, 679, 339, 19]


def test_uni_pc_settings_change_the_trajectory(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**{**BASE, "steps": 5}, sampler_name="UniPC", seed=4)
    default = np.asarray(generate(model, req).images[0], dtype=int)
    bh2 = GenerationOptions(sampler=SamplerSettings(uni_pc_variant="bh2"))
    other = np.asarray(generate(model, req, bh2).images[0], dtype=int)
    assert not np.array_equal(default, other)


@pytest.mark.skipif(K is None, reason="k-diffusion is not installed (tests/requirements-nodeps.txt)")
def test_generate_lcm_equals_a1111s_construction_over_k_diffusion(load_tiny, tiny_models):
    """A1111's LCM: k-diffusion's DiscreteEpsDDPMDenoiser over ᾱ at 19, 39, …, 999, the nearest of those timesteps
    for the UNet, LCM's boundary condition on top, A1111's ``sample_lcm`` loop, noise from the per-image generators.
    """
    ext = importlib.import_module("k_diffusion.external")
    model = load_tiny(tiny_models["sd1"])
    pipe = model.components
    req = GenerationRequest(**{**BASE, "steps": 4}, sampler_name="LCM", seed=9, batch_size=2)
    embeds = encode_prompt_pair(pipe, model.model_type, [req.prompt], [req.negative_prompt])
    den = ext.DiscreteEpsDDPMDenoiser(torch.nn.Identity(), ALPHAS[19::20], quantize=False)

    def lcm_t(sigma):
        return (sigma.log() - den.log_sigmas[:, None]).abs().argmin(dim=0) * 20 + 19

    def model_fn(x, sigma):
        bs = x.shape[0]
        ctx = torch.cat([embeds.prompt_embeds.expand(bs, -1, -1), embeds.negative_prompt_embeds.expand(bs, -1, -1)])
        x_in, s_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        c_out, c_in = (c[:, None, None, None] for c in den.get_scalings(s_in))
        t = lcm_t(s_in)
        eps = pipe.unet(x_in * c_in, t, encoder_hidden_states=ctx).sample
        tau = t.float()[:, None, None, None] * 10
        out = tau / (tau**2 + 0.25) ** 0.5 * (x_in + eps * c_out) + 0.25 / (tau**2 + 0.25) * x_in
        cond, uncond = out[:bs], out[bs:]
        return uncond + (cond - uncond) * req.cfg_scale

    t = torch.linspace(999, 19, req.steps)
    sigmas = torch.cat([den.t_to_sigma(((t - 19) / 20).clamp(0, 49)), torch.zeros(1)])
    spec = NoiseSpec((4, 8, 8), torch.device("cpu"), "GPU")
    noise, generators = batch_noise([9, 10], spec)
    x = noise * sigmas[0]
    with torch.inference_mode():
        for i in range(req.steps):
            x = model_fn(x, sigmas[i].expand(2))
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * torch.stack([torch.randn(spec.shape, generator=g) for g in generators])
    for a, b in zip(generate(model, req).images, decode_latents(model, x), strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
