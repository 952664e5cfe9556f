"""Range checks of a GenerationRequest, with messages that name the field and what is allowed."""

from __future__ import annotations

from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

MAX_SIDE = 4096
MAX_STEPS = 500
MAX_BATCH_SIZE = 64
MAX_N_ITER = 1000

# field → (minimum, maximum) for plain numeric ranges.
_RANGES: dict[str, tuple[float, float]] = {
    "steps": (1, MAX_STEPS),
    "batch_size": (1, MAX_BATCH_SIZE),
    "n_iter": (1, MAX_N_ITER),
    "cfg_scale": (0.0, 100.0),
    "denoising_strength": (0.0, 1.0),
    "subseed_strength": (0.0, 1.0),
}
# Optional fields (None = the setting of the same name), with the ranges of those settings: an η above 1 would
# ask DDIM for more noise than the step has (NaN images).
_OPTIONAL_RANGES: dict[str, tuple[float, float]] = {
    "image_cfg_scale": (0.0, 100.0),
    "eta": (0.0, 1.0),
    "s_churn": (0.0, 100.0),
    "s_tmin": (0.0, 10.0),
    "s_tmax": (0.0, 999.0),
    "s_noise": (0.0, 1.1),
    "s_min_uncond": (0.0, 15.0),
}


def validate_request(request: GenerationRequest) -> None:
    """Raise InvalidRequestError listing every out-of-range field of ``request``.

    >>> validate_request(GenerationRequest(width=512, height=512))
    >>> validate_request(GenerationRequest(width=500))
    Traceback (most recent call last):
    ...
    modules.errors.InvalidRequestError: width must be a multiple of 8 between 64 and 4096, got 500
    """
    problems: list[str] = []
    for name in ("width", "height"):
        value = getattr(request, name)
        if not isinstance(value, int) or value % 8 or not 64 <= value <= MAX_SIDE:
            problems.append(f"{name} must be a multiple of 8 between 64 and {MAX_SIDE}, got {value}")
    for name, (lo, hi) in _RANGES.items():
        value = getattr(request, name)
        if not isinstance(value, (int, float)) or not lo <= value <= hi:
            problems.append(f"{name} must be between {lo:g} and {hi:g}, got {value}")
    for name, (lo, hi) in _OPTIONAL_RANGES.items():
        value = getattr(request, name)
        if value is not None and (not isinstance(value, (int, float)) or not lo <= value <= hi):
            problems.append(f"{name} must be between {lo:g} and {hi:g}, got {value}")
    if problems:
        raise InvalidRequestError("; ".join(problems))
