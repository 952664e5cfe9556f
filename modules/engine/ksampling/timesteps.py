"""A1111's timestep samplers DDIM, DDIM CFG++ and PLMS (UniPC is in ``unipc``), written from their update rules.

They work in the variance-preserving space: ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε``, with an ε model called as
``model(x_t, t)`` (``t`` a float tensor, one per image). As in A1111 (``sd_samplers_timesteps``):

- the timesteps are ``range(0, 1000, 1000 // steps) + 1`` (1, 51, …, 951 for 20 steps), clipped to 999;
- the loop runs ``len(timesteps) − 1`` updates, from the last timestep down to the first, so the result is ``x`` at
  ``t = timesteps[0]`` (t = 1), not x0; step i goes from ``timesteps[k]`` to ``timesteps[k−1]``;
- txt2img starts from unit noise; img2img keeps ``timesteps[:t_enc]`` and starts from
  ``√ᾱ·init + √(1−ᾱ)·noise`` at ``timesteps[t_enc]`` (one step above the first update, as A1111 does).

Every sampler calls ``callback(i, x, pred_x0)`` after update i; the callback may raise to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from modules.engine.ksampling.common import StepCallback

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
UnitNoise = Callable[[], torch.Tensor]


class GuidedEpsModel(Protocol):
    """An ε model that also keeps its last unconditional prediction (what DDIM CFG++ steers by)."""

    last_uncond: torch.Tensor | None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided ε for ``x`` at timesteps ``t``."""


def a1111_timesteps(steps: int, *, discard_next_to_last: bool = False, train_steps: int = 1000) -> torch.Tensor:
    """A1111's timesteps for ``steps`` (one more with "discard next to last sigma"), ascending, int64 on the CPU."""
    steps += 1 if discard_next_to_last else 0
    return (torch.arange(0, train_steps, train_steps // steps) + 1).clip(0, train_steps - 1)


def img2img_start(
    init: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, t_enc: int, alphas_cumprod: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x to start from, timesteps to run) for img2img: ``init`` noised to ``timesteps[t_enc]``."""
    a = float(alphas_cumprod[int(timesteps[t_enc])])
    return init * math.sqrt(a) + noise * math.sqrt(1 - a), timesteps[:t_enc]


def _coefficients(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[list[float], list[float]]:
    """ᾱ at each timestep and at the one before it (ᾱ₀ before the first), as Python floats of the fp32 table."""
    table = alphas_cumprod.double().cpu()
    ts = [int(t) for t in timesteps]
    return [float(table[t]) for t in ts], [float(table[t]) for t in [0, *ts[:-1]]]


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _ddim(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    callback: StepCallback,
    noise: UnitNoise,
    eta: float,
    uncond_direction: bool,
) -> torch.Tensor:
    alphas, alphas_prev = _coefficients(timesteps, alphas_cumprod)
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        a_t, a_prev = alphas[k], alphas_prev[k]
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        e_t = model(x, _batch_t(int(timesteps[k]), x))
        direction = e_t
        if uncond_direction:
            direction = getattr(model, "last_uncond", None)
            if direction is None:
                raise RuntimeError("DDIM CFG++ needs a model that keeps its unconditional prediction")
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma**2) * direction
        if sigma:
            x = x + sigma * noise()
        callback(i, x, pred_x0)
    return x


def ddim(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    callback: StepCallback,
    noise: UnitNoise,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) with η: ``x' = √ᾱ'·x̂0 + √(1−ᾱ'−σ²)·ε + σ·z``."""
    kwargs = {"alphas_cumprod": alphas_cumprod, "callback": callback, "noise": noise, "eta": eta}
    return _ddim(model, x, timesteps, **kwargs, uncond_direction=False)


def ddim_cfgpp(
    model: GuidedEpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    callback: StepCallback,
    noise: UnitNoise,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM CFG++ (Chung et al. 2024): x̂0 from the guided ε, the direction from the unconditional ε.

    The caller divides the CFG scale by 12.5 (A1111 maps scales 0–12.5 onto CFG++'s λ 0–1).
    """
    kwargs = {"alphas_cumprod": alphas_cumprod, "callback": callback, "noise": noise, "eta": eta}
    return _ddim(model, x, timesteps, **kwargs, uncond_direction=True)


def plms(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    callback: StepCallback,
) -> torch.Tensor:
    """PLMS (Liu et al. 2022): Adams–Bashforth over past ε (orders 2–4), a pseudo improved Euler first step."""
    alphas, alphas_prev = _coefficients(timesteps, alphas_cumprod)

    def step(x: torch.Tensor, e: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        pred_x0 = (x - math.sqrt(1 - alphas[k]) * e) / math.sqrt(alphas[k])
        return math.sqrt(alphas_prev[k]) * pred_x0 + math.sqrt(1 - alphas_prev[k]) * e, pred_x0

    old: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        k = len(timesteps) - 1 - i
        e_t = model(x, _batch_t(int(timesteps[k]), x))
        if not old:
            x_next, _ = step(x, e_t, k)
            e_prime = (e_t + model(x_next, _batch_t(int(timesteps[max(k - 1, 0)]), x))) / 2
        elif len(old) == 1:
            e_prime = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x, pred_x0 = step(x, e_prime, k)
        old = [*old, e_t][-3:]
        callback(i, x, pred_x0)
    return x
