"""What every sampler step function shares: its signature's types, the stop signal, options and small helpers.

Every sampler has the signature ``fn(model, x, sigmas, *, callback, noise, options) -> x``:

- ``model(x, sigma_batch) -> denoised`` (the CFG denoiser);
- ``callback(i, x, denoised)`` after each step; it raises ``SamplingInterrupted`` to stop;
- ``noise(sigma, sigma_next)`` draws unit noise for ancestral/SDE steps (A1111's ImageRNG, or a Brownian tree);
- ``options`` holds eta, s_churn, s_tmin, s_tmax, s_noise as A1111 passes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
SamplerFn = Callable[..., torch.Tensor]
NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (sigma, sigma_next) -> unit noise like x


class SamplingInterrupted(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a step callback to stop sampling; ``latents`` holds the current x."""

    def __init__(self, latents: torch.Tensor) -> None:
        super().__init__("sampling interrupted")
        self.latents = latents


@dataclass(frozen=True)
class SamplerOptions:
    """Stochasticity knobs (A1111's ``eta``, ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).

    ``sigma_min``, ``sigma_max`` and ``n`` are what A1111 passes to the samplers that take a noise range instead of
    a schedule (DPM fast, DPM adaptive): in txt2img the model's own σ range and the step count. None (img2img,
    hires) means: the schedule's second-to-last and first σ, and its number of steps.
    """

    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    n: int | None = None


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dσ."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step: go deterministically to σ_down, then add σ_up of fresh noise."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def batch_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One σ per image of the batch ``x``."""
    return sigma * x.new_ones([x.shape[0]])


def churn(
    x: torch.Tensor, sigma: torch.Tensor, n: int, options: SamplerOptions, noise: NoiseFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al.'s churn before a step at ``sigma`` of ``n``: raise it to σ̂ = σ(1+γ) with fresh noise.

    γ = min(s_churn/n, √2−1) inside [s_tmin, s_tmax], else 0. Like k-diffusion, a churning sampler draws its noise at
    every step, also where γ is 0, so the image's noise sequence (A1111's ImageRNG) stays the same.
    """
    gamma = min(options.s_churn / n, 2**0.5 - 1) if options.s_tmin <= float(sigma) <= options.s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if options.s_churn > 0:
        eps = noise(sigma, sigma_hat) * options.s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat
