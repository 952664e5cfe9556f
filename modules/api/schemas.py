"""Hand-written pydantic models for /sdapi/v1 txt2img and img2img (A1111 field names and API defaults).

Request models ignore unknown keys (``extra="ignore"``): real clients send legacy fields such as ``sampler_index``
or ``firstphase_width``. Defaults are A1111's *API* defaults (a1111-compat.md §2.3), which differ from the UI's:
50 steps, the ``Euler`` sampler through ``sampler_index``, and ``save_images`` false.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from modules.api.images import decode_base64_image
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# img2img fields passed on to GenerationRequest once the engine grows them (checked by name, not by reflection).
_IMG2IMG_PASSTHROUGH = (
    "resize_mode",
    "image_cfg_scale",
    "mask_blur_x",
    "mask_blur_y",
    "mask_round",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "initial_noise_multiplier",
)


class GenerationFields(BaseModel):
    """Fields shared by txt2img and img2img (A1111's StableDiffusionProcessing plus the API extras)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, description="Sampler name or alias; null means sampler_index")
    sampler_index: str = Field("Euler", description="Legacy sampler field, used when sampler_name is null")
    scheduler: str | None = Field(None, description="Schedule type label or name; null means Automatic")
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None
    infotext: str | None = None

    @property
    def effective_sampler(self) -> str:
        """``sampler_name``, or the legacy ``sampler_index`` when it is null or empty."""
        return self.sampler_name or self.sampler_index

    script_titles: ClassVar[tuple[str, ...]] = ()

    def check_supported(self) -> None:
        """Reject features this server does not have; log accepted-but-ignored ones.

        Raises:
            InvalidRequestError: For an unknown ``script_name``.
        """
        if self.script_name and self.script_name.lower() not in self.script_titles:
            known = ", ".join(self.script_titles) or "none for this endpoint"
            raise InvalidRequestError(f"script_name {self.script_name!r} not found; scripts here: {known}")
        ignored = ["restore_faces"] if self.restore_faces else []
        if self.alwayson_scripts:
            ignored.append(f"alwayson_scripts ({', '.join(sorted(self.alwayson_scripts))})")
        if ignored:
            logger.info("Ignoring request fields with no effect here: %s", ", ".join(ignored))

    def _request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of GenerationRequest common to both modes."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "styles": tuple(self.styles or ()),
            "seed": self.seed,
            "subseed": self.subseed,
            "subseed_strength": self.subseed_strength,
            "seed_resize_from_h": self.seed_resize_from_h,
            "seed_resize_from_w": self.seed_resize_from_w,
            "sampler_name": self.effective_sampler,
            "scheduler": self.scheduler or "Automatic",
            "batch_size": self.batch_size,
            "n_iter": self.n_iter,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "width": self.width,
            "height": self.height,
            "denoising_strength": self.denoising_strength,
            "refiner_checkpoint": self.refiner_checkpoint,
            "refiner_switch_at": 0.8 if self.refiner_switch_at is None else self.refiner_switch_at,
            "eta": self.eta,
            "s_churn": self.s_churn,
            "s_tmin": self.s_tmin,
            "s_tmax": self.s_tmax,
            "s_noise": self.s_noise,
            "s_min_uncond": self.s_min_uncond,
        }

    def echo(self) -> dict[str, Any]:
        """The request with defaults filled, for the response's ``parameters`` (sampler_name resolved)."""
        data = self.model_dump()
        data["sampler_name"] = self.effective_sampler
        return data


class TextToImageRequest(GenerationFields):
    """``POST /sdapi/v1/txt2img`` body."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstpass_image: str | None = None

    def to_request(self) -> GenerationRequest:
        """Convert to the engine's GenerationRequest (a field copy; ``hr_upscaler`` null = ``Latent``)."""
        return GenerationRequest(
            **self._request_kwargs(),
            enable_hr=self.enable_hr,
            hr_scale=self.hr_scale,
            hr_upscaler=self.hr_upscaler or "Latent",
            hr_second_pass_steps=self.hr_second_pass_steps,
            hr_resize_x=self.hr_resize_x,
            hr_resize_y=self.hr_resize_y,
            hr_checkpoint_name=self.hr_checkpoint_name,
            hr_sampler_name=self.hr_sampler_name,
            hr_scheduler=self.hr_scheduler,
            hr_prompt=self.hr_prompt,
            hr_negative_prompt=self.hr_negative_prompt,
        )


class ImageToImageRequest(GenerationFields):
    """``POST /sdapi/v1/img2img`` body."""

    script_titles: ClassVar[tuple[str, ...]] = ("poor man's outpainting", "outpainting mk2")

    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    def decode_images(self) -> tuple[tuple[Image.Image, ...], Image.Image | None]:
        """Decode ``init_images`` and ``mask``.

        Raises:
            InvalidRequestError: An image is not valid base64 / not an image.
        """
        images = tuple(decode_base64_image(data, f"init_images[{i}]") for i, data in enumerate(self.init_images or ()))
        mask = decode_base64_image(self.mask, "mask") if self.mask else None
        return images, mask

    def to_request(self) -> GenerationRequest:
        """Convert to the engine's GenerationRequest, decoding the images.

        Raises:
            InvalidRequestError: An image is not valid base64 / not an image.
        """
        images, mask = self.decode_images()
        kwargs = self._request_kwargs()
        kwargs.update(init_images=images, mask=mask)
        values = self.model_dump(include=set(_IMG2IMG_PASSTHROUGH))
        if self.mask_blur is not None:
            values["mask_blur_x"] = values["mask_blur_y"] = self.mask_blur
        known = GenerationRequest.__dataclass_fields__
        kwargs.update({k: v for k, v in values.items() if k in known and v is not None})
        if self.script_name:
            kwargs.update(script_name=self.script_name, script_args=tuple(self.script_args))
        return GenerationRequest(**kwargs)

    def echo(self) -> dict[str, Any]:
        """As the base class; ``init_images`` and ``mask`` are blanked unless ``include_init_images`` (A1111)."""
        data = super().echo()
        if not self.include_init_images:
            data["init_images"], data["mask"] = [], None
        return data


class ImageResponse(BaseModel):
    """txt2img / img2img response: base64 images, the echoed request, and ``info`` as a JSON string."""

    images: list[str] = Field(default_factory=list, description="Base64 images (grid first when returned)")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The request, defaults filled")
    info: str = Field("", description="JSON-encoded object with seeds, infotexts, model name…")
