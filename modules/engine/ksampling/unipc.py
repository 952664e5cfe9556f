"""A1111's "UniPC" sampler: multistep, data prediction, as modules/sd_samplers_timesteps_impl.py runs it.

UniPC is Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models".

The solver works in continuous time ``t ∈ [1/N, 1]`` over the model's discrete VP schedule: ``log α`` is piecewise
linear in t through the points ``(t_n, ½·log ᾱ_n)``, ``t_n = (n + 1)/N``; ``σ = √(1 − α²)``, ``λ = log α − log σ``.
The model is an ε-predictor called as ``model(x, t_input)`` with ``t_input = (t − 1/N)·1000``; the solver uses its
data prediction ``m = (x − σ·ε)/α``. A step from ``s`` to ``t`` (``h = λ_t − λ_s``), with the newest prediction
``m_0`` at ``s`` and earlier ones ``m_k`` at ``λ_k``, ``r_k = (λ_k − λ_s)/h``, ``D_k = (m_k − m_0)/r_k``:

- predictor (UniP): ``x_t = σ_t/σ_s·x − α_t·(e^−h − 1)·m_0 − α_t·B(h)·Σ ρ_k·D_k``;
- corrector (UniC): the model's prediction ``m_t`` at that x_t joins as one more point (``r = 1``), and the step is
  redone from x; ``m_t`` (taken at the *predicted* x_t) is what later steps use.

``ρ`` solves ``R ρ = b``, ``R`` the powers of the r's and ``b`` the φ-functions of ``−h`` over ``B(h)`` (``−h`` for
"bh1", ``e^−h − 1`` for "bh2"); order 2 predicts with ρ = ½, order 1 corrects with ρ = ½. "vary_coeff" expands in
the φ-functions through the inverse of the matrix ``C[i][k] = r_iᵏ/(k+1)!``. Its corrector, as A1111 (and the
reference code) has it, applies ``m_t`` only through the highest φ term with the second-highest row of ``C⁻¹`` and
drops the last row's other terms, which makes it only first-order accurate from order 2 on; reproduced as is.

Steps follow A1111: the first ``order − 1`` steps warm up with orders 1, 2, …; the last steps lower their order
(``lower_order_final``); the final step has no corrector. ``steps = len(timesteps)`` model calls in all, and the
result is x at ``t = 1/N`` (no final denoising). Where this differs from A1111: ``order`` is clamped to ``steps``
(A1111 asserts ``steps >= order``); the schedule and step coefficients are computed in float64 on the CPU (A1111: in
float32 on the device, so the two agree to float32 round-off of those coefficients); "vary_coeff" works for any
batch size (A1111's fails from two images up); the final step's callback gets the newest model prediction (A1111's
gets None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modules.engine.ksampling.common import StepCallback

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t_input per image) -> ε
VARIANTS = ("bh1", "bh2", "vary_coeff")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass(frozen=True)
class UniPCOptions:
    """A1111's settings ``uni_pc_variant``, ``uni_pc_skip_type``, ``uni_pc_order``, ``uni_pc_lower_order_final``."""

    variant: str = "bh1"  # "bh1" | "bh2" | "vary_coeff"
    skip_type: str = "time_uniform"  # "time_uniform" | "time_quadratic" | "logSNR"
    order: int = 3
    lower_order_final: bool = True


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``f(x)`` through ``(xp, fp)`` (``xp`` increasing), extended linearly beyond both ends."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    return fp[i - 1] + (x - xp[i - 1]) * (fp[i] - fp[i - 1]) / (xp[i] - xp[i - 1])


@dataclass(frozen=True)
class DiscreteVP:
    """A discrete VP schedule in continuous time (float64): ``log α`` piecewise linear through ``(t, log_alpha)``."""

    t: torch.Tensor
    log_alpha: torch.Tensor

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> DiscreteVP:
        """The schedule of a model's ``alphas_cumprod`` (ᾱ_n, n = 0 … N − 1) at ``t_n = (n + 1)/N``."""
        cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        n = len(cumprod)
        return cls(torch.arange(1, n + 1, dtype=torch.float64) / n, 0.5 * cumprod.log())

    @property
    def t_min(self) -> float:
        """``1/N``: where sampling ends."""
        return 1 / len(self.t)

    def log_alpha_at(self, t: torch.Tensor) -> torch.Tensor:
        """``log α(t)``."""
        return _interp(t, self.t, self.log_alpha)

    def lambda_at(self, t: torch.Tensor) -> torch.Tensor:
        """``λ = log α − log σ``, half the log SNR."""
        log_alpha = self.log_alpha_at(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """The t where ``λ(t) = lam``: ``log α = −½·log(1 + e^−2λ)``, then t interpolated over the table."""
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2 * lam)
        return _interp(log_alpha, self.log_alpha.flip(0), self.t.flip(0))

    def time_steps(self, skip_type: str, t_start: float, steps: int) -> torch.Tensor:
        """``steps + 1`` times from ``t_start`` down to ``1/N``: uniform in t, in √t, or in λ ("logSNR")."""
        t_end = self.t_min
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
        if skip_type == "time_quadratic":
            return torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2
        lam = self.lambda_at(torch.tensor([t_start, t_end], dtype=torch.float64)).tolist()
        return self.inverse_lambda(torch.linspace(lam[0], lam[1], steps + 1, dtype=torch.float64))


@dataclass(frozen=True)
class _Weights:
    """One step's weights (each times α_t) on ``m_k − m_0``, for predictor and corrector, and on ``m_t − m_0``."""

    predictor: list[float]
    corrector: list[float]
    corrector_t: float


def _phi_terms(hh: float, count: int) -> list[float]:
    """``[hh·φ_1(hh), hh·φ_2(hh), …]``: ``g_1 = e^hh − 1``, ``g_k+1 = g_k/hh − 1/k!``."""
    terms = [math.expm1(hh)]
    for k in range(1, count):
        terms.append(terms[-1] / hh - 1 / math.factorial(k))
    return terms


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(
        torch.tensor(matrix, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    ).tolist()


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    return torch.linalg.inv(torch.tensor(matrix, dtype=torch.float64)).tolist()


def _bh_weights(variant: str, hh: float, rks: list[float]) -> _Weights:
    """UniP/UniC with ``B(h) = hh`` ("bh1") or ``e^hh − 1`` ("bh2"): ``R ρ = b``, ``b_i = g_i+1·i!/B(h)``."""
    order = len(rks) + 1
    g = _phi_terms(hh, order + 1)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    b = [g[i] * math.factorial(i) / b_h for i in range(1, order + 1)]
    r = [[rk**i for rk in [*rks, 1.0]] for i in range(order)]
    rhos_p = _solve([row[:-1] for row in r[:-1]], b[:-1]) if order > 2 else [0.5] * (order - 1)
    rhos_c = [0.5] if order == 1 else _solve(r, b)
    return _Weights(
        [b_h * rho / rk for rho, rk in zip(rhos_p, rks, strict=True)],
        [b_h * rho / rk for rho, rk in zip(rhos_c[:-1], rks, strict=True)],
        b_h * rhos_c[-1],
    )


def _vary_weights(hh: float, rks: list[float]) -> _Weights:
    """The "vary_coeff" expansion: derivative estimates through ``C⁻¹`` (A1111's corrector quirk kept, see above)."""
    order = len(rks) + 1
    g = _phi_terms(hh, order + 1)
    c = [[rk**k / math.factorial(k + 1) for k in range(order)] for rk in [*rks, 1.0]]
    a_p = _inverse([row[:-1] for row in c[:-1]]) if order > 1 else []
    a_c = _inverse(c)
    return _Weights(
        [sum(g[k + 1] * a_p[k][i] for k in range(order - 1)) / rk for i, rk in enumerate(rks)],
        [sum(g[k + 1] * a_c[k][i] for k in range(order - 1)) / rk for i, rk in enumerate(rks)],
        g[order] * a_c[max(order - 2, 0)][-1],
    )


def _weights(variant: str, hh: float, rks: list[float]) -> _Weights:
    return _vary_weights(hh, rks) if variant == "vary_coeff" else _bh_weights(variant, hh, rks)


def _step_order(i: int, order: int, steps: int, lower_order_final: bool) -> int:
    """Order of step ``i`` (1 … steps): warm-up orders 1, 2, … first, lower orders at the end if asked."""
    if i < order:
        return i
    return min(order, steps + 1 - i) if lower_order_final else order


def _combine(base: torch.Tensor, terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``base − Σ c·d``."""
    for c, d in terms:
        base = torch.add(base, d, alpha=-c)
    return base


def unipc(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    callback: StepCallback,
    options: UniPCOptions,
    is_img2img: bool = False,
) -> torch.Tensor:
    """Sample with UniPC from ``x`` (VP-space latent) over A1111's ``timesteps`` (its ints; ``len`` = steps).

    txt2img starts at t = 1; img2img (``is_img2img``) at ``t = timesteps[-1]/1000 + 1/1000``, A1111's t_start.
    ``callback(i, x, x0_prediction)`` follows each step; an exception it raises stops sampling and propagates.
    ``order`` is clamped to the number of steps (A1111 asserts instead). Raises ValueError for an unknown variant or
    skip type, an order below 1 or no timesteps.
    """
    if options.variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {options.variant!r}; expected one of {', '.join(VARIANTS)}")
    if options.skip_type not in SKIP_TYPES:
        raise ValueError(f"unknown UniPC skip type {options.skip_type!r}; expected one of {', '.join(SKIP_TYPES)}")
    steps = len(timesteps)
    if steps < 1 or options.order < 1:
        raise ValueError(f"UniPC needs at least one step and order >= 1 (got {steps} steps, order {options.order})")
    order = min(options.order, steps)
    schedule = DiscreteVP.from_alphas_cumprod(alphas_cumprod)
    t_start = float(timesteps[-1]) / 1000 + 1 / 1000 if is_img2img else 1.0
    times = schedule.time_steps(options.skip_type, t_start, steps)
    log_alpha = schedule.log_alpha_at(times)
    alphas, sigmas = log_alpha.exp().tolist(), (-torch.expm1(2 * log_alpha)).sqrt().tolist()
    lambdas = schedule.lambda_at(times).tolist()
    t_inputs = ((times - schedule.t_min) * 1000).tolist()
    t_dtype = torch.promote_types(x.dtype, torch.float32)

    def data_prediction(x: torch.Tensor, i: int) -> torch.Tensor:
        eps = model(x, torch.full((x.shape[0],), t_inputs[i], dtype=t_dtype, device=x.device))
        return (x - sigmas[i] * eps) / alphas[i]

    history = [(0, data_prediction(x, 0))]  # (time index, data prediction), newest last
    for i in range(1, steps + 1):
        step_order = _step_order(i, order, steps, options.lower_order_final)
        s, m0 = history[-1]
        h = lambdas[i] - lambdas[s]
        earlier = [history[-(k + 1)] for k in range(1, step_order)]
        rks = [(lambdas[j] - lambdas[s]) / h for j, _ in earlier]
        diffs = [m - m0 for _, m in earlier]
        weights = _weights(options.variant, -h, rks)
        alpha_t = alphas[i]
        base = _combine(x * (sigmas[i] / sigmas[s]), [(alpha_t * math.expm1(-h), m0)])
        x = _combine(base, [(alpha_t * w, d) for w, d in zip(weights.predictor, diffs, strict=True)])
        if i == steps:  # no corrector on the final step: no model call after it
            callback(i - 1, x, m0)
            break
        model_t = data_prediction(x, i)
        corrections = [(alpha_t * w, d) for w, d in zip(weights.corrector, diffs, strict=True)]
        x = _combine(base, [*corrections, (alpha_t * weights.corrector_t, model_t - m0)])
        callback(i - 1, x, model_t)
        history = [*history, (i, model_t)][-order:]
    return x
