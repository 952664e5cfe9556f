"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) as A1111's "DPM fast" and "DPM adaptive" run it (k-diffusion).

The solver works in the noise-prediction form with time ``t = −log σ``: ``eps = (x − denoised) / σ``. Its 1st, 2nd
and 3rd order single steps from ``t`` to ``t_next`` (``h = t_next − t``, ``σ(t) = e^−t``) are

- order 1: ``x − σ(t_next)·(eʰ − 1)·ε(x, t)``
- order 2: an intermediate point at ``s₁ = t + r₁h`` (first-order there), then the difference ``ε(u₁, s₁) − ε``
  corrects the first-order step;
- order 3: two intermediate points at ``t + h/3`` and ``t + 2h/3``.

"DPM fast" spends ``n`` model calls on a fixed grid, evenly spaced in ``t`` (as many order-3 steps as fit);
"DPM adaptive" pairs an order-2 and an order-3 step, takes their difference as the error and lets a PID controller
choose the step size. A1111 runs both with eta = 1 (ancestral noise after each step) from σ_max to σ_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from modules.engine.ksampling.common import Model, NoiseFn, SamplerOptions, StepCallback, batch_sigma


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


class _Eps:
    """The model as a noise predictor in t: ``ε(x, t) = (x − denoised) / σ(t)``."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, denoised) at ``x`` and time ``t``."""
        sigma = _sigma(t)
        denoised = self.model(x, batch_sigma(sigma, x))
        return (x - denoised) / sigma, denoised


def _order1(x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """First-order step (DDIM in t) from ε at the start."""
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def _midpoint(x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, r: float, eps: torch.Tensor) -> torch.Tensor:
    """First-order estimate of x at ``t + r·h``."""
    return x - _sigma(t + r * h) * (r * h).expm1() * eps


def _order2(
    f: _Eps, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, eps: torch.Tensor, r1: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-order step with its intermediate point at ``t + r1·h``; returns (x_next, ε at that point)."""
    h = t_next - t
    eps_1, _ = f(_midpoint(x, t, h, r1, eps), t + r1 * h)
    sigma_next, phi = _sigma(t_next), h.expm1()
    return x - sigma_next * phi * eps - sigma_next / (2 * r1) * phi * (eps_1 - eps), eps_1


def _order3(
    f: _Eps,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    eps: torch.Tensor,
    eps_1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Third-order step with intermediate points at ``t + h/3`` and ``t + 2h/3`` (``eps_1``: ε at the first)."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    if eps_1 is None:
        eps_1, _ = f(_midpoint(x, t, h, r1, eps), t + r1 * h)
    s2 = t + r2 * h
    phi_2 = (r2 * h).expm1()
    u2 = x - _sigma(s2) * phi_2 * eps - _sigma(s2) * (r2 / r1) * (phi_2 / (r2 * h) - 1) * (eps_1 - eps)
    eps_2, _ = f(u2, s2)
    sigma_next, phi = _sigma(t_next), h.expm1()
    return x - sigma_next * phi * eps - sigma_next / r2 * (phi / h - 1) * (eps_2 - eps)


def _ancestral(
    t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Where the deterministic step ends (in t, never past ``t_end``) and the noise σ to add after it."""
    if not eta:
        return t_next, 0.0
    s_from, s_to = _sigma(t), _sigma(t_next)
    up = torch.minimum(s_to, eta * (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
    down = (s_to**2 - up**2) ** 0.5
    t_down = torch.minimum(t_end, _t(down))
    return t_down, (s_to**2 - _sigma(t_down) ** 2) ** 0.5


def _range(x: torch.Tensor, sigmas: torch.Tensor, options: SamplerOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_start, t_end): A1111's σ range (the options', else the schedule's first and second-to-last σ)."""
    sigma_max = options.sigma_max if options.sigma_max is not None else float(sigmas[0])
    sigma_min = options.sigma_min if options.sigma_min is not None else float(sigmas[-2])
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("DPM-Solver needs σ_min and σ_max above 0")
    return _t(torch.tensor(sigma_max)).to(x.device), _t(torch.tensor(sigma_min)).to(x.device)


def dpm_fast(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver-fast: ``n`` model calls on a grid evenly spaced in t, mostly third-order steps.

    With ``m = ⌊n/3⌋ + 1`` intervals the orders are 3, …, 3, then ``n mod 3`` (or 2, 1 when 3 divides ``n``).
    """
    f = _Eps(model)
    nfe = options.n if options.n is not None else len(sigmas) - 1
    t_start, t_end = _range(x, sigmas, options)
    m = nfe // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_to, noise_sigma = _ancestral(t, t_next, t_end, options.eta)
        eps, denoised = f(x, t)
        callback(i, x, denoised)
        if order == 1:
            x = _order1(x, t, t_to, eps)
        elif order == 2:
            x, _ = _order2(f, x, t, t_to, eps)
        else:
            x = _order3(f, x, t, t_to, eps)
        x = x + noise_sigma * options.s_noise * noise(_sigma(t), _sigma(t_next))
    return x


@dataclass
class PIDStepSize:
    """PID step-size control for the adaptive solver (Söderlind): scale h by a limited product of inverse errors.

    Attributes:
        h: Current step size (in t).
        order: Order of the error estimate (1.5 with noise, as k-diffusion).
        accept_safety: A step whose factor falls below this is rejected (and retried with the smaller h).
    """

    h: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    order: float = 3.0
    accept_safety: float = 0.81
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    def propose(self, error: float) -> bool:
        """Update h from this step's error; whether the step is accepted."""
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** b1 * self.errs[1] ** b2 * self.errs[2] ** b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@dataclass(frozen=True)
class AdaptiveOptions:
    """A1111's (k-diffusion's defaults) for DPM adaptive: order 3, rtol 0.05, atol 0.0078, first h 0.05, I control."""

    order: int = 3
    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81


def dpm_adaptive(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
    adaptive: AdaptiveOptions | None = None,
) -> torch.Tensor:
    """DPM-Solver-23 with adaptive steps: accept a step when the order-2/order-3 difference is small enough.

    The error is the RMS over the whole batch of ``(x_low − x_high) / max(atol, rtol·max(|x_low|, |x_prev|))``.
    A rejected step is retried from the same point with a smaller h (the model is called again there). The
    callback runs after each attempt with the step counter, the current x and the denoised prediction at its start.
    """
    a = adaptive or AdaptiveOptions()
    if a.order not in (2, 3):
        raise ValueError("DPM adaptive: order must be 2 or 3")
    f = _Eps(model)
    t_start, t_end = _range(x, sigmas, options)
    atol, rtol = torch.tensor(a.atol, device=x.device), torch.tensor(a.rtol, device=x.device)
    pid = PIDStepSize(a.h_init, a.pcoeff, a.icoeff, a.dcoeff, 1.5 if options.eta else a.order, a.accept_safety)
    s, x_prev, attempts = t_start, x, 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + pid.h)
        t_to, noise_sigma = _ancestral(s, t, t_end, options.eta)
        eps, denoised = f(x, s)
        if a.order == 2:
            x_low = _order1(x, s, t_to, eps)
            x_high, _ = _order2(f, x, s, t_to, eps)
        else:
            x_low, eps_1 = _order2(f, x, s, t_to, eps, r1=1 / 3)
            x_high = _order3(f, x, s, t_to, eps, eps_1)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high + noise_sigma * options.s_noise * noise(_sigma(s), _sigma(t))
            s = t
        attempts += 1
        callback(attempts - 1, x, denoised)
    return x
