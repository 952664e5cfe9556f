"""What the engine needs from the job running it: progress and live previews out, stop/skip requests in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from modules.engine.loader import LoadedModel
from modules.engine.rng import NoiseSpec
from modules.engine.types import GenerationOptions, GenerationRequest


class JobControls(Protocol):
    """What the engine needs from the job running it: progress and live previews out, stop/skip requests in."""

    def report(self, step: int, total_steps: int, job_no: int = 0, job_count: int = 1) -> None:
        """Record progress after a sampling step."""

    def should_stop(self) -> bool:
        """Whether the whole job should stop."""

    def should_skip(self) -> bool:
        """Whether the current batch should be abandoned."""

    def should_stop_after_batch(self) -> bool:
        """Whether the job should start no further batch (the current one finishes)."""

    def clear_skip(self) -> None:
        """Reset the skip request at the start of a batch."""

    def preview_wanted(self) -> bool:
        """Whether someone watches the job now, so that live previews are worth drawing."""

    def show_preview(self, image: Image.Image, step: int) -> None:
        """Take the live preview drawn after sampling step ``step``."""


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

    def should_stop_after_batch(self) -> bool:
        """Never stop."""
        return False

    def clear_skip(self) -> None:
        """Nothing to clear."""

    def preview_wanted(self) -> bool:
        """Nobody watches."""
        return False

    def show_preview(self, image: Image.Image, step: int) -> None:
        """Ignore previews."""


def noise_spec(model: LoadedModel, request: GenerationRequest, options: GenerationOptions) -> NoiseSpec:
    """Latent noise shape (4 channels, also for 9-channel inpainting and 8-channel instruct-pix2pix UNets)."""
    kind = model.model_type
    channels = model.components.unet.config.in_channels if not (kind.is_inpaint or kind.is_edit) else 4
    shape = (channels, request.height // 8, request.width // 8)
    return NoiseSpec(shape, torch.device(model.device), options.randn_source)
