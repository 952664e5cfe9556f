"""generate() through the own sampling loop equals k-diffusion's reference run with A1111's noise (tiny checkpoints).

The reference is built only from k-diffusion (its Discrete*DDPMDenoiser over the same UNet, its sample_* function
and get_sigmas_*), A1111's CFG formula written out here, and the seed noise of ``rng.batch_noise``.
"""

import importlib

import numpy as np
import pytest
import torch

from modules.engine import kloop
from modules.engine.ksampling.schedules import AYS_SD1, AYS_SDXL
from modules.engine.pipeline import decode_latents, generate
from modules.engine.progress import NoControls
from modules.engine.prompts import encode_group, encode_prompt_pair
from modules.engine.rng import NoiseSpec, batch_noise, make_generator
from modules.engine.types import GenerationOptions, GenerationRequest
from tests.support.kdiffusion_ref import load_sampling

K = load_sampling()
pytestmark = pytest.mark.skipif(K is None, reason="k-diffusion is not installed (tests/requirements-nodeps.txt)")

BASE = {"prompt": "a red cat", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 6, "cfg_scale": 5.0}


def alphas_cumprod(model):
    cfg = model.components.schedule
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"]) ** 2
    return torch.cumprod(1 - betas, 0)


def reference_latents(model, req, seeds, sampler_fn, schedule, ensd=0, discard=False):
    """k-diffusion's run of A1111's txt2img for ``req`` (epsilon or v models, SD1/SD2)."""
    ext = importlib.import_module("k_diffusion.external")
    pipe = model.components
    embeds = encode_prompt_pair(pipe, model.model_type, [req.prompt], [req.negative_prompt])
    cls = ext.DiscreteVDDPMDenoiser if model.prediction_type == "v_prediction" else ext.DiscreteEpsDDPMDenoiser

    class Inner(torch.nn.Module):
        def forward(self, x, t, context):
            return pipe.unet(x, t, encoder_hidden_states=context).sample

    wrapped = cls(Inner(), alphas_cumprod(model), quantize=False)

    def cfg_model(x, sigma):
        x_in, s_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        bs = x.shape[0]
        ctx = torch.cat([embeds.prompt_embeds.expand(bs, -1, -1), embeds.negative_prompt_embeds.expand(bs, -1, -1)])
        out = wrapped(x_in, s_in, context=ctx)
        cond, uncond = out[:bs], out[bs:]
        return uncond + (cond - uncond) * req.cfg_scale

    n = req.steps + 1 if discard else req.steps
    if schedule == "karras":
        sigmas = K.get_sigmas_karras(n, float(wrapped.sigma_min), float(wrapped.sigma_max))
    elif schedule == "exponential":
        sigmas = K.get_sigmas_exponential(n, float(wrapped.sigma_min), float(wrapped.sigma_max))
    else:
        sigmas = wrapped.get_sigmas(n)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    spec = NoiseSpec((4, req.height // 8, req.width // 8), torch.device("cpu"), "GPU")
    noise, generators = batch_noise(seeds, spec)
    if ensd:
        generators = [make_generator(s + ensd, spec) for s in seeds]

    def next_noise(*_):
        return torch.stack([torch.randn(spec.shape, generator=g) for g in generators])

    kwargs = {"noise_sampler": next_noise} if "ancestral" in sampler_fn else {}
    if sampler_fn in ("sample_dpm_fast", "sample_dpm_adaptive"):
        # A1111's txt2img: the model's σ range instead of the schedule, n = steps (fast), its eta (1)
        kwargs = {"noise_sampler": next_noise, "eta": 1.0, "sigma_min": float(wrapped.sigma_min)}
        kwargs["sigma_max"] = float(wrapped.sigma_max)
        if sampler_fn == "sample_dpm_fast":
            kwargs["n"] = req.steps
        with torch.inference_mode():
            return getattr(K, sampler_fn)(cfg_model, noise * sigmas[0], disable=True, **kwargs)
    if "sde" in sampler_fn:
        x = noise * sigmas[0]
        kwargs["noise_sampler"] = K.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    with torch.inference_mode():
        return getattr(K, sampler_fn)(cfg_model, noise * sigmas[0], sigmas, disable=True, **kwargs)


@pytest.mark.parametrize(
    ("kind", "sampler", "fn", "schedule"),
    [
        ("sd1", "Euler", "sample_euler", "automatic"),
        ("sd1", "DPM++ 2M", "sample_dpmpp_2m", "karras"),
        ("sd1", "Heun", "sample_heun", "automatic"),
        ("sd2v", "Euler", "sample_euler", "automatic"),
        ("sd1", "Euler a", "sample_euler_ancestral", "automatic"),
        ("sd1", "DPM++ 2M SDE", "sample_dpmpp_2m_sde", "exponential"),
        ("sd1", "DPM2 a", "sample_dpm_2_ancestral", "karras"),
        ("sd1", "LMS", "sample_lms", "automatic"),
    ],
)
def test_generate_equals_k_diffusion_reference(load_tiny, tiny_models, kind, sampler, fn, schedule):
    model = load_tiny(tiny_models[kind])
    req = GenerationRequest(**BASE, sampler_name=sampler, seed=42, batch_size=2)
    discard = sampler.startswith("DPM2")
    ref = decode_latents(model, reference_latents(model, req, [42, 43], fn, schedule, discard=discard))
    ours = generate(model, req).images
    for a, b in zip(ours, ref, strict=True):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()
        assert diff <= 1, f"{kind} {sampler}: pixel difference {diff}"


def test_ensd_reseeds_ancestral_noise_only(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    ancestral = GenerationRequest(**BASE, sampler_name="Euler a", seed=7)
    plain = generate(model, ancestral).images[0]
    with_ensd = generate(model, ancestral, GenerationOptions(eta_noise_seed_delta=31337)).images[0]
    ref = decode_latents(model, reference_latents(model, ancestral, [7], "sample_euler_ancestral", "auto", 31337))[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(with_ensd))
    assert np.abs(np.asarray(with_ensd, dtype=int) - np.asarray(ref, dtype=int)).max() <= 1
    euler = GenerationRequest(**BASE, sampler_name="Euler", seed=7)
    a = generate(model, euler).images[0]
    b = generate(model, euler, GenerationOptions(eta_noise_seed_delta=31337)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ancestral_batch_equals_single_jobs(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    batch = generate(model, GenerationRequest(**BASE, sampler_name="Euler a", seed=100, batch_size=3)).images
    for i, image in enumerate(batch):
        single = generate(model, GenerationRequest(**BASE, sampler_name="Euler a", seed=100 + i)).images[0]
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(single, dtype=int)).max() <= 1


def test_interrupt_returns_the_last_denoised_prediction(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])

    class StopAfterTwo(NoControls):
        def __init__(self):
            self.steps = []

        def report(self, step, total, job_no=0, job_count=1):
            self.steps.append(step)

        def should_stop(self):
            return len(self.steps) >= 2

        def should_skip(self):
            return False

        def clear_skip(self):
            pass

    controls = StopAfterTwo()
    result = generate(model, GenerationRequest(**BASE, sampler_name="Euler", seed=1), controls=controls)
    assert result.interrupted and controls.steps == [1, 2] and len(result.images) == 1


def test_long_prompt_and_short_negative_run_as_separate_unet_calls(load_tiny, tiny_models):
    """A1111 (no pad_cond_uncond): a 2-chunk prompt and a 1-chunk negative are not padded to the same length."""
    ext = importlib.import_module("k_diffusion.external")
    model = load_tiny(tiny_models["sd1"])
    prompt = ", ".join(f"word{i}" for i in range(60))  # well over 75 tokens: two chunks
    req = GenerationRequest(**{**BASE, "prompt": prompt}, sampler_name="Euler", seed=5)
    ((cond, _),) = encode_group(model.components, model.model_type, [prompt])
    ((uncond, _),) = encode_group(model.components, model.model_type, [req.negative_prompt], negative=True)
    assert cond.shape[0] >= 154 and uncond.shape[0] == 77

    class Inner(torch.nn.Module):
        def forward(self, x, t, context):
            return model.components.unet(x, t, encoder_hidden_states=context).sample

    wrapped = ext.DiscreteEpsDDPMDenoiser(Inner(), alphas_cumprod(model), quantize=False)

    def cfg_model(x, sigma):
        c = wrapped(x, sigma, context=cond[None])
        u = wrapped(x, sigma, context=uncond[None])
        return u + (c - u) * req.cfg_scale

    sigmas = wrapped.get_sigmas(req.steps)
    noise, _ = batch_noise([5], NoiseSpec((4, 8, 8), torch.device("cpu"), "GPU"))
    with torch.inference_mode():
        ref = K.sample_euler(cfg_model, noise * sigmas[0], sigmas, disable=True)
    ours = generate(model, req).images[0]
    diff = np.abs(np.asarray(ours, dtype=int) - np.asarray(decode_latents(model, ref)[0], dtype=int)).max()
    assert diff <= 1


def test_dpm_fast_equals_k_diffusion_reference(load_tiny, tiny_models):
    """A1111's txt2img call: the model's σ range, n = steps, eta 1 with per-image generator noise."""
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**BASE, sampler_name="DPM fast", seed=42, batch_size=2)
    ref = decode_latents(model, reference_latents(model, req, [42, 43], "sample_dpm_fast", "auto"))
    ours = generate(model, req).images
    for a, b in zip(ours, ref, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_dpm_adaptive_equals_k_diffusion_on_the_same_denoiser(load_tiny, tiny_models, monkeypatch):
    """DPM adaptive's step-size control amplifies σ-table round-off (its error is a difference of two solutions),
    so the reference runs k-diffusion's sample_dpm_adaptive on our denoiser, with A1111's txt2img arguments."""
    model = load_tiny(tiny_models["sd1"])
    req = GenerationRequest(**BASE, sampler_name="DPM adaptive", seed=42, batch_size=2)
    ours = generate(model, req).images
    # A1111's σ table: the LDM float64 betas → alphas_cumprod buffer (fp32) → σ
    cfg = model.components.schedule
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    buffer = torch.cumprod(1 - betas, 0).float()
    sigmas = ((1 - buffer) / buffer) ** 0.5
    calls = []

    def k_adaptive(denoiser, x, schedule, *, callback, noise, options):
        calls.append(options)
        # the table's ends (σ_min differs by ~1e-5 relative: DiscreteModel takes σ from float64 ᾱ, A1111 from fp32)
        assert options.sigma_min == pytest.approx(float(sigmas[0]), rel=1e-4)
        assert options.sigma_max == pytest.approx(float(sigmas[-1]), rel=1e-6)
        assert options.n == req.steps
        assert options.eta == 1.0
        return K.sample_dpm_adaptive(
            denoiser, x, options.sigma_min, options.sigma_max, eta=1.0, noise_sampler=noise, disable=True
        )

    monkeypatch.setitem(kloop.SAMPLERS, "DPM adaptive", k_adaptive)
    ref = generate(model, req).images
    assert len(calls) == 1
    for a, b in zip(ours, ref, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


NEW_SAMPLERS = ["DPM fast", "DPM adaptive", "Restart"]
NEW_SCHEDULES = ["KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


def test_new_samplers_and_schedules_generate_finite_different_images(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    images = {}
    base = {**BASE, "steps": 4}
    for sampler in NEW_SAMPLERS:
        images[sampler] = generate(model, GenerationRequest(**base, sampler_name=sampler, seed=9)).images[0]
    for schedule in NEW_SCHEDULES:
        req = GenerationRequest(**base, sampler_name="Euler", scheduler=schedule, seed=9)
        images[schedule] = generate(model, req).images[0]
    arrays = {name: np.asarray(image, dtype=np.int16) for name, image in images.items()}
    for name, array in arrays.items():
        assert array.shape == (64, 64, 3) and array.std() > 0, name
    names = sorted(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(arrays[a], arrays[b]), (a, b)
    # and they are reproducible
    again = generate(model, GenerationRequest(**base, sampler_name="Restart", seed=9)).images[0]
    assert np.array_equal(np.asarray(again, dtype=np.int16), arrays["Restart"])


def test_align_your_steps_uses_the_sdxl_list_for_sdxl(load_tiny, tiny_models, monkeypatch):
    seen = []
    real = kloop.sigmas_for

    def spy(*args, **kwargs):
        sigmas = real(*args, **kwargs)
        seen.append(sigmas)
        return sigmas

    monkeypatch.setattr(kloop, "sigmas_for", spy)
    for kind in ("sd1", "sdxl"):
        model = load_tiny(tiny_models[kind])
        generate(model, GenerationRequest(**{**BASE, "steps": 11}, sampler_name="Euler", scheduler="Align Your Steps"))
    assert seen[0][:-1].tolist() == torch.tensor(AYS_SD1).tolist()
    assert seen[1][:-1].tolist() == torch.tensor(AYS_SDXL).tolist()
