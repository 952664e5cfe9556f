"""generation_options: a settings snapshot becomes the engine's per-job options."""

from modules.engine.types import PreviewSettings
from modules.generation_options import generation_options
from modules.settings import Settings


def test_the_jobs_options_follow_the_settings():
    options = generation_options(Settings(CLIP_stop_at_last_layers=2, tiling=True, eta_ancestral=0.5, sd_vae="None"))
    assert (options.clip_skip, options.tiling, options.sampler.eta_ancestral, options.vae) == (2, True, 0.5, "None")
    assert options.preview == PreviewSettings(every_n_steps=10, method="Approx NN", content="Prompt", grid=True)
    settings = Settings(show_progress_every_n_steps=-1, show_progress_type="Full", show_progress_grid=False)
    assert generation_options(settings).preview == PreviewSettings(-1, "Full", "Prompt", False)  # -1: per batch
    assert generation_options(Settings(live_previews_enable=False)).preview.every_n_steps == 0  # off: none at all
