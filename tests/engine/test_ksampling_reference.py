"""Our sampler steps and schedules against k-diffusion's own functions (what A1111 runs), same sigmas and noise."""

import inspect

import pytest
import torch

from modules.engine.ksampling.samplers import SAMPLERS, SamplerOptions
from modules.engine.ksampling.schedules import sigmas_for
from modules.engine.sampling import BrownianNoise, DiscreteModel
from tests.support.kdiffusion_ref import load_sampling
from tests.support.toy_denoiser import SD_CONFIG, ToyDenoiser

K = load_sampling()
pytestmark = pytest.mark.skipif(K is None, reason="k-diffusion is not installed (tests/requirements-nodeps.txt)")

K_NAMES = {
    "Euler": ("sample_euler", {}),
    "Euler a": ("sample_euler_ancestral", {}),
    "Heun": ("sample_heun", {}),
    "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "LMS": ("sample_lms", {}),
    "DPM2": ("sample_dpm_2", {}),
    "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {"solver_type": "midpoint"}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
}


def test_discrete_model_matches_k_diffusion_schedule():
    model = DiscreteModel.from_config(SD_CONFIG)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    ref = K.append_zero(((1 - alphas) / alphas).sqrt().float().flip(0))
    assert model.sigma_min == pytest.approx(0.0292, abs=1e-4) and model.sigma_max == pytest.approx(14.6146, abs=1e-3)
    uniform = model.uniform(20)
    # k-diffusion's DiscreteSchedule.get_sigmas: t = linspace(999, 0, n) → t_to_sigma (log-linear), + 0
    assert uniform[0] == pytest.approx(float(ref[0]), rel=1e-5) and uniform[-1] == 0
    t = model.sigma_to_t(uniform[:-1])
    assert torch.allclose(t, torch.linspace(999, 0, 20), atol=1e-3)


@pytest.mark.parametrize("schedule", ["karras", "exponential", "polyexponential"])
def test_schedules_equal_k_diffusion(schedule):
    model = DiscreteModel.from_config(SD_CONFIG)
    ours = sigmas_for(schedule, 20, model)
    ref = getattr(K, f"get_sigmas_{schedule}")(
        20, model.sigma_min, model.sigma_max, **({"rho": 1.0} if schedule == "polyexponential" else {})
    )
    assert torch.allclose(ours, ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(K_NAMES))
def test_sampler_matches_k_diffusion(name):
    model = DiscreteModel.from_config(SD_CONFIG)
    sigmas = sigmas_for("karras", 12, model)
    net = ToyDenoiser()
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    noise_draws = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(100 + i)) for i in range(40)]

    def noise_from(draws):
        it = iter(draws)
        return lambda *args: next(it)

    with torch.no_grad():
        ours = SAMPLERS[name](
            net, x0.clone(), sigmas, callback=lambda *a: None, noise=noise_from(noise_draws), options=SamplerOptions()
        )
        fn, extra = K_NAMES[name]
        kwargs = {"disable": True, **extra}
        if "noise_sampler" in inspect.signature(getattr(K, fn)).parameters:
            kwargs["noise_sampler"] = noise_from(noise_draws)
        ref = getattr(K, fn)(net, x0.clone(), sigmas, **kwargs)
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max |ours - k-diffusion| = {diff:.3g}")
    assert diff < 1e-5


def test_every_implemented_sampler_is_compared():
    # DPM fast / DPM adaptive: tests/engine/test_ksampling_dpm_solver.py; Restart (A1111-only):
    # tests/engine/test_ksampling_restart.py; LCM (A1111-only): tests/engine/test_timestep_samplers.py.
    assert set(SAMPLERS) == set(K_NAMES) | {"DPM fast", "DPM adaptive", "Restart", "LCM"}


def test_brownian_noise_equals_k_diffusion_tree_per_seed():
    model = DiscreteModel.from_config(SD_CONFIG)
    sigmas = sigmas_for("exponential", 8, model)
    x = torch.zeros(3, 4, 8, 8)
    ours = BrownianNoise(x, sigmas, [11, 12, 13])
    ref = K.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=[11, 12, 13])
    single = BrownianNoise(x[:1], sigmas, [12])
    for i in range(len(sigmas) - 2):
        a, b = ours(sigmas[i], sigmas[i + 1]), ref(sigmas[i], sigmas[i + 1])
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(single(sigmas[i], sigmas[i + 1])[0], a[1], atol=1e-6)  # image 1 == its own job
