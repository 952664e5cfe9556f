"""Sampler steps by A1111 name, written from k-diffusion's published update rules (what A1111 runs).

Every sampler has the signature ``fn(model, x, sigmas, *, callback, noise, options) -> x``:

- ``model(x, sigma_batch) -> denoised`` (the CFG denoiser);
- ``callback(i, x, denoised)`` after each step; it raises ``SamplingInterrupted`` to stop;
- ``noise()`` draws per-image noise for ancestral/SDE steps (A1111's ImageRNG);
- ``options`` holds eta, s_churn, s_tmin, s_tmax, s_noise as A1111 passes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
NoiseFn = Callable[[], torch.Tensor]


class SamplingInterrupted(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a step callback to stop sampling; ``latents`` holds the current x."""

    def __init__(self, latents: torch.Tensor) -> None:
        super().__init__("sampling interrupted")
        self.latents = latents


@dataclass(frozen=True)
class SamplerOptions:
    """Stochasticity knobs (A1111's ``eta``, ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``)."""

    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dσ."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step: go deterministically to σ_down, then add σ_up of fresh noise."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def _batch(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma * x.new_ones([x.shape[0]])


def euler(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Euler (Karras et al. Algorithm 2, with optional churn)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        churn = options.s_tmin <= float(sigma) <= options.s_tmax
        gamma = min(options.s_churn / n, 2**0.5 - 1) if churn else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + noise() * options.s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, _batch(sigma_hat, x))
        d = _to_d(x, sigma_hat, denoised)
        callback(i, x, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Euler ancestral: an Euler step to σ_down, then σ_up of new noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(sigmas[i], x))
        down, up = ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), options.eta)
        callback(i, x, denoised)
        x = x + _to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise() * options.s_noise * up
    return x


def heun(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Heun's method (Karras et al. Algorithm 2): Euler, then a trapezoidal correction unless the next σ is 0."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        churn = options.s_tmin <= float(sigma) <= options.s_tmax
        gamma = min(options.s_churn / n, 2**0.5 - 1) if churn else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + noise() * options.s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, _batch(sigma_hat, x))
        d = _to_d(x, sigma_hat, denoised)
        callback(i, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, _batch(sigmas[i + 1], x))
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def dpmpp_2m(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in log-σ time, first order on the first and last step."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(sigmas[i], x))
        callback(i, x, denoised)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * corrected
        old_denoised = denoised
    return x


SamplerFn = Callable[..., torch.Tensor]

SAMPLERS: dict[str, SamplerFn] = {
    "Euler": euler,
    "Euler a": euler_ancestral,
    "Heun": heun,
    "DPM++ 2M": dpmpp_2m,
}
