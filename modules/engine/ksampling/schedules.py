"""Sigma schedules by A1111 schedule type (modules/sd_schedulers.py), written from k-diffusion's formulas."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modules.engine.sampling import DiscreteModel


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): ``n`` sigmas evenly spaced in ``σ^(1/ρ)``, then 0."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """``n`` sigmas evenly spaced in log σ, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log σ: ``ramp^ρ`` from σ_max to σ_min, then 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform(n: int, model: DiscreteModel) -> torch.Tensor:
    """A1111's "SGM Uniform": ``n`` timesteps evenly spaced from σ_max's to σ_min's, excluding the last, then 0."""
    start, end = model.sigma_to_t(torch.tensor(model.sigma_max)), model.sigma_to_t(torch.tensor(model.sigma_min))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    return _append_zero(model.t_to_sigma(ts))


ScheduleFn = Callable[[int, DiscreteModel], torch.Tensor]

SCHEDULES: dict[str, ScheduleFn] = {
    "automatic": lambda n, m: m.uniform(n),
    "uniform": lambda n, m: m.uniform(n),
    "karras": lambda n, m: karras(n, m.sigma_min, m.sigma_max),
    "exponential": lambda n, m: exponential(n, m.sigma_min, m.sigma_max),
    "polyexponential": lambda n, m: polyexponential(n, m.sigma_min, m.sigma_max),
    "sgm_uniform": sgm_uniform,
}


def sigmas_for(schedule: str, steps: int, model: DiscreteModel, *, discard_next_to_last: bool = False) -> torch.Tensor:
    """The sampler's sigmas for ``steps`` (A1111: with "discard next to last sigma", build steps+1 and drop it)."""
    fn = SCHEDULES[schedule]
    if not discard_next_to_last:
        return fn(steps, model)
    sigmas = fn(steps + 1, model)
    return torch.cat([sigmas[:-2], sigmas[-1:]])
