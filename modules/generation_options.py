"""The engine's per-job options (``GenerationOptions``) from a settings snapshot: the A1111 options a job reads."""

from __future__ import annotations

import dataclasses

from modules.engine.types import GenerationOptions, PreviewSettings, SamplerSettings
from modules.settings import Settings
from modules.version import INFOTEXT_VERSION


def generation_options(settings: Settings) -> GenerationOptions:
    """Clip skip, ENSD, RNG, emphasis, sampler parameters, VAE, live previews and tiling of one job."""
    return GenerationOptions(
        clip_skip=settings.CLIP_stop_at_last_layers,
        eta_noise_seed_delta=settings.eta_noise_seed_delta,
        randn_source=settings.randn_source,
        emphasis=settings.emphasis,
        comma_padding_backtrack=settings.comma_padding_backtrack,
        version=INFOTEXT_VERSION,
        use_old_scheduling=settings.use_old_scheduling,
        sampler=sampler_settings(settings),
        vae=settings.sd_vae,
        preview=preview_settings(settings),
        tiling=settings.tiling,
    )


def sampler_settings(settings: Settings) -> SamplerSettings:
    """The engine's sampler parameters from the settings of the same names."""
    return SamplerSettings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(SamplerSettings)})


def preview_settings(settings: Settings) -> PreviewSettings:
    """The engine's live-preview settings (``live_previews_enable`` off: none; a period of -1: one per batch)."""
    every = settings.show_progress_every_n_steps if settings.live_previews_enable else 0
    return PreviewSettings(
        every_n_steps=every,
        method=settings.show_progress_type,
        content=settings.live_preview_content,
        grid=settings.show_progress_grid,
    )
