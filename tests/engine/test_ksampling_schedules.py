"""A1111's schedule types (modules/sd_schedulers.py) against independent readings of their formulas and known values.

Where k-diffusion has the building blocks (its DiscreteSchedule's σ ↔ t maps), the expected values use them; the rest
is recomputed here in float64 from the published formula, plus hand-checked numbers.
"""

import importlib
import math

import numpy as np
import pytest
import torch

from modules.engine.ksampling.schedules import AYS_SD1, AYS_SDXL, SCHEDULES, ScheduleParams, sigmas_for
from modules.engine.samplers import SCHEDULES as SCHEDULE_SPECS
from modules.engine.sampling import DiscreteModel
from tests.support.kdiffusion_ref import load_sampling
from tests.support.toy_denoiser import SD_CONFIG

K = load_sampling()
MODEL = DiscreteModel.from_config(SD_CONFIG)
SMIN, SMAX = MODEL.sigma_min, MODEL.sigma_max


def close(ours, expected, rtol=1e-5, atol=1e-6):
    """Within fp32 round-off of float64 values; with rtol = atol = 0, equal to them rounded to fp32."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    if rtol == atol == 0:
        assert torch.equal(ours, expected.float()), (ours, expected)
    else:
        assert torch.allclose(ours.double(), expected, rtol=rtol, atol=atol), (ours, expected)


def test_every_a1111_schedule_type_has_a_sigma_function():
    assert set(SCHEDULES) == {s.name for s in SCHEDULE_SPECS}


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_kl_optimal(n):
    """tan of n + 1 points evenly spaced from atan σ_max to atan σ_min; no 0 at the end (as A1111)."""
    lo, hi = math.atan(SMIN), math.atan(SMAX)
    expected = [math.tan(hi + k / n * (lo - hi)) for k in range(n + 1)]
    ours = sigmas_for("kl_optimal", n, MODEL)
    close(ours, expected)
    assert float(ours[-1]) == pytest.approx(SMIN, rel=1e-5)
    if n == 2:  # the midpoint angle: tan((atan 14.6146 + atan 0.0292) / 2) ≈ 0.9616
        assert float(ours[1]) == pytest.approx(0.9616, abs=1e-4)


def test_align_your_steps_lists_and_model_kind():
    close(sigmas_for("align_your_steps", 11, MODEL), [*AYS_SD1, 0.0], rtol=0, atol=0)
    sdxl = sigmas_for("align_your_steps", 11, MODEL, params=ScheduleParams(sdxl=True))
    close(sdxl, [*AYS_SDXL, 0.0], rtol=0, atol=0)
    assert AYS_SD1 == (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
    assert AYS_SDXL[:4] == (14.615, 6.315, 3.771, 2.181)
    # 6 values land on every second list entry: no interpolation at all
    close(sigmas_for("align_your_steps", 6, MODEL), [14.615, 3.861, 1.886, 0.963, 0.399, 0.029, 0.0])


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("sdxl", [False, True])
def test_align_your_steps_log_linear_interpolation(n, sdxl):
    table = AYS_SDXL if sdxl else AYS_SD1
    expected = []
    for k in range(n):
        pos = k / (n - 1) * (len(table) - 1)  # position in the decreasing list
        j = min(int(pos), len(table) - 2)
        w = pos - j
        expected.append(math.exp((1 - w) * math.log(table[j]) + w * math.log(table[j + 1])))
    close(sigmas_for("align_your_steps", n, MODEL, params=ScheduleParams(sdxl=sdxl)), [*expected, 0.0])


def test_simple_takes_every_len_over_n_th_table_entry():
    table = MODEL.sigmas.double()
    close(sigmas_for("simple", 10, MODEL), [*table.flip(0)[::100].tolist(), 0.0], rtol=0, atol=0)
    # 7 steps: stride 1000/7, truncated indices 0, 142, 285, 428, 571, 714, 857 from the top
    picks = [999 - int(k * 1000 / 7) for k in range(7)]
    assert picks == [999, 857, 714, 571, 428, 285, 142]
    close(sigmas_for("simple", 7, MODEL), [*table[picks].tolist(), 0.0], rtol=0, atol=0)


def test_ddim_takes_entries_one_plus_multiples_of_the_stride():
    table = MODEL.sigmas.double()
    close(sigmas_for("ddim", 10, MODEL), [*table[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]].tolist(), 0.0])
    seven = sigmas_for("ddim", 7, MODEL)  # stride 142: 1, 143, …, 995 is 8 sigmas, as in A1111
    close(seven, [*table[[995, 853, 711, 569, 427, 285, 143, 1]].tolist(), 0.0])


@pytest.mark.skipif(K is None, reason="k-diffusion is not installed (tests/requirements-nodeps.txt)")
@pytest.mark.parametrize(("name", "sgm"), [("normal", False), ("sgm_uniform", True)])
@pytest.mark.parametrize("n", [5, 20])
def test_normal_and_sgm_uniform_with_k_diffusion_discrete_schedule(name, sgm, n):
    """A1111's normal_scheduler over k-diffusion's σ ↔ t maps (sgm: n + 1 timesteps, the last dropped)."""
    ext = importlib.import_module("k_diffusion.external")
    sched = ext.DiscreteSchedule(MODEL.sigmas.clone(), quantize=False)
    start, end = sched.sigma_to_t(torch.tensor(SMAX)), sched.sigma_to_t(torch.tensor(SMIN))
    ts = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    expected = [float(sched.t_to_sigma(t)) for t in ts] + [0.0]
    close(sigmas_for(name, n, MODEL), expected)
    if not sgm:  # the ends are the table's: σ_max … σ_min, like "Automatic"
        close(sigmas_for(name, n, MODEL), sigmas_for("automatic", n, MODEL).double())


def test_beta_quantiles():
    from scipy import special

    # symmetric α = β: the median is ½, so 3 steps are σ_max, the midpoint, σ_min
    close(sigmas_for("beta", 3, MODEL), [SMAX, (SMIN + SMAX) / 2, SMIN, 0.0])
    # α = β = 1 is the uniform distribution: evenly spaced σ
    flat = sigmas_for("beta", 5, MODEL, params=ScheduleParams(beta_alpha=1.0, beta_beta=1.0))
    close(flat, [*np.linspace(SMAX, SMIN, 5).tolist(), 0.0])
    # otherwise each σ's position in [σ_min, σ_max] has regularized incomplete beta I_x(0.6, 0.6) = 1 − k/(n − 1)
    ours = sigmas_for("beta", 9, MODEL).double()[:-1]
    x = ((ours - SMIN) / (SMAX - SMIN)).clamp(0, 1).numpy()
    assert np.allclose(special.betainc(0.6, 0.6, x), 1 - np.linspace(0, 1, 9), atol=2e-6)
    assert ours[1] > SMIN + 0.9 * (SMAX - SMIN)  # the U-shaped density crowds steps at both ends


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_discard_next_to_last_and_finite(name):
    full = sigmas_for(name, 11, MODEL)
    discarded = sigmas_for(name, 10, MODEL, discard_next_to_last=True)
    assert torch.isfinite(full).all() and (full[:-1] > 0).all()
    assert torch.equal(discarded, torch.cat([full[:-2], full[-1:]]))
    assert (full[:-1].diff() <= 0).all()  # never increasing
