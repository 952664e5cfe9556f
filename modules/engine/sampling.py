"""The own sampling loop: A1111's k-diffusion route (sigmas, noise, denoiser) instead of a diffusers pipeline call.

What A1111 does (modules/sd_samplers_kdiffusion.py) and this module reproduces:

- The model's discrete noise levels come from its training betas (``σᵢ = √((1−ᾱᵢ)/ᾱᵢ)``); timesteps for the UNet are
  found from σ by log-σ interpolation (k-diffusion's ``DiscreteSchedule.sigma_to_t``, no quantization).
- txt2img starts from ``noise · σ₀``; img2img takes ``t_enc = int(min(d, 0.999)·steps)`` and samples the last
  ``t_enc + 1`` sigmas of the full schedule from ``init + noise · σ_start``.
- Ancestral/SDE samplers draw their extra noise from the per-image generators (A1111's ImageRNG), re-seeded with
  ``seed + ENSD`` after the first draw when ENSD is set.

The sampler functions themselves live in ``modules.engine.ksampling``; this module wires them to a LoadedModel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modules.engine.rng import Generator, draw

STEP_CALLBACK = Callable[[int], None]


@dataclass(frozen=True)
class DiscreteModel:
    """A discrete-time diffusion model's noise levels (ascending, one per training timestep)."""

    sigmas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    @classmethod
    def from_config(cls, config: Any) -> DiscreteModel:
        """Build from a diffusers scheduler config (``scaled_linear`` or ``linear`` betas, or ``trained_betas``)."""
        n = int(config.get("num_train_timesteps", 1000))
        if config.get("trained_betas") is not None:
            betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
        elif config.get("beta_schedule", "scaled_linear") == "scaled_linear":
            start, end = math.sqrt(config.get("beta_start", 0.00085)), math.sqrt(config.get("beta_end", 0.012))
            betas = torch.linspace(start, end, n, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(
                config.get("beta_start", 0.00085), config.get("beta_end", 0.012), n, dtype=torch.float64
            )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls((((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float(), alphas_cumprod.float())

    def on(self, device: torch.device | str) -> DiscreteModel:
        """The same table on ``device`` (σ → t then runs there without a host copy per call)."""
        return DiscreteModel(self.sigmas.to(device), self.alphas_cumprod)

    def lcm(self, original_steps: int = 50) -> DiscreteModel:
        """A1111's LCM table: the ``original_steps`` timesteps ``k·s + s − 1`` (``s = len // original_steps``)."""
        skip = len(self.sigmas) // original_steps
        picked = slice(skip - 1, None, skip)
        return DiscreteModel(self.sigmas[picked].contiguous(), self.alphas_cumprod[picked].contiguous())

    @property
    def sigma_min(self) -> float:
        """Smallest noise level."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Largest noise level."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for each σ (linear interpolation of log σ between neighbouring timesteps)."""
        log_sigmas = self.sigmas.log().to(sigma.device)
        log_sigma = sigma.float().log()
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high = low + 1
        w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ for continuous timesteps (log-linear interpolation)."""
        log_sigmas = self.sigmas.log().to(t.device)
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def uniform(self, steps: int) -> torch.Tensor:
        """A1111's default schedule: ``steps`` timesteps evenly spaced from the last to 0, then a final 0 σ."""
        t = torch.linspace(len(self.sigmas) - 1, 0, steps)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])


def img2img_sigmas(sigmas: torch.Tensor, steps: int, denoising_strength: float) -> torch.Tensor:
    """The tail of a ``steps``-step schedule that img2img samples (A1111: ``t_enc + 1`` sigmas from the end)."""
    t_enc = int(min(denoising_strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1 :]


class ImageNoise:
    """A1111's ImageRNG after the first draw: per-image generators, each draws one image's noise per call.

    ``next()`` is what ancestral/SDE samplers call instead of ``torch.randn_like``; image i's draws depend on
    its own seed only, so a batch equals single jobs.
    """

    def __init__(self, generators: list[Generator], shape: tuple[int, ...], device: torch.device) -> None:
        self.generators = generators
        self.shape = shape
        self.device = device

    def next(self) -> torch.Tensor:
        """Draw one noise tensor per image and stack them on the model's device."""
        draws = [draw(g, self.shape) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def sampler(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """k-diffusion's ``noise_sampler(sigma, sigma_next)`` signature over ``next``."""
        return lambda sigma, sigma_next: self.next()


class BrownianNoise:
    """A1111's noise for the SDE samplers: one torchsde Brownian tree per image, seeded with that image's seed.

    The trees span [σ_min, σ_max] of the schedule and live on the latents' device; ``(σ, σ_next)`` returns the
    tree's increment over that interval scaled to unit variance, so image i's noise depends on its seed only.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> None:
        import torchsde

        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        self.sign = 1 if lo < hi else -1
        t0, t1 = (lo, hi) if lo < hi else (hi, lo)
        w0 = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """Unit-variance noise for the step from ``sigma`` to ``sigma_next``."""
        t0, t1, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w / (sigma_next - sigma).abs().sqrt()
