"""A1111 sampler and schedule-type names (with aliases) → diffusers scheduler class + config overrides."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modules.errors import InvalidRequestError

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

logger = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Keys of a loaded model's scheduler config that describe the model (noise schedule, parameterisation); everything
# else (solver order, spacing, sigma flags) is chosen by the sampler and schedule type.
MODEL_CONFIG_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "rescale_betas_zero_snr",
)

# Sigma-spacing flags that must be reset unless the chosen schedule sets them.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _ro(**kwargs: Any) -> Mapping[str, Any]:
    """Return a read-only mapping of the keyword arguments."""
    return MappingProxyType(dict(kwargs))


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One A1111 schedule type (modules/sd_schedulers.py), plus how diffusers reproduces it.

    Attributes:
        name: A1111 internal name, e.g. ``karras``.
        label: Name shown in the UI and written in infotext, e.g. ``Karras``.
        aliases: Other accepted names, or None.
        default_rho: Karras-style rho, −1 where it does not apply.
        need_inner_model: Whether A1111 needs the model's own sigmas to build it.
        overrides: Scheduler config keys that produce this spacing, or None when diffusers cannot do it.
    """

    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False
    overrides: Mapping[str, Any] | None = None

    def to_api(self) -> dict[str, object]:
        """Return the ``/sdapi/v1/schedulers`` item for this schedule type."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """One A1111 sampler and the diffusers scheduler that stands in for it.

    Attributes:
        name: Exact A1111 name (UI, API, infotext).
        aliases: Alternative names listed by ``/sdapi/v1/samplers``.
        default_schedule: Schedule name that ``Automatic`` resolves to (``automatic`` = the model's own).
        scheduler_class: Name of the diffusers scheduler class; empty where only the own loop runs the sampler.
        overrides: Config keys that turn that class into this sampler.
        options: A1111's sampler options as the API lists them (string values).
        available: False where diffusers cannot reproduce the sampler yet.
        requires: Python modules that must be importable for the scheduler to work.
        timestep_sampler: A1111 timestep sampler (DDIM, PLMS, UniPC…), which ignores the schedule type.
    """

    name: str
    aliases: tuple[str, ...]
    default_schedule: str
    scheduler_class: str
    overrides: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    options: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    available: bool = True
    requires: tuple[str, ...] = ()
    timestep_sampler: bool = False

    @property
    def usable(self) -> bool:
        """Whether the sampler is implemented and its required modules are installed."""
        return self.available and all(importlib.util.find_spec(m) is not None for m in self.requires)

    def to_api(self) -> dict[str, object]:
        """Return the ``/sdapi/v1/samplers`` item for this sampler."""
        return {"name": self.name, "aliases": list(self.aliases), "options": dict(self.options)}


_LINSPACE = _ro(timestep_spacing="linspace")

SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic", overrides=_LINSPACE),
    ScheduleSpec("uniform", "Uniform", need_inner_model=True, overrides=_LINSPACE),
    ScheduleSpec("karras", "Karras", default_rho=7.0, overrides=_ro(use_karras_sigmas=True)),
    ScheduleSpec("exponential", "Exponential", overrides=_ro(use_exponential_sigmas=True)),
    ScheduleSpec("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleSpec(
        "sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True, overrides=_ro(timestep_spacing="trailing")
    ),
    ScheduleSpec("kl_optimal", "KL Optimal"),
    ScheduleSpec("align_your_steps", "Align Your Steps"),
    ScheduleSpec("simple", "Simple", need_inner_model=True, overrides=_ro(timestep_spacing="trailing")),
    ScheduleSpec("normal", "Normal", need_inner_model=True, overrides=_LINSPACE),
    ScheduleSpec("ddim", "DDIM", need_inner_model=True, overrides=_ro(timestep_spacing="leading", steps_offset=1)),
    ScheduleSpec("beta", "Beta", need_inner_model=True, overrides=_ro(use_beta_sigmas=True)),
)

_MS = "DPMSolverMultistepScheduler"
_OWN_LOOP = ""  # no diffusers stand-in: only the own k-diffusion loop (modules.engine.ksampling) runs the sampler
_SDE = "sde-dpmsolver++"
_T = "True"

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(
        "DPM++ 2M",
        ("k_dpmpp_2m",),
        "karras",
        _MS,
        _ro(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint"),
        _ro(scheduler="karras"),
    ),
    SamplerSpec(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        "karras",
        "DPMSolverSDEScheduler",
        _EMPTY,
        _ro(scheduler="karras", second_order=_T, brownian_noise=_T),
        requires=("torchsde",),
    ),
    SamplerSpec(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "exponential",
        _MS,
        _ro(algorithm_type=_SDE, solver_order=2, solver_type="midpoint"),
        _ro(scheduler="exponential", brownian_noise=_T),
        requires=("torchsde",),
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "exponential",
        _MS,
        _ro(algorithm_type=_SDE, solver_order=2, solver_type="heun"),
        _ro(scheduler="exponential", brownian_noise=_T, solver_type="heun"),
        requires=("torchsde",),
    ),
    SamplerSpec(
        "DPM++ 2S a",
        ("k_dpmpp_2s_a",),
        "karras",
        "DPMSolverSinglestepScheduler",
        _ro(algorithm_type="dpmsolver++", solver_order=2),
        _ro(scheduler="karras", uses_ensd=_T, second_order=_T),
    ),
    SamplerSpec(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "exponential",
        _MS,
        _ro(algorithm_type=_SDE, solver_order=3, solver_type="midpoint"),
        _ro(scheduler="exponential", discard_next_to_last_sigma=_T, brownian_noise=_T),
        requires=("torchsde",),
    ),
    SamplerSpec(
        "Euler a",
        ("k_euler_a", "k_euler_ancestral"),
        "automatic",
        "EulerAncestralDiscreteScheduler",
        options=_ro(uses_ensd=_T),
    ),
    SamplerSpec("Euler", ("k_euler",), "automatic", "EulerDiscreteScheduler"),
    SamplerSpec("LMS", ("k_lms",), "automatic", "LMSDiscreteScheduler"),
    SamplerSpec("Heun", ("k_heun",), "automatic", "HeunDiscreteScheduler", options=_ro(second_order=_T)),
    SamplerSpec(
        "DPM2",
        ("k_dpm_2",),
        "karras",
        "KDPM2DiscreteScheduler",
        options=_ro(scheduler="karras", discard_next_to_last_sigma=_T, second_order=_T),
    ),
    SamplerSpec(
        "DPM2 a",
        ("k_dpm_2_a",),
        "karras",
        "KDPM2AncestralDiscreteScheduler",
        options=_ro(scheduler="karras", discard_next_to_last_sigma=_T, uses_ensd=_T, second_order=_T),
    ),
    SamplerSpec("DPM fast", ("k_dpm_fast",), "automatic", _OWN_LOOP, options=_ro(uses_ensd=_T)),
    SamplerSpec("DPM adaptive", ("k_dpm_ad",), "automatic", _OWN_LOOP, options=_ro(uses_ensd=_T)),
    SamplerSpec("Restart", ("restart",), "karras", _OWN_LOOP, options=_ro(scheduler="karras", second_order=_T)),
    SamplerSpec(
        "DDIM",
        ("ddim",),
        "automatic",
        "DDIMScheduler",
        _ro(clip_sample=False, set_alpha_to_one=False),
        timestep_sampler=True,
    ),
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), "automatic", "", available=False, timestep_sampler=True),
    SamplerSpec(
        "PLMS",
        ("plms",),
        "automatic",
        "PNDMScheduler",
        _ro(skip_prk_steps=True, set_alpha_to_one=False),
        timestep_sampler=True,
    ),
    SamplerSpec(
        "UniPC", ("unipc",), "automatic", "UniPCMultistepScheduler", _ro(solver_order=2), timestep_sampler=True
    ),
    SamplerSpec("LCM", ("k_lcm",), "automatic", "LCMScheduler"),
)

# A1111 timestep samplers use ``range(0, 1000, 1000 // steps) + 1``: diffusers' "leading" spacing with offset 1.
_TIMESTEP_SAMPLER_SPACING = _ro(timestep_spacing="leading", steps_offset=1)


def _fold(name: str) -> str:
    """Return the case-insensitive lookup key of a name."""
    return name.strip().casefold()


def find_schedule(name: str) -> ScheduleSpec | None:
    """Return the schedule type whose name, label or alias matches ``name`` (case-insensitive), or None."""
    key = _fold(name)
    for spec in SCHEDULES:
        if key in (_fold(spec.name), _fold(spec.label), *(_fold(a) for a in spec.aliases or ())):
            return spec
    return None


def find_sampler(name: str) -> SamplerSpec | None:
    """Return the sampler whose name or alias matches ``name`` (exact first, then case-insensitive), or None."""
    for spec in SAMPLERS:
        if name == spec.name or name in spec.aliases:
            return spec
    key = _fold(name)
    for spec in SAMPLERS:
        if key == _fold(spec.name) or key in (_fold(a) for a in spec.aliases):
            return spec
    return None


def _split_legacy(sampler_name: str) -> tuple[SamplerSpec, ScheduleSpec] | None:
    """Split a legacy combined name such as ``DPM++ 2M Karras`` into its sampler and schedule type."""
    for spec in SCHEDULES:
        for label in (spec.label, *(spec.aliases or ())):
            if _fold(sampler_name).endswith(" " + _fold(label)):
                sampler = find_sampler(sampler_name[: -len(label)].rstrip())
                if sampler is not None:
                    return sampler, spec
    return None


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """Return ``(sampler name, schedule label or None)``, splitting legacy names such as ``DPM++ 2M Karras``.

    Unknown names come back unchanged with None.
    """
    sampler = find_sampler(name)
    if sampler is not None:
        return sampler.name, None
    legacy = _split_legacy(name)
    return (legacy[0].name, legacy[1].label) if legacy else (name, None)


def resolve_sampler(sampler_name: str, scheduler: str | None) -> tuple[SamplerSpec, ScheduleSpec]:
    """Find the sampler and schedule type a request names.

    A legacy combined name (``DPM++ 2M Karras``) supplies the schedule type when ``scheduler`` is None or
    ``Automatic``. ``Automatic`` resolves to the sampler's default schedule type.

    Args:
        sampler_name: Sampler name or alias, any case, possibly with a schedule label appended.
        scheduler: Schedule-type name, label or alias; None means ``Automatic``.

    Returns:
        The sampler and the schedule type it will run with.

    Raises:
        InvalidRequestError: The sampler or schedule type is unknown, or the sampler is not available.
    """
    sampler = find_sampler(sampler_name)
    schedule = find_schedule(scheduler) if scheduler else find_schedule("automatic")
    if sampler is None:
        legacy = _split_legacy(sampler_name)
        if legacy is None:
            names = ", ".join(s.name for s in SAMPLERS if s.usable)
            raise InvalidRequestError(f"Unknown sampler_name {sampler_name!r}; valid names: {names}")
        sampler = legacy[0]
        if schedule is None or schedule.name == "automatic":
            schedule = legacy[1]
    if schedule is None:
        labels = ", ".join(s.label for s in SCHEDULES)
        raise InvalidRequestError(f"Unknown scheduler {scheduler!r}; valid schedule types: {labels}")
    if not sampler.usable:
        names = ", ".join(s.name for s in SAMPLERS if s.usable)
        why = f"needs {', '.join(sampler.requires)}" if sampler.available else "is not implemented yet"
        raise InvalidRequestError(f"Sampler {sampler.name!r} {why}; available samplers: {names}")
    if schedule.name == "automatic" and sampler.default_schedule != "automatic":
        schedule = find_schedule(sampler.default_schedule) or schedule
    return sampler, schedule


def _schedule_overrides(cls: type, sampler: SamplerSpec, schedule: ScheduleSpec) -> dict[str, Any]:
    """Return the config keys that give ``cls`` the spacing of ``schedule``.

    Raises:
        InvalidRequestError: The class cannot produce that schedule type.
    """
    params = inspect.signature(cls.__init__).parameters
    if sampler.timestep_sampler:
        if schedule.name != "automatic":
            logger.debug("%s is a timestep sampler; schedule %s is ignored (as A1111)", sampler.name, schedule.label)
        wanted: Mapping[str, Any] = _TIMESTEP_SAMPLER_SPACING
    elif schedule.overrides is None:
        raise InvalidRequestError(f"Schedule type {schedule.label!r} is not supported yet")
    else:
        wanted = schedule.overrides
    out = {flag: False for flag in _SIGMA_FLAGS if flag in params}
    for key, value in wanted.items():
        if key in params:
            out[key] = value
        elif key == "timestep_spacing" and value == "linspace":
            continue  # classes without the parameter (DPM++ 2S a) space their timesteps linearly already
        else:
            raise InvalidRequestError(
                f"Sampler {sampler.name!r} cannot use schedule type {schedule.label!r} "
                f"({sampler.scheduler_class} has no {key!r} option)"
            )
    return out


def make_scheduler(base_config: Mapping[str, Any], sampler: SamplerSpec, schedule: ScheduleSpec) -> SchedulerMixin:
    """Build the diffusers scheduler for a sampler and schedule type from the loaded model's scheduler config.

    Only the model-describing keys of ``base_config`` (betas, training steps, prediction type) are kept; the
    sampler's and the schedule's overrides decide everything else.

    Args:
        base_config: ``pipe.scheduler.config`` of the loaded model.
        sampler: A usable sampler from ``resolve_sampler``.
        schedule: The schedule type it runs with.

    Returns:
        A fresh scheduler instance; call ``set_timesteps`` on it before sampling.

    Raises:
        InvalidRequestError: The sampler is unavailable or cannot use the schedule type.
    """
    if not sampler.usable:
        raise InvalidRequestError(f"Sampler {sampler.name!r} is not available")
    if not sampler.scheduler_class:
        raise InvalidRequestError(
            f"Sampler {sampler.name!r} has no diffusers scheduler; only the own sampling loop runs it"
        )
    cls = getattr(importlib.import_module("diffusers"), sampler.scheduler_class)
    config = {k: base_config[k] for k in MODEL_CONFIG_KEYS if k in base_config}
    config.update(_schedule_overrides(cls, sampler, schedule))
    config.update(sampler.overrides)
    logger.debug("Scheduler %s for %s / %s: %s", cls.__name__, sampler.name, schedule.label, config)
    return cls.from_config(config)


def sampler_list() -> list[dict[str, object]]:
    """Return the usable samplers in A1111's UI order, shaped as ``/sdapi/v1/samplers`` items."""
    return [s.to_api() for s in SAMPLERS if s.usable]


def schedule_list() -> list[dict[str, object]]:
    """Return every schedule type shaped as ``/sdapi/v1/schedulers`` items."""
    return [s.to_api() for s in SCHEDULES]
