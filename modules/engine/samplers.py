"""A1111 sampler and schedule-type names (with aliases, default schedules and the options its API lists).

Every sampler runs in the own loop (``modules.engine.kloop``); this module only knows names.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _ro(**kwargs: str) -> Mapping[str, str]:
    """Return a read-only mapping of the keyword arguments."""
    return MappingProxyType(dict(kwargs))


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One A1111 schedule type (modules/sd_schedulers.py).

    Attributes:
        name: A1111 internal name, e.g. ``karras``.
        label: Name shown in the UI and written in infotext, e.g. ``Karras``.
        aliases: Other accepted names, or None.
        default_rho: Karras-style rho, −1 where it does not apply.
        need_inner_model: Whether A1111 needs the model's own sigmas to build it.
    """

    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False

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
    """One A1111 sampler.

    Attributes:
        name: Exact A1111 name (UI, API, infotext).
        aliases: Alternative names listed by ``/sdapi/v1/samplers``.
        default_schedule: Schedule name that ``Automatic`` resolves to (``automatic`` = the model's own).
        options: A1111's sampler options as the API lists them (string values).
        requires: Python modules that must be importable for the sampler to work.
        timestep_sampler: A1111 timestep sampler (DDIM, PLMS, UniPC…), which ignores the schedule type.
    """

    name: str
    aliases: tuple[str, ...]
    default_schedule: str
    options: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    requires: tuple[str, ...] = ()
    timestep_sampler: bool = False

    @property
    def usable(self) -> bool:
        """Whether the sampler's required modules are installed."""
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def to_api(self) -> dict[str, object]:
        """Return the ``/sdapi/v1/samplers`` item for this sampler."""
        return {"name": self.name, "aliases": list(self.aliases), "options": dict(self.options)}


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic"),
    ScheduleSpec("uniform", "Uniform", need_inner_model=True),
    ScheduleSpec("karras", "Karras", default_rho=7.0),
    ScheduleSpec("exponential", "Exponential"),
    ScheduleSpec("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleSpec("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    ScheduleSpec("kl_optimal", "KL Optimal"),
    ScheduleSpec("align_your_steps", "Align Your Steps"),
    ScheduleSpec("simple", "Simple", need_inner_model=True),
    ScheduleSpec("normal", "Normal", need_inner_model=True),
    ScheduleSpec("ddim", "DDIM", need_inner_model=True),
    ScheduleSpec("beta", "Beta", need_inner_model=True),
)

_T = "True"
_SDE = ("torchsde",)

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "karras", _ro(scheduler="karras")),
    SamplerSpec(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        "karras",
        _ro(scheduler="karras", second_order=_T, brownian_noise=_T),
        requires=_SDE,
    ),
    SamplerSpec(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "exponential", _ro(scheduler="exponential", brownian_noise=_T), _SDE
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "exponential",
        _ro(scheduler="exponential", brownian_noise=_T, solver_type="heun"),
        _SDE,
    ),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), "karras", _ro(scheduler="karras", uses_ensd=_T, second_order=_T)),
    SamplerSpec(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "exponential",
        _ro(scheduler="exponential", discard_next_to_last_sigma=_T, brownian_noise=_T),
        _SDE,
    ),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), "automatic", _ro(uses_ensd=_T)),
    SamplerSpec("Euler", ("k_euler",), "automatic"),
    SamplerSpec("LMS", ("k_lms",), "automatic"),
    SamplerSpec("Heun", ("k_heun",), "automatic", _ro(second_order=_T)),
    SamplerSpec(
        "DPM2", ("k_dpm_2",), "karras", _ro(scheduler="karras", discard_next_to_last_sigma=_T, second_order=_T)
    ),
    SamplerSpec(
        "DPM2 a",
        ("k_dpm_2_a",),
        "karras",
        _ro(scheduler="karras", discard_next_to_last_sigma=_T, uses_ensd=_T, second_order=_T),
    ),
    SamplerSpec("DPM fast", ("k_dpm_fast",), "automatic", _ro(uses_ensd=_T)),
    SamplerSpec("DPM adaptive", ("k_dpm_ad",), "automatic", _ro(uses_ensd=_T)),
    SamplerSpec("Restart", ("restart",), "karras", _ro(scheduler="karras", second_order=_T)),
    SamplerSpec("DDIM", ("ddim",), "automatic", timestep_sampler=True),
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), "automatic", timestep_sampler=True),
    SamplerSpec("PLMS", ("plms",), "automatic", timestep_sampler=True),
    SamplerSpec("UniPC", ("unipc",), "automatic", timestep_sampler=True),
    SamplerSpec("LCM", ("k_lcm",), "automatic"),
)


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
        why = f"needs {', '.join(sampler.requires)}"
        raise InvalidRequestError(f"Sampler {sampler.name!r} {why}; available samplers: {names}")
    if schedule.name == "automatic" and sampler.default_schedule != "automatic":
        schedule = find_schedule(sampler.default_schedule) or schedule
    return sampler, schedule


def sampler_list() -> list[dict[str, object]]:
    """Return the usable samplers in A1111's UI order, shaped as ``/sdapi/v1/samplers`` items."""
    return [s.to_api() for s in SAMPLERS if s.usable]


def schedule_list() -> list[dict[str, object]]:
    """Return every schedule type shaped as ``/sdapi/v1/schedulers`` items."""
    return [s.to_api() for s in SCHEDULES]
