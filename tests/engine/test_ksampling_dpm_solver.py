"""DPM fast / DPM adaptive against k-diffusion's sample_dpm_fast / sample_dpm_adaptive (what A1111 runs)."""

import pytest
import torch

from modules.engine.ksampling.dpm_solver import PIDStepSize, dpm_adaptive, dpm_fast
from modules.engine.ksampling.samplers import SAMPLERS, SamplerOptions
from modules.engine.ksampling.schedules import sigmas_for
from modules.engine.sampling import DiscreteModel, img2img_sigmas
from tests.support.kdiffusion_ref import load_sampling
from tests.support.toy_denoiser import SD_CONFIG, ToyDenoiser

K = load_sampling()
needs_k = pytest.mark.skipif(K is None, reason="k-diffusion is not installed (tests/requirements-nodeps.txt)")
MODEL = DiscreteModel.from_config(SD_CONFIG)


class Counted:
    """The toy denoiser, recording the σ of every call."""

    def __init__(self):
        self.net = ToyDenoiser()
        self.sigmas = []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma[0]))
        return self.net(x, sigma)


def noise_draws(n=300):
    return [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]


def from_draws(draws):
    it = iter(draws)
    return lambda *args: next(it)


def run_both(name, sigmas, options, sigma_min, sigma_max, n):
    """(ours, k-diffusion's, our model σs, k-diffusion's model σs, our callback steps) for the same inputs."""
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    draws = noise_draws()
    ours_model, ref_model, steps = Counted(), Counted(), []
    with torch.no_grad():
        ours = SAMPLERS[name](
            ours_model,
            x0.clone(),
            sigmas,
            callback=lambda i, x, d: steps.append(i),
            noise=from_draws(draws),
            options=options,
        )
        kwargs = {"n": n} if name == "DPM fast" else {}
        fn = K.sample_dpm_fast if name == "DPM fast" else K.sample_dpm_adaptive
        ref = fn(
            ref_model,
            x0.clone(),
            sigma_min,
            sigma_max,
            eta=options.eta,
            noise_sampler=from_draws(draws),
            disable=True,
            **kwargs,
        )
    return ours, ref, ours_model.sigmas, ref_model.sigmas, steps


@needs_k
@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
@pytest.mark.parametrize("eta", [1.0, 0.0])
@pytest.mark.parametrize("steps", [7, 8, 9, 20])
def test_txt2img_matches_k_diffusion(name, eta, steps):
    """A1111's txt2img: the model's σ range and n = steps, whatever the schedule."""
    sigmas = sigmas_for("automatic", steps, MODEL)
    options = SamplerOptions(eta=eta, sigma_min=MODEL.sigma_min, sigma_max=MODEL.sigma_max, n=steps)
    ours, ref, ours_calls, ref_calls, _ = run_both(name, sigmas, options, MODEL.sigma_min, MODEL.sigma_max, steps)
    diff = (ours - ref).abs().max().item()
    print(f"{name} eta={eta} steps={steps}: max |ours - k-diffusion| = {diff:.3g}")
    assert diff < 1e-5
    assert ours_calls == pytest.approx(ref_calls, rel=1e-6)
    if name == "DPM fast":
        assert len(ours_calls) == steps  # n model calls exactly


@needs_k
@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
def test_img2img_tail_matches_k_diffusion(name):
    """A1111's img2img: σ_max = the tail's first σ, σ_min = its second-to-last, n = its steps."""
    tail = img2img_sigmas(sigmas_for("karras", 20, MODEL), 20, 0.6)
    n = len(tail) - 1
    ours, ref, ours_calls, ref_calls, _ = run_both(name, tail, SamplerOptions(), float(tail[-2]), float(tail[0]), n)
    assert (ours - ref).abs().max().item() < 1e-5
    assert len(ours_calls) == len(ref_calls)


def test_dpm_fast_orders_and_callbacks():
    """n calls: ⌊n/3⌋ + 1 steps of order 3, …, then n mod 3 (or 2, 1); one callback per step, before it."""
    for n, expected_steps in [(9, 4), (10, 4), (11, 4), (3, 2), (1, 1)]:
        sigmas = sigmas_for("automatic", n, MODEL)
        model, steps = Counted(), []
        dpm_fast(
            model,
            torch.ones(2, 4, 8, 8) * sigmas[0],
            sigmas,
            callback=lambda i, x, d, steps=steps: steps.append(i),
            noise=lambda *a: torch.zeros(2, 4, 8, 8),
            options=SamplerOptions(eta=0.0),
        )
        assert len(model.sigmas) == n and steps == list(range(expected_steps))
        assert model.sigmas[0] == pytest.approx(float(sigmas[0]), rel=1e-5)


def test_dpm_adaptive_ends_at_sigma_min_and_counts_attempts():
    sigmas = sigmas_for("automatic", 10, MODEL)
    model, steps = Counted(), []
    with torch.no_grad():
        x = dpm_adaptive(
            model,
            torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * sigmas[0],
            sigmas,
            callback=lambda i, x, d: steps.append(i),
            noise=lambda *a: torch.zeros(1, 4, 8, 8),
            options=SamplerOptions(eta=0.0),
        )
    assert torch.isfinite(x).all()
    assert steps == list(range(len(steps))) and len(model.sigmas) == 3 * len(steps)  # order 3: 3 calls per try
    assert min(model.sigmas) > float(sigmas[-2]) * 0.999 and max(model.sigmas) == pytest.approx(float(sigmas[0]))


def test_pid_controller_rejects_large_errors_and_shrinks_h():
    pid = PIDStepSize(0.05)
    assert pid.propose(0.5) and pid.h > 0.05  # error below 1: accept and grow
    h = pid.h
    assert not pid.propose(100.0) and pid.h < h  # far above 1: reject and shrink


def test_zero_sigma_range_is_refused():
    with pytest.raises(ValueError, match="above 0"):
        dpm_fast(
            Counted(),
            torch.zeros(1, 4, 8, 8),
            torch.tensor([1.0, 0.5, 0.0]),
            callback=lambda *a: None,
            noise=lambda *a: torch.zeros(1, 4, 8, 8),
            options=SamplerOptions(sigma_min=0.0, sigma_max=1.0, n=2),
        )
