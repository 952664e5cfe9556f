"""Sigma schedules by A1111 schedule type (modules/sd_schedulers.py), written from the published formulas.

Every schedule is ``fn(n, model, params) -> sigmas`` (fp32, usually ``n`` sigmas then 0): ``model`` is the checkpoint's
discrete σ table (A1111's ``inner_model``; σ_min / σ_max are its ends) and ``params`` what some schedules need beyond
it (the model family for Align Your Steps, the Beta distribution's shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from modules.engine.sampling import DiscreteModel

# Align Your Steps (Sabour et al. 2024; NVIDIA's published 10-step σ lists, as A1111 ships them).
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass(frozen=True)
class ScheduleParams:
    """What a schedule may need besides the model's σ table.

    Attributes:
        sdxl: The model is SDXL (A1111's ``sd_model.is_sdxl``): Align Your Steps uses its SDXL list.
        beta_alpha: Beta schedule's α (A1111 option ``beta_dist_alpha``).
        beta_beta: Beta schedule's β (A1111 option ``beta_dist_beta``).
        sigma_min: Overrides the model's σ_min where a schedule uses the range (A1111 option ``sigma_min``).
        sigma_max: Overrides the model's σ_max likewise (``sigma_max``).
        rho: Overrides the Karras / polyexponential ρ (``rho``).
    """

    sdxl: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None

    def low(self, model: DiscreteModel) -> float:
        """σ_min the range-based schedules use."""
        return self.sigma_min if self.sigma_min is not None else model.sigma_min

    def high(self, model: DiscreteModel) -> float:
        """σ_max the range-based schedules use."""
        return self.sigma_max if self.sigma_max is not None else model.sigma_max


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


def normal(
    n: int, model: DiscreteModel, *, sgm: bool = False, sigma_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """A1111's "Normal": timesteps evenly spaced from σ_max's to σ_min's (both ends), mapped to σ, then 0.

    With ``sgm`` ("SGM Uniform"), ``n + 1`` timesteps are spaced over that range and the last is dropped.
    ``sigma_range`` (σ_min, σ_max) replaces the model's own range.
    """
    low, high = sigma_range or (model.sigma_min, model.sigma_max)
    start = float(model.sigma_to_t(torch.tensor(high)))
    end = float(model.sigma_to_t(torch.tensor(low)))
    ts = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return _append_zero(model.t_to_sigma(ts))


def sgm_uniform(n: int, model: DiscreteModel, sigma_range: tuple[float, float] | None = None) -> torch.Tensor:
    """A1111's "SGM Uniform": ``normal`` with its ``sgm`` flag."""
    return normal(n, model, sgm=True, sigma_range=sigma_range)


def simple(n: int, model: DiscreteModel) -> torch.Tensor:
    """A1111's "Simple": every ``len/n``-th entry of the model's σ table, from the top (index truncated), then 0."""
    stride = len(model.sigmas) / n
    picks = [len(model.sigmas) - 1 - int(k * stride) for k in range(n)]
    return _append_zero(model.sigmas[picks].float())


def ddim(n: int, model: DiscreteModel) -> torch.Tensor:
    """A1111's "DDIM": table entries 1, 1 + s, 1 + 2s, … (``s = len // n``), highest first, then 0.

    As in A1111, this can give more than ``n`` sigmas when ``len`` is not a multiple of ``n``.
    """
    stride = max(len(model.sigmas) // n, 1)
    picks = list(range(1, len(model.sigmas), stride))[::-1]
    return _append_zero(model.sigmas[picks].float())


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL-optimal (Sabour et al. 2024): ``tan`` of ``n + 1`` points evenly spaced from atan σ_max to atan σ_min.

    As in A1111, no 0 is appended: the last σ is σ_min.
    """
    lo, hi = torch.tensor(sigma_min).arctan(), torch.tensor(sigma_max).arctan()
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * lo + (1.0 - frac) * hi)


def loglinear_interp(sigmas: tuple[float, ...], n: int) -> np.ndarray:
    """Resample a decreasing σ list to ``n`` values, linearly in log σ over an evenly spaced [0, 1] grid."""
    ascending = np.log(np.asarray(sigmas[::-1], dtype=np.float64))
    grid = np.linspace(0, 1, len(sigmas))
    return np.exp(np.interp(np.linspace(0, 1, n), grid, ascending))[::-1].copy()


def align_your_steps(n: int, sdxl: bool = False) -> torch.Tensor:
    """Align Your Steps: NVIDIA's 11-value list (SD1 or SDXL), log-linearly resampled to ``n`` values, then 0."""
    table = AYS_SDXL if sdxl else AYS_SD1
    values = np.asarray(table, dtype=np.float64) if n == len(table) else loglinear_interp(table, n)
    return torch.tensor(np.append(values, 0.0), dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Beta schedule (Lee et al. 2024): σ_min + (σ_max − σ_min)·F⁻¹(1 − k/(n−1)) for a Beta(α, β) CDF F, then 0."""
    from scipy import stats

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta_)
    return torch.tensor(np.append(sigma_min + quantiles * (sigma_max - sigma_min), 0.0), dtype=torch.float32)


ScheduleFn = Callable[[int, DiscreteModel, ScheduleParams], torch.Tensor]

SCHEDULES: dict[str, ScheduleFn] = {
    "automatic": lambda n, m, p: m.uniform(n),
    "uniform": lambda n, m, p: m.uniform(n),
    "karras": lambda n, m, p: karras(n, p.low(m), p.high(m), p.rho or 7.0),
    "exponential": lambda n, m, p: exponential(n, p.low(m), p.high(m)),
    "polyexponential": lambda n, m, p: polyexponential(n, p.low(m), p.high(m), p.rho or 1.0),
    "sgm_uniform": lambda n, m, p: sgm_uniform(n, m, (p.low(m), p.high(m))),
    "kl_optimal": lambda n, m, p: kl_optimal(n, p.low(m), p.high(m)),
    "align_your_steps": lambda n, m, p: align_your_steps(n, p.sdxl),
    "simple": lambda n, m, p: simple(n, m),
    "normal": lambda n, m, p: normal(n, m, sigma_range=(p.low(m), p.high(m))),
    "ddim": lambda n, m, p: ddim(n, m),
    "beta": lambda n, m, p: beta(n, p.low(m), p.high(m), p.beta_alpha, p.beta_beta),
}


def sigmas_for(
    schedule: str,
    steps: int,
    model: DiscreteModel,
    *,
    discard_next_to_last: bool = False,
    params: ScheduleParams | None = None,
) -> torch.Tensor:
    """The sampler's sigmas for ``steps`` (A1111: with "discard next to last sigma", build steps+1 and drop it)."""
    fn = SCHEDULES[schedule]
    params = params or ScheduleParams()
    if not discard_next_to_last:
        return fn(steps, model, params)
    sigmas = fn(steps + 1, model, params)
    return torch.cat([sigmas[:-2], sigmas[-1:]])
