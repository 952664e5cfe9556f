"""A1111's "Restart" sampler (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

Heun steps down the schedule; once σ reaches the restart point (≈ 0.1), noise takes x back up to a higher σ (≈ 2)
and the interval is sampled again on its own Karras grid, ``K`` times. A1111's automatic plan (modules/
sd_samplers_extra.py): with ``steps >= 20`` the main schedule is rebuilt as a Karras schedule of ``steps − N·K``
steps over the given one's σ range, and one restart segment of ``N`` steps (``N = 9, K = 1``; from 36 steps,
``N = steps // 4, K = 2``) follows the step that lands nearest σ = 0.1; below 20 steps it is plain Heun. The
total number of steps stays ``steps``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from modules.engine.ksampling.common import Model, NoiseFn, SamplerOptions, StepCallback, batch_sigma, to_d
from modules.engine.ksampling.schedules import karras


@dataclass(frozen=True)
class Restart:
    """One restart: after σ ≈ ``at``, go back up to σ ≈ ``to`` and redo it in ``points − 1`` steps, ``times`` times."""

    at: float
    points: int
    times: int
    to: float


def default_plan(sigmas: torch.Tensor) -> tuple[torch.Tensor, list[Restart]]:
    """A1111's automatic restart plan for a schedule: the (possibly rebuilt) main sigmas and the restarts."""
    steps = len(sigmas) - 1
    if steps < 20:
        return sigmas, []
    restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = karras(steps - restart_steps * times, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
    return main, [Restart(0.1, restart_steps + 1, times, 2.0)]


def _nearest(sigmas: torch.Tensor, value: float) -> int:
    return int(torch.argmin((sigmas - value).abs(), dim=0))


def step_list(sigmas: torch.Tensor, restarts: list[Restart]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (σ_from, σ_to) Heun step in order: the main schedule with each restart's segments after its point."""
    at = {_nearest(sigmas, r.at): r for r in restarts}
    steps = []
    for i in range(len(sigmas) - 1):
        steps.append((sigmas[i], sigmas[i + 1]))
        restart = at.get(i + 1)
        if restart is None:
            continue
        low, high = i + 1, _nearest(sigmas, restart.to)
        if high >= low:
            continue
        grid = karras(restart.points, float(sigmas[low]), float(sigmas[high]))[:-1].to(sigmas.device)
        for _ in range(restart.times):
            steps.extend(itertools.pairwise(grid))
    return steps


def restart(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Restart sampling with A1111's automatic plan: Heun steps (Euler into σ = 0), re-noising before each restart."""
    main, restarts = default_plan(sigmas)
    last: torch.Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(step_list(main, restarts)):
        if last is not None and last < sigma:
            x = x + noise(last, sigma) * options.s_noise * (sigma**2 - last**2) ** 0.5
        denoised = model(x, batch_sigma(sigma, x))
        d = to_d(x, sigma, denoised)
        callback(i, x, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, batch_sigma(sigma_next, x)))
            x = x + (d + d_2) / 2 * dt
        last = sigma_next
    return x
