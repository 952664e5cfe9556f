"""What the engine needs from the job running it (progress, stop/skip), and the per-step callback it builds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modules.engine.loader import LoadedModel
from modules.engine.rng import NoiseSpec
from modules.engine.types import GenerationOptions, GenerationRequest, StepInfo


class JobControls(Protocol):
    """What the engine needs from the job running it: progress out, stop/skip requests in."""

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Record progress after a sampling step."""

    def should_stop(self) -> bool:
        """Whether the whole job should stop."""

    def should_skip(self) -> bool:
        """Whether the current batch should be abandoned."""

    def clear_skip(self) -> None:
        """Reset the skip request at the start of a batch."""


@dataclass
class NoControls:
    """Controls for callers that need no progress or cancellation (tests, scripts)."""

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Ignore progress."""

    def should_stop(self) -> bool:
        """Never stop."""
        return False

    def should_skip(self) -> bool:
        """Never skip."""
        return False

    def clear_skip(self) -> None:
        """Nothing to clear."""


def noise_spec(model: LoadedModel, request: GenerationRequest, options: GenerationOptions) -> NoiseSpec:
    """Latent noise shape (4 channels, also for 9-channel inpainting and 8-channel instruct-pix2pix UNets)."""
    kind = model.model_type
    channels = model.components.unet.config.in_channels if not (kind.is_inpaint or kind.is_edit) else 4
    shape = (channels, request.height // 8, request.width // 8)
    return NoiseSpec(shape, torch.device(model.device), options.randn_source)


def step_callback(
    controls: JobControls,
    total: int,
    job_no: int,
    job_count: int,
    on_step: Callable[[StepInfo], None] | None,
    offset: int = 0,
) -> Callable[..., dict[str, Any]]:
    """Build the per-step callback (``callback_on_step_end``'s signature): report progress, stop on interrupt or skip.

    ``offset`` counts steps already done in this batch (the first pass, when this is the hires pass).
    """

    def step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        controls.report(offset + i + 1, total, job_no, job_count)
        if on_step is not None:
            on_step(StepInfo(offset + i + 1, total, job_no, job_count))
        if controls.should_stop() or controls.should_skip():
            p._interrupt = True
        return {}

    return step_end
