"""The parameters a sampler actually runs with, and the infotext keys A1111 writes for them.

A1111 (``sd_samplers_common.Sampler.initialize``, ``KDiffusionSampler.get_sigmas``, ``CompVisSampler.get_timesteps``):

- η goes only to samplers whose step function takes one; it is the request's ``eta`` or else the setting
  ``eta_ancestral`` (k-diffusion samplers, default 1) / ``eta_ddim`` (DDIM, default 0). ``Eta`` / ``Eta DDIM`` is
  written when it differs from that default.
- ``s_churn``, ``s_tmin``, ``s_tmax`` go to Euler, Heun and DPM2; ``s_noise`` to those and the samplers listed in
  ``_S_NOISE``; the others run with the defaults. ``Sigma churn`` … ``Sigma noise`` are written when not default.
  [Deviation] A1111 lets a non-default setting win over the request field; here the request field wins.
- ``sigma_min`` / ``sigma_max`` settings (0 = the model's) override the schedule's range (``Schedule min/max sigma``);
  ``rho`` (0 = default) applies to the schedules that have one (``Schedule rho``); the Beta schedule writes its shape.
- NGMS (``s_min_uncond``, request or setting) skips the uncond pass below that σ on every other model call
  (``s_min_uncond_all``: every call); ``NGMS`` / ``NGMS all steps`` are written.
- ``always_discard_next_to_last_sigma`` drops the penultimate σ (or adds a timestep for the timestep samplers) when
  the sampler does not already (``Discard penultimate sigma``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modules.engine.denoiser import SkipUncond
from modules.engine.ksampling.common import SamplerOptions
from modules.engine.ksampling.schedules import ScheduleParams
from modules.engine.ksampling.unipc import UniPCOptions
from modules.engine.samplers import SamplerSpec, ScheduleSpec
from modules.engine.types import GenerationRequest, SamplerSettings

# Samplers whose step function takes η (k-diffusion signatures; DDIM's own).
_ETA = frozenset(
    {
        "Euler a",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
        "DPM fast",
        "DPM adaptive",
        "DDIM",
        "DDIM CFG++",
    }
)
# A1111's ``sampler_extra_params``: churn for these, s_noise for these and the next set.
_CHURN = frozenset({"Euler", "Heun", "DPM2"})
_S_NOISE = _CHURN | {
    "DPM fast",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
}


@dataclass(frozen=True)
class SamplerParams:
    """Everything beyond the step count that decides a sampler's trajectory, plus its infotext keys.

    Attributes:
        options: η and the churn parameters for the k-diffusion step functions.
        schedule: What the σ schedule needs besides the model (family, Beta shape, range and ρ overrides).
        discard_next_to_last: Drop the penultimate σ (timestep samplers: sample one extra timestep).
        unipc: UniPC's settings.
        skip_uncond: Negative Guidance minimum sigma (NGMS).
        infotext: The keys A1111 adds for these parameters, in its order.
    """

    options: SamplerOptions = field(default_factory=SamplerOptions)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    discard_next_to_last: bool = False
    unipc: UniPCOptions = field(default_factory=UniPCOptions)
    skip_uncond: SkipUncond = field(default_factory=SkipUncond)
    infotext: dict[str, Any] = field(default_factory=dict)


def resolve_params(
    sampler: SamplerSpec,
    schedule: ScheduleSpec,
    request: GenerationRequest,
    settings: SamplerSettings,
    *,
    sdxl: bool = False,
) -> SamplerParams:
    """The parameters ``sampler`` with ``schedule`` runs with for ``request`` (see the module docstring)."""
    info: dict[str, Any] = {}
    ngms = request.s_min_uncond if request.s_min_uncond is not None else settings.s_min_uncond
    if ngms:
        info["NGMS"] = ngms
        if settings.s_min_uncond_all:
            info["NGMS all steps"] = True
    own_discard = sampler.options.get("discard_next_to_last_sigma") == "True"
    discard = own_discard or settings.always_discard_next_to_last_sigma
    if discard and not own_discard:
        info["Discard penultimate sigma"] = True
    schedule_params = _schedule_params(sampler, schedule, settings, sdxl, info)
    options = _sampler_options(sampler, request, settings, info)
    unipc = UniPCOptions(
        variant=settings.uni_pc_variant,
        skip_type=settings.uni_pc_skip_type,
        order=settings.uni_pc_order,
        lower_order_final=settings.uni_pc_lower_order_final,
    )
    skip = SkipUncond(ngms, settings.s_min_uncond_all)
    return SamplerParams(options, schedule_params, discard, unipc, skip, info)


def _schedule_params(
    sampler: SamplerSpec, schedule: ScheduleSpec, settings: SamplerSettings, sdxl: bool, info: dict[str, Any]
) -> ScheduleParams:
    """σ-schedule overrides (none for the timestep samplers), adding their infotext keys to ``info``."""
    shape = {"sdxl": sdxl, "beta_alpha": settings.beta_dist_alpha, "beta_beta": settings.beta_dist_beta}
    if sampler.timestep_sampler:
        return ScheduleParams(**shape)
    if settings.sigma_min:
        info["Schedule min sigma"] = settings.sigma_min
    if settings.sigma_max:
        info["Schedule max sigma"] = settings.sigma_max
    rho = settings.rho if schedule.default_rho != -1 and settings.rho else None
    if rho is not None:
        info["Schedule rho"] = rho
    if schedule.name == "beta":
        info["Beta schedule alpha"] = settings.beta_dist_alpha
        info["Beta schedule beta"] = settings.beta_dist_beta
    return ScheduleParams(**shape, sigma_min=settings.sigma_min or None, sigma_max=settings.sigma_max or None, rho=rho)


def _sampler_options(
    sampler: SamplerSpec, request: GenerationRequest, settings: SamplerSettings, info: dict[str, Any]
) -> SamplerOptions:
    """η and the churn parameters for ``sampler``, adding their infotext keys to ``info``."""
    eta, eta_default, eta_key = (
        (settings.eta_ddim, 0.0, "Eta DDIM") if sampler.timestep_sampler else (settings.eta_ancestral, 1.0, "Eta")
    )
    if sampler.name in _ETA:
        eta = request.eta if request.eta is not None else eta
        if eta != eta_default:
            info[eta_key] = eta
    else:
        eta = eta_default
    churn = sampler.name in _CHURN
    values = {
        "s_churn": _pick(request.s_churn, settings.s_churn, 0.0, churn),
        "s_tmin": _pick(request.s_tmin, settings.s_tmin, 0.0, churn),
        "s_tmax": _pick(request.s_tmax, settings.s_tmax, 0.0, churn),
        "s_noise": _pick(request.s_noise, settings.s_noise, 1.0, sampler.name in _S_NOISE),
    }
    labels = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
    for name, default in (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", 0.0), ("s_noise", 1.0)):
        if values[name] != default:
            info[labels[name]] = values[name]
    return SamplerOptions(
        eta=eta,
        s_churn=values["s_churn"],
        s_tmin=values["s_tmin"],
        s_tmax=values["s_tmax"] or math.inf,
        s_noise=values["s_noise"],
    )


def _pick(requested: float | None, setting: float, default: float, used: bool) -> float:
    """The request's value, else the setting's; the default where the sampler does not take the parameter."""
    if not used:
        return default
    return requested if requested is not None else setting
