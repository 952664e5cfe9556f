"""UniPC (A1111's uni_pc, multistep, data prediction) against diffusers' UniPCMultistepScheduler, on a Gaussian toy
whose probability-flow ODE has a closed-form solution, and its properties (model calls, order clamp, img2img start,
callback, errors).

Measured here: vs diffusers (bh1, bh2; 3, 9, 27, 37 steps) max |Δ| ≤ 8.6e-6 in float32 on final latents up to
12.8 in size (float32 round-off), ≤ 1.8e-14 with both run in float64.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from modules.engine.ksampling.unipc import UniPCOptions, _phi_terms, _vary_weights, unipc

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
ALPHAS_CUMPROD = UniPCMultistepScheduler(**SD_SCHEDULE).alphas_cumprod  # float32, as a model's buffer
MIX = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed non-linear ε "model" of A1111's timestep t (one per image): ≈ x at high noise, mixing channels low."""
    f = (t.to(x.dtype) / 1000)[:, None, None, None]
    return f * x + 0.3 * (1 - f) * torch.einsum("ij,bjhw->bihw", MIX.to(x.dtype), x) + 0.2 * torch.tanh(x)


class Counted:
    """An ε model recording the timestep of every call."""

    def __init__(self, eps=toy_eps):
        self.eps = eps
        self.t_inputs: list[float] = []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],)
        self.t_inputs.append(float(t[0]))
        return self.eps(x, t)


def sample(x, steps, options=None, model=toy_eps, callback=None, is_img2img=False):
    """UniPC over ``steps`` (a count: txt2img's number of timesteps, or A1111's timesteps themselves)."""
    return unipc(
        model,
        x,
        torch.arange(steps) if isinstance(steps, int) else steps,
        alphas_cumprod=ALPHAS_CUMPROD,
        callback=callback or (lambda i, x, denoised: None),
        options=options or UniPCOptions(),
        is_img2img=is_img2img,
    )


def latent(dtype=torch.float32, batch=2, seed=1):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def diffusers_unipc(variant, steps, x):
    """diffusers' UniPC-3 (predict x0, lower order final, linspace timesteps 999 … 0) on the same toy.

    In float64 its σ table is replaced by float64 values (from the same float32 ᾱ), so all its step math runs in
    float64; in float32 it is left as diffusers builds it.
    """
    scheduler = UniPCMultistepScheduler(
        **SD_SCHEDULE,
        solver_order=3,
        solver_type=variant,
        lower_order_final=True,
        predict_x0=True,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(steps)
    if x.dtype == torch.float64:
        cumprod = scheduler.alphas_cumprod.double()[torch.cat([scheduler.timesteps, torch.tensor([0])])]
        scheduler.sigmas = ((1 - cumprod) / cumprod).sqrt()
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [3, 9, 27, 37])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_matches_diffusers(variant, steps, dtype, tolerance):
    """999/steps integral: A1111's continuous times fall on table entries, diffusers' timesteps 999, 999 − 999/steps, …

    Both correct with the model's prediction at the predicted point (diffusers at its next call), without a
    corrector after the final step, with the same warm-up and lower-order-final orders.
    """
    x = latent(dtype)
    ours = sample(x, steps, UniPCOptions(variant=variant))
    ref = diffusers_unipc(variant, steps, x)
    diff = (ours - ref).abs().max().item()
    print(f"{variant} {steps} steps {dtype}: max |ours - diffusers| = {diff:.3g} (max |x| {ref.abs().max():.3g})")
    assert ours.dtype == dtype
    assert diff < tolerance


class GaussianToy:
    """Data x0 ~ N(μ, s²) per element: ε(x, t) = σ·(x − α·μ)/(α²s² + σ²) is exact, and the ODE keeps
    (x − α·μ)/√(α²s² + σ²) constant, so x at the end is known from x at the start."""

    def __init__(self):
        gen = torch.Generator().manual_seed(2)
        self.mu = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64) * 0.5
        self.s = torch.rand(1, 4, 8, 8, generator=gen, dtype=torch.float64) * 0.5 + 0.1
        self.t_table = np.arange(1, 1001) / 1000
        self.log_alpha_table = 0.5 * np.log(ALPHAS_CUMPROD.double().numpy())

    def alpha_sigma(self, t):
        alpha = np.exp(np.interp(t, self.t_table, self.log_alpha_table))
        return alpha, np.sqrt(1 - alpha**2)

    def eps(self, x, t_input):
        alpha, sigma = (torch.tensor(v)[:, None, None, None] for v in self.alpha_sigma(t_input.numpy() / 1000 + 1e-3))
        return sigma * (x - alpha * self.mu) / (alpha**2 * self.s**2 + sigma**2)

    def solution(self, x, t_start=1.0):
        (a_start,), (s_start,) = self.alpha_sigma([t_start])
        (a_end,), (s_end,) = self.alpha_sigma([1e-3])
        z = (x - a_start * self.mu) / (a_start**2 * self.s**2 + s_start**2).sqrt()
        return a_end * self.mu + (a_end**2 * self.s**2 + s_end**2).sqrt() * z


# Error ratio from 40 to 160 steps (float64). Uniform in λ ("logSNR") the steps shrink as 1/steps: the final step
# (order 1, no corrector) limits bh1/bh2 to second order (16x); without lower_order_final they reach ~4th. In
# "time_quadratic" the last step, from (√(1/N) + δ)² to 1/N, is long in λ until δ ≪ √(1/N); in "time_uniform" it
# spans λ ≈ ½·log(1 + N/steps) and shrinks only logarithmically, so convergence is slow (what A1111 gets).
# "vary_coeff" is first order (4x): A1111's corrector uses m_t through one term only (see the module docstring); a
# ratio above 6 means that quirk is gone.
# Per skip type: (least ratio, largest error at 160 steps) for bh1/bh2; measured 16 / 1.4e-5, 13 / 3.1e-4, 5 / 0.019.
EXPECTED = {"logSNR": (10.0, 5e-5), "time_quadratic": (8.0, 1e-3), "time_uniform": (3.0, 0.05)}


@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_converges_on_gaussian_toy(variant, skip_type):
    toy = GaussianToy()
    x = latent(torch.float64)
    exact = toy.solution(x)
    options = UniPCOptions(variant=variant, skip_type=skip_type)
    errors = [(sample(x, steps, options, model=toy.eps) - exact).abs().max().item() for steps in (10, 40, 160)]
    ratio = errors[1] / errors[2]
    print(f"{variant} {skip_type}: errors at 10/40/160 steps {errors}, 40→160 ratio {ratio:.3g}")
    assert errors[0] > errors[1] > errors[2]
    if variant == "vary_coeff":
        assert 3.0 < ratio < 6.0
    else:
        min_ratio, max_error = EXPECTED[skip_type]
        assert ratio > min_ratio
        assert errors[2] < max_error


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_higher_order_without_lower_order_final(variant):
    toy = GaussianToy()
    x = latent(torch.float64)
    options = UniPCOptions(variant=variant, skip_type="logSNR", lower_order_final=False)
    errors = [(sample(x, steps, options, model=toy.eps) - toy.solution(x)).abs().max().item() for steps in (40, 160)]
    assert errors[0] / errors[1] > 64  # at least third order


@pytest.mark.parametrize("order", [1, 2, 3])
def test_vary_coeff_weights(order):
    """The folded weights against A1111's vary_coeff formulas read term by term on scalar D's (r_k, D_k, D_t)."""
    hh, rks = -0.3, [-1.1, -2.3][: order - 1]
    d, d_t = [0.7, -0.4][: order - 1], 0.9
    g = _phi_terms(hh, order + 1)
    full = [*rks, 1.0]
    c = torch.tensor([[r**k / math.factorial(k + 1) for k in range(order)] for r in full], dtype=torch.float64)
    predictor, corrector, k = 0.0, 0.0, 0
    if order > 1:
        a_p = torch.linalg.inv(c[:-1, :-1])
        predictor = sum(g[k + 1] * float(a_p[k] @ torch.tensor(d, dtype=torch.float64)) for k in range(order - 1))
    a_c = torch.linalg.inv(c)
    for k in range(order - 1):
        corrector += g[k + 1] * float(a_c[k][:-1] @ torch.tensor(d, dtype=torch.float64))
    corrector += g[order] * d_t * float(a_c[k][-1])  # A1111: the loop's last k (0 if the loop never ran)
    weights = _vary_weights(hh, rks)
    diffs = [dk * rk for dk, rk in zip(d, rks, strict=True)]  # m_k − m_0 = r_k·D_k
    assert sum(w * m for w, m in zip(weights.predictor, diffs, strict=True)) == pytest.approx(predictor, abs=1e-14)
    ours = sum(w * m for w, m in zip(weights.corrector, diffs, strict=True)) + weights.corrector_t * d_t
    assert ours == pytest.approx(corrector, abs=1e-14)


@pytest.mark.parametrize("variant", ["bh1", "bh2", "vary_coeff"])
@pytest.mark.parametrize("skip_type", ["time_uniform", "logSNR"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_model_calls_and_callbacks(variant, skip_type, steps, order):
    model, seen = Counted(), []
    options = UniPCOptions(variant=variant, skip_type=skip_type, order=order)
    out = sample(latent(), steps, options, model=model, callback=lambda i, x, d: seen.append((i, x.shape, d.shape)))
    assert len(model.t_inputs) == steps
    assert model.t_inputs[0] == pytest.approx(999)
    if skip_type == "time_uniform":
        assert model.t_inputs == pytest.approx([999 * (1 - i / steps) for i in range(steps)], abs=1e-3)
    assert [i for i, _, _ in seen] == list(range(steps))
    assert all(shape == d_shape == out.shape for _, shape, d_shape in seen)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("steps", [1, 2])
def test_order_is_clamped_to_steps(steps):
    x = latent()
    assert torch.equal(sample(x, steps, UniPCOptions(order=3)), sample(x, steps, UniPCOptions(order=steps)))


def test_img2img_starts_at_the_last_timestep():
    """A1111's img2img: its timesteps [1, 21, …][:t_enc], ``t_start = timesteps[-1]/1000 + 1/1000``, t_enc steps."""
    timesteps = (torch.arange(0, 1000, 20) + 1)[:18]  # 50 steps at denoising strength 0.36
    model = Counted()
    sample(latent(), timesteps, model=model, is_img2img=True)
    assert model.t_inputs == pytest.approx([341 * (1 - i / 18) for i in range(18)], abs=1e-3)
    toy = GaussianToy()
    x = latent(torch.float64)
    got = sample(x, timesteps, UniPCOptions(skip_type="logSNR"), model=toy.eps, is_img2img=True)
    assert (got - toy.solution(x, t_start=0.342)).abs().max() < 1e-3  # 4.4e-4; from t = 0.341 or 0.343: 2.9e-3


def test_batch_images_are_independent():
    """Each image samples as it would alone (A1111's vary_coeff breaks from two images up; this one does not)."""
    x = latent(batch=3)
    for variant in ("bh1", "vary_coeff"):
        options = UniPCOptions(variant=variant, skip_type="logSNR")
        together = sample(x, 6, options)
        alone = torch.cat([sample(x[i : i + 1], 6, options) for i in range(3)])
        assert torch.allclose(together, alone, atol=1e-6)


def test_callback_stops_sampling():
    class StopError(Exception):
        pass

    def callback(i, x, denoised):
        if i == 2:
            raise StopError

    model = Counted()
    with pytest.raises(StopError):
        sample(latent(), 10, model=model, callback=callback)
    assert len(model.t_inputs) == 4  # the first prediction and three correctors


@pytest.mark.parametrize(
    "options", [UniPCOptions(variant="bh3"), UniPCOptions(skip_type="karras"), UniPCOptions(order=0)]
)
def test_bad_options_raise(options):
    with pytest.raises(ValueError, match="UniPC"):
        sample(latent(), 5, options)


def test_no_timesteps_raise():
    with pytest.raises(ValueError, match="at least one step"):
        sample(latent(), 0)
