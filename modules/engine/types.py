"""Plain dataclasses and enums shared by the engine and its callers: requests, results, checkpoints, model types.

This module imports no ML library at run time, so the UI and API layers can use it cheaply.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from modules.engine.files import write_text_atomic

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL import Image

logger = logging.getLogger(__name__)


# Hires. fix latent upscalers, in A1111's order (``/sdapi/v1/latent-upscale-modes``).
LATENT_UPSCALE_MODES: tuple[str, ...] = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)


class ModelType(str, enum.Enum):
    """Architecture family of a checkpoint, as told from its tensor names and shapes."""

    SD1 = "sd1"
    SD1_INPAINT = "sd1-inpaint"
    SD1_PIX2PIX = "sd1-pix2pix"
    SD2 = "sd2"
    SD2_INPAINT = "sd2-inpaint"
    SDXL = "sdxl"
    SDXL_INPAINT = "sdxl-inpaint"
    SDXL_REFINER = "sdxl-refiner"

    @property
    def is_sdxl(self) -> bool:
        """Whether the model uses the SGM/SDXL conditioner (two text encoders or the refiner's one)."""
        return self in (ModelType.SDXL, ModelType.SDXL_INPAINT, ModelType.SDXL_REFINER)

    @property
    def is_inpaint(self) -> bool:
        """Whether the UNet takes 9 input channels (latent + mask + masked-image latent)."""
        return self in (ModelType.SD1_INPAINT, ModelType.SD2_INPAINT, ModelType.SDXL_INPAINT)

    @property
    def is_edit(self) -> bool:
        """Whether the UNet takes 8 input channels (latent + source-image latent): instruct-pix2pix."""
        return self is ModelType.SD1_PIX2PIX


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One checkpoint file on disk, named the way A1111 names it.

    Attributes:
        filename: Absolute path of the file.
        name: Path relative to its checkpoint directory with ``/`` separators, e.g. ``sdxl/foo.safetensors``.
        sha256: Full SHA-256 hex digest of the file, or None while it has not been hashed.
        config: Path of the ``<stem>.yaml`` beside the file, or None.
    """

    filename: Path
    name: str
    sha256: str | None = None
    config: Path | None = None

    @property
    def model_name(self) -> str:
        """``name`` without its extension, ``/`` replaced by ``_`` (A1111's ``model_name``)."""
        return self.name.rsplit(".", 1)[0].replace("/", "_").replace("\\", "_")

    @property
    def name_for_extra(self) -> str:
        """Base name without extension: what infotext writes as ``Model``."""
        return Path(self.name).stem

    @property
    def shorthash(self) -> str | None:
        """First 10 hex digits of the SHA-256 (A1111's ``Model hash``), or None if not hashed yet."""
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        """``name [shorthash]`` once hashed, else just ``name`` (A1111's title)."""
        return f"{self.name} [{self.shorthash}]" if self.sha256 else self.name


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One txt2img/img2img job, with A1111's field names and UI defaults.

    Per-job settings that A1111 keeps in ``opts`` (clip skip, ENSD, RNG source…) are in ``GenerationOptions``.
    """

    prompt: str = ""
    negative_prompt: str = ""
    styles: tuple[str, ...] = ()
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    denoising_strength: float = 0.75
    # img2img / inpainting (A1111 names; UI defaults)
    init_images: tuple[Image.Image, ...] = ()
    mask: Image.Image | None = None
    resize_mode: int = 0  # 0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale)
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 1  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # True = "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0  # 1 = inpaint not masked
    initial_noise_multiplier: float = 1.0
    image_cfg_scale: float | None = None
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # SDXL refiner
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    # sampler parameters; None = the setting of the same name (A1111: eta_ancestral / eta_ddim for eta)
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    s_min_uncond: float | None = None
    # selectable img2img script (A1111's script_name / script_args), e.g. "Poor man's outpainting"
    script_name: str = ""
    script_args: tuple[object, ...] = ()

    @property
    def mode(self) -> str:
        """``"img2img"`` when init images are given, else ``"txt2img"``."""
        return "img2img" if self.init_images else "txt2img"


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    """A1111's sampler options (Settings → Sampler parameters); a request's ``eta`` and ``s_*`` fields win over them.

    Attributes:
        eta_ddim: η of DDIM / DDIM CFG++ (0: deterministic).
        eta_ancestral: η of the ancestral and SDE samplers.
        s_churn, s_tmin, s_tmax, s_noise: Karras et al.'s churn parameters (``s_tmax`` 0 means infinity).
        sigma_min, sigma_max: Schedule range overrides; 0 keeps the model's own.
        rho: Karras / polyexponential ρ override; 0 keeps the schedule's default.
        always_discard_next_to_last_sigma: Drop the penultimate σ for every sampler.
        beta_dist_alpha, beta_dist_beta: Shape of the "Beta" schedule.
        uni_pc_variant, uni_pc_skip_type, uni_pc_order, uni_pc_lower_order_final: UniPC's options.
        s_min_uncond: Negative Guidance minimum sigma (NGMS; 0 = off).
        s_min_uncond_all: NGMS skips the uncond pass on every step below it, not every other one.
    """

    eta_ddim: float = 0.0
    eta_ancestral: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False


@dataclass(frozen=True, slots=True)
class PreviewSettings:
    """Live previews (A1111's settings; engine/previews.py).

    Attributes:
        every_n_steps: ``show_progress_every_n_steps``: steps between previews; 0: none (``live_previews_enable``
            off); -1: one of each finished batch, none while sampling (A1111's).
        method: ``show_progress_type``: ``Full``, ``Approx NN``, ``Approx cheap`` or ``TAESD``.
        content: ``live_preview_content``: ``Combined``, ``Prompt`` or ``Negative prompt``.
        grid: ``show_progress_grid``: the whole batch in a grid, else its first image.
    """

    every_n_steps: int = 10
    method: str = "Approx NN"
    content: str = "Prompt"
    grid: bool = True


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Settings that shape a generation but are not request fields in A1111 (they live in its options).

    Attributes:
        clip_skip: ``CLIP_stop_at_last_layers``; 1 = the last layer.
        eta_noise_seed_delta: ENSD, added to the seed for sampler noise after the first draw.
        randn_source: ``"GPU"``, ``"CPU"`` or ``"NV"``.
        emphasis: ``"Original"``, ``"No norm"``, ``"Ignore"`` or ``"None"``.
        comma_padding_backtrack: Tokens to look back for a comma when a 75-token chunk fills up.
        version: Written as ``Version`` in the infotext.
        use_old_scheduling: A1111's old prompt-editing timelines (``when`` below 1 is a fraction, else a step).
        sampler: Sampler parameters from the settings.
        vae: ``sd_vae``: ``Automatic``, ``None`` or a file name of ``models/VAE`` (engine/vae_files.py).
        preview: Live previews (drawn only while the job's owner asks for them).
        tiling: Seamlessly tileable images (circular padding; engine/tiling.py).
    """

    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = "GPU"
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    version: str = ""
    use_old_scheduling: bool = False
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    vae: str = "Automatic"
    preview: PreviewSettings = field(default_factory=PreviewSettings)
    tiling: bool = False


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Progress of the running job, reported after each sampling step.

    ``job_no`` counts batches (0-based) out of ``job_count`` (= n_iter); ``step`` is 1-based within the batch.
    """

    step: int
    total_steps: int
    job_no: int
    job_count: int


class StepCallback(Protocol):
    """Called by the engine after each sampling step."""

    def __call__(self, info: StepInfo) -> None:
        """Receive the progress of the current job."""


@dataclass(slots=True)
class GenerationResult:
    """What a job produced: images with their seeds, prompts and infotexts (index-aligned).

    Attributes:
        images: Generated images, in order.
        infotexts: A1111 infotext per image.
        interrupted: True if the job was stopped early; ``images`` then holds what was finished.
    """

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    interrupted: bool = False
    job_timestamp: str = ""
    extra_generation_params: dict[str, object] = field(default_factory=dict)


PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class NetworkFile:
    """A LoRA or embedding file found in its folder: its name (file name without extension) and path."""

    name: str
    path: Path

    @property
    def stamp(self) -> tuple[str, int, int]:
        """Path, size and modification time: a file changed on disk counts as another network."""
        stat = self.path.stat()
        return str(self.path), stat.st_size, stat.st_mtime_ns

    def user_metadata(self) -> dict[str, object]:
        """A1111's ``<name>.json`` beside the file (``activation text``, ``preferred weight``, ``notes``…), or {}.

        A file that is not a JSON object is logged and read as empty: it must not hide the LoRA.
        """
        path = self.path.with_suffix(".json")
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("%s: not read (%s)", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def save_user_metadata(self, updates: Mapping[str, object]) -> Path:
        """Write ``updates`` into ``<name>.json`` (its other keys kept, the file replaced atomically); return its path.

        Raises:
            ValueError: The file is there but is not a JSON object; it is left as it is (the message says so).
        """
        path = self.path.with_suffix(".json")
        data: dict[str, object] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                message = f"{path.name} is not valid JSON ({exc}); it was left as it is: fix or remove it"
                raise ValueError(message) from exc
            if not isinstance(data, dict):
                raise ValueError(f"{path.name} does not hold a JSON object; it was left as it is: fix or remove it")
        data.update(updates)
        write_text_atomic(path, json.dumps(data, indent=4, ensure_ascii=False) + "\n")
        return path

    def preview(self) -> Path | None:
        """The card image A1111 shows: ``<name>.preview.png`` (or ``.png``/``.jpg``/``.jpeg``/``.webp``) beside it."""
        stem = self.path.with_suffix("")
        names = [f"{stem}.preview{ext}" for ext in PREVIEW_SUFFIXES] + [f"{stem}{ext}" for ext in PREVIEW_SUFFIXES]
        return next((Path(n) for n in names if Path(n).is_file()), None)

    def metadata(self) -> dict[str, str]:
        """The safetensors header's ``__metadata__`` (training parameters), empty when there is none.

        Raises:
            OSError: The file cannot be read.
            ValueError: It is not a safetensors file (the message names it).
        """
        with self.path.open("rb") as file:
            try:
                (length,) = struct.unpack("<Q", file.read(8))
                header = json.loads(file.read(length))
            except (struct.error, ValueError) as exc:
                raise ValueError(f"{self.path.name}: not a safetensors file ({exc})") from exc
        if not isinstance(header, dict):
            raise ValueError(f"{self.path.name}: not a safetensors file (its header is not an object)")
        return dict(header.get("__metadata__") or {})
