"""Hand-written pydantic models for the /sdapi/v1 state, PNG-info and listing endpoints (A1111 shapes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PNGInfoRequest(_Request):
    """``POST /sdapi/v1/png-info`` body."""

    image: str = Field(..., description="Base64 image (bare or data URI)")


class PNGInfoResponse(BaseModel):
    """The raw infotext, other text chunks, and the infotext parsed as A1111's reader does (string values)."""

    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressState(BaseModel):
    """A1111's ``state`` object inside the progress response."""

    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    """``GET /sdapi/v1/progress``."""

    progress: float = Field(0.0, description="0..1")
    eta_relative: float = Field(0.0, description="Estimated seconds left")
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: str | None = Field(None, description="Live preview (base64), when one exists")
    textinfo: str | None = None


class InternalProgressRequest(_Request):
    """``POST /internal/progress`` body (A1111's web page sends it): which task, and the preview it has."""

    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(BaseModel):
    """``POST /internal/progress``: where the task stands, and a newer live preview (a data URI) when there is one."""

    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None


class SDModelItem(BaseModel):
    """One checkpoint in ``GET /sdapi/v1/sd-models``."""

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    """One VAE in ``GET /sdapi/v1/sd-vae``."""

    model_name: str
    filename: str


class SamplerItem(BaseModel):
    """One sampler in ``GET /sdapi/v1/samplers``."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, str] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    """One schedule type in ``GET /sdapi/v1/schedulers``."""

    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    """One upscaler in ``GET /sdapi/v1/upscalers``."""

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class NameItem(BaseModel):
    """An item with a name only (``latent-upscale-modes``)."""

    name: str


class NamePathItem(BaseModel):
    """An item with a name and a path (hypernetworks)."""

    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    """One face restorer."""

    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    """One Real-ESRGAN model."""

    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(BaseModel):
    """One saved prompt style."""

    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class LoraItem(BaseModel):
    """One LoRA (``GET /sdapi/v1/loras``)."""

    name: str
    alias: str | None = None
    path: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingsResponse(BaseModel):
    """``GET /sdapi/v1/embeddings``."""

    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)


class ScriptsList(BaseModel):
    """``GET /sdapi/v1/scripts``: selectable script names per tab."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptInfo(BaseModel):
    """One script in ``GET /sdapi/v1/script-info``."""

    name: str
    is_alwayson: bool = False
    is_img2img: bool = False
    args: list[dict[str, Any]] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    """One extension in ``GET /sdapi/v1/extensions``."""

    name: str
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    version: str = ""
    commit_date: int | str = ""
    enabled: bool = True


class MemoryResponse(BaseModel):
    """``GET /sdapi/v1/memory``: system RAM (bytes) and device memory, or an ``error`` entry for either."""

    ram: dict[str, Any] = Field(default_factory=dict)
    cuda: dict[str, Any] = Field(default_factory=dict)
