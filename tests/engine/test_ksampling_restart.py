"""Restart (A1111's modules/sd_samplers_extra.py; k-diffusion has none) against a plain reading of A1111's algorithm,
plus its properties: model calls, step count, restart segment, determinism with seeded noise."""

import pytest
import torch

from modules.engine.ksampling.restart import Restart, default_plan, restart, step_list
from modules.engine.ksampling.samplers import SamplerOptions
from modules.engine.ksampling.schedules import karras, sigmas_for
from modules.engine.sampling import DiscreteModel
from tests.support.kdiffusion_ref import load_sampling
from tests.support.toy_denoiser import SD_CONFIG, ToyDenoiser

K = load_sampling()
MODEL = DiscreteModel.from_config(SD_CONFIG)
SHAPE = (2, 4, 8, 8)


class Counted:
    def __init__(self):
        self.net = ToyDenoiser()
        self.sigmas = []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma[0]))
        return self.net(x, sigma)


def seeded_noise(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda *args: torch.randn(SHAPE, generator=gen)


def a1111_restart(model, x, sigmas, noise, get_sigmas_karras):
    """A1111's restart_sampler with its automatic restart list, read step by step (s_noise 1)."""
    steps = sigmas.shape[0] - 1
    restart_list = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            n, times, high = restart_list[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - high), dim=0))
            if max_idx < min_idx:
                grid = get_sigmas_karras(n, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                for _ in range(times):
                    pairs.extend((grid[j], grid[j + 1]) for j in range(len(grid) - 1))
    last = None
    ones = x.new_ones([x.shape[0]])
    for old, new in pairs:
        if last is None:
            last = old
        elif last < old:
            x = x + noise() * (old**2 - last**2) ** 0.5
        denoised = model(x, old * ones)
        d = (x - denoised) / old
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = (x_2 - model(x_2, new * ones)) / new
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x


def run(sigmas, seed=5, model=None):
    model = model or Counted()
    steps = []
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    with torch.no_grad():
        out = restart(
            model,
            x0,
            sigmas,
            callback=lambda i, x, d: steps.append(i),
            noise=seeded_noise(seed),
            options=SamplerOptions(),
        )
    return out, model, steps


@pytest.mark.parametrize("steps", [10, 20, 40])
@pytest.mark.parametrize("schedule", ["karras", "automatic"])
def test_matches_a_plain_reading_of_a1111(steps, schedule):
    sigmas = sigmas_for(schedule, steps, MODEL)
    get_sigmas_karras = K.get_sigmas_karras if K is not None else karras
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    with torch.no_grad():
        ref = a1111_restart(ToyDenoiser(), x0.clone(), sigmas, seeded_noise(5), get_sigmas_karras)
    ours, _, _ = run(sigmas)
    diff = (ours - ref).abs().max().item()
    print(f"Restart {schedule} {steps} steps: max |ours - A1111 reading| = {diff:.3g}")
    assert diff < 1e-5


@pytest.mark.parametrize(("steps", "restart_steps", "times"), [(10, 0, 0), (19, 0, 0), (20, 9, 1), (36, 9, 2)])
def test_steps_and_model_calls(steps, restart_steps, times):
    """The step count stays ``steps``; Heun calls the model twice per step except into σ = 0."""
    sigmas = sigmas_for("karras", steps, MODEL)
    _, model, callbacks = run(sigmas)
    assert callbacks == list(range(steps))
    assert len(model.sigmas) == 2 * steps - 1
    main, restarts = default_plan(sigmas)
    assert len(main) - 1 == steps - restart_steps * times
    assert restarts == ([Restart(0.1, restart_steps + 1, times, 2.0)] if times else [])


def test_restart_segment_goes_back_up_and_re_noises():
    sigmas = sigmas_for("karras", 20, MODEL)
    main, restarts = default_plan(sigmas)
    assert torch.allclose(main, karras(11, float(sigmas[-2]), float(sigmas[0])))
    pairs = step_list(main, restarts)
    low = int(torch.argmin((main - 0.1).abs()))
    high = int(torch.argmin((main - 2.0).abs()))
    assert high < low and len(pairs) == 20
    # the main schedule up to the restart point, then 9 steps from σ(high) down to σ(low), then the rest
    assert [float(a) for a, _ in pairs[:low]] == main[:low].tolist()
    segment = pairs[low : low + 9]
    assert float(segment[0][0]) == pytest.approx(float(main[high]), rel=1e-5)
    assert float(segment[-1][1]) == pytest.approx(float(main[low]), rel=1e-5)
    assert all(a > b for a, b in segment)
    assert [float(a) for a, _ in pairs[low + 9 :]] == main[low:-1].tolist()
    # the model sees σ jump back up exactly once, at the restart
    first_calls = run(sigmas)[1].sigmas[::2][: low + 1]
    assert first_calls[low] == pytest.approx(float(main[high]), rel=1e-5) and first_calls[low] > first_calls[low - 1]


def test_noise_is_drawn_once_per_restart_and_is_deterministic():
    sigmas = sigmas_for("karras", 36, MODEL)  # two restarts
    draws = []

    def noise(*args):
        draws.append(args)
        return torch.zeros(SHAPE)

    with torch.no_grad():
        restart(Counted(), torch.ones(SHAPE), sigmas, callback=lambda *a: None, noise=noise, options=SamplerOptions())
    assert len(draws) == 2
    a, b, c = run(sigmas, seed=5)[0], run(sigmas, seed=5)[0], run(sigmas, seed=6)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all()
