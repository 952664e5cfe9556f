"""Sampler steps by A1111 name, written from k-diffusion's published update rules (what A1111 runs).

The signature every sampler shares, and its option and stop types, are in ``modules.engine.ksampling.common``;
DPM fast / DPM adaptive are in ``dpm_solver`` and Restart in ``restart``. ``SAMPLERS`` at the bottom lists them all.
"""

from __future__ import annotations

import torch

from modules.engine.ksampling.common import (
    Model,
    NoiseFn,
    SamplerFn,
    SamplerOptions,
    SamplingInterrupted,
    StepCallback,
    ancestral_step,
    batch_sigma,
    churn,
    to_d,
)
from modules.engine.ksampling.dpm_solver import dpm_adaptive, dpm_fast
from modules.engine.ksampling.restart import restart

__all__ = ["SAMPLERS", "SamplerOptions", "SamplingInterrupted", "ancestral_step"]


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
        x, sigma_hat = churn(x, sigma, n, options, noise)
        denoised = model(x, batch_sigma(sigma_hat, x))
        d = to_d(x, sigma_hat, denoised)
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
        denoised = model(x, batch_sigma(sigmas[i], x))
        down, up = ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), options.eta)
        callback(i, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * up
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
        x, sigma_hat = churn(x, sigma, n, options, noise)
        denoised = model(x, batch_sigma(sigma_hat, x))
        d = to_d(x, sigma_hat, denoised)
        callback(i, x, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, batch_sigma(sigmas[i + 1], x))
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
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
        denoised = model(x, batch_sigma(sigmas[i], x))
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


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial j through t_i … t_{i-order+1}."""
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Linear multistep (order 4) over the σ grid."""
    order = 4
    grid = sigmas.detach().cpu().double().tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        callback(i, x, denoised)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, grid, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds), strict=False))
    return x


def dpm_2(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver-2 (Karras et al.'s second-order sampler with a midpoint in log σ)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        x, sigma_hat = churn(x, sigma, n, options, noise)
        denoised = model(x, batch_sigma(sigma_hat, x))
        d = to_d(x, sigma_hat, denoised)
        callback(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, batch_sigma(sigma_mid, x)))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def dpm_2_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM2 ancestral: a DPM2 step to σ_down, then σ_up of fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        down, up = ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), options.eta)
        callback(i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            sigma_down = sigmas.new_tensor(down)
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, batch_sigma(sigma_mid, x)))
            x = x + d_2 * (sigma_down - sigmas[i])
        x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * up
    return x


def dpmpp_2s_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral: a single-step second-order update to σ_down, then σ_up of noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        down, up = ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), options.eta)
        callback(i, x, denoised)
        if down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = -sigmas[i].log(), -sigmas.new_tensor(down).log()
            h = t_next - t
            s = t + h / 2
            x_2 = ((-s).exp() / (-t).exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, batch_sigma((-s).exp(), x))
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * options.s_noise * up
    return x


def dpmpp_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, r = 1/2): two model calls per step, Brownian noise at both stages."""
    r, fac = 0.5, 1.0

    def sigma_fn(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        callback(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        s = t + h * r
        down, up = ancestral_step(float(sigma_fn(t)), float(sigma_fn(s)), options.eta)
        s_ = -sigmas.new_tensor(down).log()
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(sigma_fn(t), sigma_fn(s)) * options.s_noise * up
        denoised_2 = model(x_2, batch_sigma(sigma_fn(s), x))
        down, up = ancestral_step(float(sigma_fn(t)), float(sigma_fn(t_next)), options.eta)
        t_next_ = -sigmas.new_tensor(down).log()
        mixed = (1 - fac / (2 * r)) * denoised + fac / (2 * r) * denoised_2
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * mixed
        x = x + noise(sigma_fn(t), sigma_fn(t_next)) * options.s_noise * up
    return x


def _dpmpp_2m_sde(heun: bool) -> SamplerFn:
    def sample(
        model: Model,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        callback: StepCallback,
        noise: NoiseFn,
        options: SamplerOptions,
    ) -> torch.Tensor:
        """DPM-Solver++(2M) SDE (midpoint or Heun correction), Brownian noise."""
        old_denoised, h_last = None, None
        for i in range(len(sigmas) - 1):
            denoised = model(x, batch_sigma(sigmas[i], x))
            callback(i, x, denoised)
            h = None
            if sigmas[i + 1] == 0:
                x = denoised
            else:
                t, s = -sigmas[i].log(), -sigmas[i + 1].log()
                h = s - t
                eta_h = options.eta * h
                x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
                if old_denoised is not None and h_last is not None:
                    r = h_last / h
                    phi = (-h - eta_h).expm1().neg()
                    factor = phi / (-h - eta_h) + 1 if heun else 0.5 * phi
                    x = x + factor * (1 / r) * (denoised - old_denoised)
                if options.eta:
                    scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * options.s_noise
                    x = x + noise(sigmas[i], sigmas[i + 1]) * scale
            old_denoised, h_last = denoised, h
        return x

    return sample


def dpmpp_3m_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with Brownian noise."""
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        callback(i, x, denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (options.eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None and denoised_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if options.eta:
                scale = sigmas[i + 1] * (-2 * h * options.eta).expm1().neg().sqrt() * options.s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def lcm(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: StepCallback,
    noise: NoiseFn,
    options: SamplerOptions,
) -> torch.Tensor:
    """Latent Consistency Model sampling (A1111's ``sample_lcm``): jump to the denoised latent, re-noise to σ_next."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(sigmas[i], x))
        callback(i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


SAMPLERS: dict[str, SamplerFn] = {
    "DPM++ 2M": dpmpp_2m,
    "DPM++ SDE": dpmpp_sde,
    "DPM++ 2M SDE": _dpmpp_2m_sde(heun=False),
    "DPM++ 2M SDE Heun": _dpmpp_2m_sde(heun=True),
    "DPM++ 2S a": dpmpp_2s_ancestral,
    "DPM++ 3M SDE": dpmpp_3m_sde,
    "Euler a": euler_ancestral,
    "Euler": euler,
    "LMS": lms,
    "Heun": heun,
    "DPM2": dpm_2,
    "DPM2 a": dpm_2_ancestral,
    "DPM fast": dpm_fast,
    "DPM adaptive": dpm_adaptive,
    "Restart": restart,
    "LCM": lcm,
}
