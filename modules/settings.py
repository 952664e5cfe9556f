"""Settings: one frozen pydantic model of the runtime options (A1111 option names), with load/save/with_overrides.

Precedence: field defaults < ``config.json`` < command-line flags (applied by the composition root). A ``Settings``
object is never mutated: a change makes a new validated object that the app context swaps in.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules.errors import SettingsError

logger = logging.getLogger(__name__)

# A1111 option keys we accept (so clients and old config.json files work) but do not implement yet.
IGNORED_A1111_OPTIONS: frozenset[str] = frozenset(
    {
        "sd_vae_as_default",
        "sd_unet",
        "inpainting_mask_weight",
        "initial_noise_multiplier",
        "img2img_color_correction",
        "img2img_fix_steps",
        "enable_quantization",
        "enable_emphasis",
        "enable_batch_seeds",
        "use_old_emphasis_implementation",
        "upcast_attn",
        "auto_vae_precision",
        "auto_vae_precision_bfloat16",
        "sdxl_crop_top",
        "sdxl_crop_left",
        "sdxl_refiner_low_aesthetic_score",
        "sdxl_refiner_high_aesthetic_score",
        "sd_checkpoint_cache",
        "sd_vae_checkpoint_cache",
        "face_restoration",
        "face_restoration_model",
        "code_former_weight",
        "face_restoration_unload",
        "show_progressbar",
        "export_for_4chan",
        "img_downscale_threshold",
        "target_side_length",
        "img_max_size_mp",
        "use_original_name_batch",
        "use_upscaler_name_as_suffix",
        "save_selected_only",
        "save_init_img",
        "temp_dir",
        "clean_temp_dir_at_start",
        "save_incomplete_images",
        "notification_audio",
        "notification_volume",
        "grid_extended_filename",
        "grid_only_if_multiple",
        "grid_prevent_empty_spots",
        "grid_zip_filename_pattern",
        "n_rows",
        "font",
        "grid_text_active_color",
        "grid_text_inactive_color",
        "grid_background_color",
        "save_images_before_face_restoration",
        "save_images_before_highres_fix",
        "save_images_before_color_correction",
        "save_mask",
        "save_mask_composite",
        "webp_lossless",
        "save_log_fields",
        "save_images_add_number",
        "save_images_replace_action",
        "ESRGAN_tile",
        "ESRGAN_tile_overlap",
        "realesrgan_enabled_models",
        "upscaler_for_img2img",
        "dont_fix_second_order_samplers_schedule",
        "hires_fix_refiner_pass",
        "multiple_tqdm",
        "print_hypernet_extra",
        "list_hidden_files",
        "disable_mmap_load_safetensors",
        "hide_ldm_prints",
        "dump_stacks_on_signal",
        "quicksettings_list",
        "ui_reorder_list",
        "localization",
        "gradio_theme",
        "hires_fix_show_sampler",
        "hires_fix_show_prompts",
        "disable_token_counters",
        "extra_options_txt2img",
        "extra_options_img2img",
        "return_mask",
        "return_mask_composite",
        "samplers_in_dropdown",
        "dimensions_and_batch_together",
        "keyedit_precision_attention",
        "keyedit_precision_extra",
        "keyedit_delimiters",
        "js_modal_lightbox",
        "js_modal_lightbox_initially_zoomed",
        "show_warnings",
        "ddim_discretize",
        "k_sched_type",
        "sgm_noise_multiplier",
        "sd_noise_schedule",
        "token_merging_ratio",
        "token_merging_ratio_img2img",
        "token_merging_ratio_hr",
        "pad_cond_uncond",
        "pad_cond_uncond_v0",
        "persistent_cond_cache",
        "batch_cond_uncond",
        "fp8_storage",
        "cache_fp16_weight",
        "sd_lora",
        "lora_preferred_name",
        "lora_add_hashes_to_infotext",
        "sd_hypernetwork",
        "disable_weights_auto_swap",
        "infotext_styles",
        "infotext_skip_pasting",
        "add_model_hash_to_info",
        "add_model_name_to_info",
        "add_user_name_to_info",
        "add_version_to_infotext",
        "interrogate_keep_models_in_memory",
        "enable_console_prompts",
        "memmon_poll_rate",
        "samples_log_stdout",
        "api_enable_requests",
        "api_forbid_local_requests",
        "api_useragent",
        "auto_backcompat",
        "use_old_karras_scheduler_sigmas",
        "no_dpmpp_sde_batch_determinism",
        "use_old_hires_fix_width_height",
        "sdxl_clip_l_skip",
        "outdir_init_images",
        "enable_reloading_ui_scripts",
        "sd_checkpoint_hash",
        "directories_max_prompt_words",
        "sd_vae_overrides_per_model_preferences",
        "sd_vae_encode_method",
        "sd_vae_decode_method",
        "hires_fix_use_firstpass_conds",
        "use_downcasted_alpha_bar",
        "refiner_switch_by_sample_steps",
        "set_scale_by_when_changing_upscaler",
    }
)


def _opt(default: Any, label: str, section: str, **kw: Any) -> Any:
    """Build a Field with a UI label and section kept as plain data (the UI picks the widget)."""
    return Field(default, description=label, json_schema_extra={"section": section}, **kw)


class Settings(BaseModel):
    """Runtime options, A1111 names. UI hints live in ``json_schema_extra`` (``section``); no widgets here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sd_model_checkpoint: str = _opt("", "Stable Diffusion checkpoint", "sd")
    CLIP_stop_at_last_layers: int = _opt(1, "Clip skip", "sd", ge=1, le=12)
    sd_vae: str = _opt("Automatic", "SD VAE", "sd")
    sd_checkpoints_limit: int = _opt(1, "Maximum number of checkpoints loaded at the same time", "sd", ge=1, le=10)
    emphasis: Literal["Original", "No norm", "Ignore", "None"] = _opt("Original", "Emphasis mode", "sd")
    comma_padding_backtrack: int = _opt(20, "Prompt word wrap length limit", "sd", ge=0, le=74)
    randn_source: Literal["GPU", "CPU", "NV"] = _opt("GPU", "Random number generator source", "sd")
    tiling: bool = _opt(False, "Tiling: produce a picture that repeats seamlessly (circular padding)", "sd")
    compile_unet: bool = _opt(
        False, "Compile the UNet with torch.compile (CUDA; in the background, cached on disk; reloads the model)", "sd"
    )
    eta_noise_seed_delta: int = _opt(0, "Eta noise seed delta", "sampler", ge=0)
    eta_ddim: float = _opt(0.0, "Eta for DDIM", "sampler", ge=0.0, le=1.0)
    eta_ancestral: float = _opt(1.0, "Eta for k-diffusion samplers", "sampler", ge=0.0, le=1.0)
    s_churn: float = _opt(0.0, "sigma churn", "sampler", ge=0.0, le=100.0)
    s_tmin: float = _opt(0.0, "sigma tmin", "sampler", ge=0.0, le=10.0)
    s_tmax: float = _opt(0.0, "sigma tmax (0 = infinity)", "sampler", ge=0.0, le=999.0)
    s_noise: float = _opt(1.0, "sigma noise", "sampler", ge=0.0, le=1.1)
    sigma_min: float = _opt(0.0, "sigma min (0 = model's)", "sampler", ge=0.0)
    sigma_max: float = _opt(0.0, "sigma max (0 = model's)", "sampler", ge=0.0)
    rho: float = _opt(0.0, "rho (0 = the schedule's default)", "sampler", ge=0.0)
    always_discard_next_to_last_sigma: bool = _opt(False, "Always discard next-to-last sigma", "sampler")
    beta_dist_alpha: float = _opt(0.6, "Beta scheduler - alpha", "sampler", gt=0.0, le=1.0)
    beta_dist_beta: float = _opt(0.6, "Beta scheduler - beta", "sampler", gt=0.0, le=1.0)
    uni_pc_variant: Literal["bh1", "bh2", "vary_coeff"] = _opt("bh1", "UniPC variant", "sampler")
    uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"] = _opt(
        "time_uniform", "UniPC skip type", "sampler"
    )
    uni_pc_order: int = _opt(3, "UniPC order", "sampler", ge=1, le=50)
    uni_pc_lower_order_final: bool = _opt(True, "UniPC lower order final", "sampler")
    s_min_uncond: float = _opt(0.0, "Negative Guidance minimum sigma", "sampler", ge=0.0, le=15.0)
    s_min_uncond_all: bool = _opt(False, "Negative Guidance minimum sigma all steps", "sampler")
    use_old_scheduling: bool = _opt(False, "Use old prompt editing timelines", "compatibility")
    samples_save: bool = _opt(True, "Always save all generated images", "saving")
    samples_format: Literal["png", "jpg", "jpeg", "webp"] = _opt("png", "File format for images", "saving")
    samples_filename_pattern: str = _opt("", "Images filename pattern", "saving")
    grid_save: bool = _opt(True, "Always save all generated image grids", "saving")
    grid_format: Literal["png", "jpg", "jpeg", "webp"] = _opt("png", "File format for grids", "saving")
    return_grid: bool = _opt(True, "Show grid in gallery", "saving")
    enable_pnginfo: bool = _opt(
        True, "Save text information about generation parameters as chunks to png files", "saving"
    )
    save_txt: bool = _opt(False, "Create a text file with generation parameters next to every image", "saving")
    jpeg_quality: int = _opt(80, "Quality for saved jpeg and webp images", "saving", ge=1, le=100)
    save_to_dirs: bool = _opt(True, "Save images to a subdirectory", "saving_paths")
    grid_save_to_dirs: bool = _opt(True, "Save grids to a subdirectory", "saving_paths")
    directories_filename_pattern: str = _opt("[date]", "Directory name pattern", "saving_paths")
    outdir_samples: str = _opt(
        "", "Output directory for images; if empty, defaults to three directories below", "saving_paths"
    )
    outdir_txt2img_samples: str = _opt("outputs/txt2img-images", "Output directory for txt2img images", "saving_paths")
    outdir_img2img_samples: str = _opt("outputs/img2img-images", "Output directory for img2img images", "saving_paths")
    outdir_extras_samples: str = _opt(
        "outputs/extras-images", "Output directory for images from extras tab", "saving_paths"
    )
    outdir_grids: str = _opt(
        "", "Output directory for grids; if empty, defaults to two directories below", "saving_paths"
    )
    outdir_txt2img_grids: str = _opt("outputs/txt2img-grids", "Output directory for txt2img grids", "saving_paths")
    outdir_img2img_grids: str = _opt("outputs/img2img-grids", "Output directory for img2img grids", "saving_paths")
    outdir_save: str = _opt("log/images", "Directory for saving images using the Save button", "saving_paths")
    interrupt_after_current: bool = _opt(
        True, "Don't Interrupt in the middle (with several batches, Interrupt lets the current one finish)", "ui"
    )
    send_seed: bool = _opt(True, "Send seed when sending prompt or image to other interface", "ui")
    send_size: bool = _opt(True, "Send size when sending prompt or image to another interface", "ui")
    live_previews_enable: bool = _opt(True, "Show live previews of the created image", "live_previews")
    live_previews_image_format: Literal["png", "jpeg", "webp"] = _opt(
        "png", "Live preview file format", "live_previews"
    )
    show_progress_grid: bool = _opt(True, "Show previews of all images generated in a batch as a grid", "live_previews")
    show_progress_every_n_steps: int = _opt(
        10,
        "Live preview display period (in sampling steps; -1: only after a batch is done)",
        "live_previews",
        ge=-1,
        le=32,
    )
    show_progress_type: Literal["Full", "Approx NN", "Approx cheap", "TAESD"] = _opt(
        "Approx NN", "Live preview method (Approx NN and TAESD draw as Approx cheap here)", "live_previews"
    )
    live_preview_content: Literal["Combined", "Prompt", "Negative prompt"] = _opt(
        "Prompt", "Live preview subject", "live_previews"
    )
    live_preview_refresh_period: float = _opt(
        1000, "Progressbar and preview update period (ms)", "live_previews", ge=100, le=10000
    )

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Read ``config.json``; unknown/ignored A1111 keys are dropped with a log line, bad values are reset.

        A missing file gives the defaults. A corrupt file is kept untouched (renamed aside) and defaults are used.
        """
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as exc:
            backup = path.with_name(path.name + ".corrupt")
            logger.warning("Could not read %s (%s); moved it to %s and using defaults", path, exc, backup.name)
            path.replace(backup)
            return cls()
        known = {k: v for k, v in data.items() if k in cls.model_fields}
        good: dict[str, Any] = {}
        for key, value in known.items():
            try:
                cls.model_validate({key: value})
                good[key] = value
            except ValidationError:
                logger.warning("Ignoring invalid value for %s in %s: %r", key, path.name, value)
        return cls(**good)

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically, keeping keys of the existing file that this app does not use."""
        existing: dict[str, Any] = {}
        if path.exists():
            try:
                existing = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                existing = {}
        existing.update(self.model_dump())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(existing, fh, indent=4, ensure_ascii=False)
        Path(tmp).replace(path)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Return a copy with ``overrides`` applied and validated.

        Keys of A1111 options we do not implement are ignored (logged); any other unknown key is an error.

        Raises:
            SettingsError: Naming each unknown key, or the field and reason of an invalid value.
        """
        unknown = [k for k in overrides if k not in self.model_fields and k not in IGNORED_A1111_OPTIONS]
        if unknown:
            raise SettingsError(f"Unknown setting(s): {', '.join(sorted(unknown))}")
        ignored = sorted(k for k in overrides if k not in self.model_fields)
        if ignored:
            logger.info("Ignoring A1111 settings that have no effect here: %s", ", ".join(ignored))
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if k in self.model_fields})
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise SettingsError(f"Invalid setting value: {msgs}") from exc


# Infotext fields (``infotext_to_request_fields`` names) whose setting has another name; the rest share the name.
INFOTEXT_SETTING_NAMES: Mapping[str, str] = MappingProxyType({"clip_skip": "CLIP_stop_at_last_layers"})


def infotext_settings(fields: Mapping[str, Any], request_fields: Collection[str]) -> dict[str, Any]:
    """The settings a pasted infotext carries (A1111's "override settings"), by setting key.

    Every field that is not one of ``request_fields`` and names a setting counts: ``clip_skip`` as
    ``CLIP_stop_at_last_layers``, and ``eta_noise_seed_delta``, ``randn_source``, ``eta_ancestral``, ``s_churn``,
    ``uni_pc_order``… as they are.
    """
    out: dict[str, Any] = {}
    for name, value in fields.items():
        key = INFOTEXT_SETTING_NAMES.get(name, name)
        if name not in request_fields and key in Settings.model_fields:
            out[key] = value
    return out
