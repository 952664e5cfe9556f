"""AppContext: the one mutable object (settings, checkpoint list, ModelManager, JobQueue); submit() is the entry point.

UI and API both call ``submit``; a job runs on the single worker thread with the settings snapshot taken at submit
time, so a settings change never affects a running job.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.engine import hires, refiner, scripts
from modules.engine.checkpoints import HashCache, find_checkpoint, scan_checkpoints
from modules.engine.download import DEFAULT_MODEL, ModelDownload, download_file
from modules.engine.embeddings import EmbeddingLibrary, model_widths
from modules.engine.extras import ExtrasOptions, run_extras
from modules.engine.images import encode_image, read_infotext
from modules.engine.infotext import infotext_to_request_fields, parse_infotext
from modules.engine.loader import LoadedModel, LoadOptions, ModelManager, load_checkpoint, select_device
from modules.engine.lora import TAG as EXTRA_NETWORK_TAG
from modules.engine.lora import LoraLibrary
from modules.engine.networks import Networks
from modules.engine.pipeline import generate
from modules.engine.pipeline import warm_up as warm_up_model
from modules.engine.prompts import count_tokens
from modules.engine.samplers import resolve_sampler, sampler_list, schedule_list
from modules.engine.styles import PromptStyle, StyleLibrary
from modules.engine.tokenizers import clip_tokenizer
from modules.engine.types import (
    LATENT_UPSCALE_MODES,
    CheckpointInfo,
    GenerationRequest,
    NetworkFile,
)
from modules.engine.upscalers import UpscalerRegistry
from modules.engine.vae_files import VaeLibrary
from modules.engine.validation import validate_request
from modules.errors import CheckpointNotFoundError, InvalidRequestError
from modules.flags import LaunchFlags
from modules.generation_options import generation_options
from modules.jobs import Job, JobQueue
from modules.outputs import ExtrasOutput, JobOutput, build_info, save_extras, save_outputs
from modules.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class DownloadState:
    """Progress of the first-run model download, for the UI."""

    done: int = 0
    total: int | None = None
    error: str | None = None
    finished: bool = False


def set_kernel_cache_dirs(cache: Path) -> None:
    """Keep compiled GPU kernels with the app's data (``cache/inductor``, ``cache/triton``) unless the user set them.

    Inductor (``--compile``) and Triton (our GroupNorm/GEGLU kernels, built on first use, 14–19 s one after another
    after an install, tests/gpu/results/kernel_cache_probe*-h200.json) keep what they build on disk, so a restart
    loads it. Triton's directory is set too because inductor points ``TRITON_CACHE_DIR`` at its own directory, for
    the whole process, when it first runs a kernel: without one fixed place the kernels built before a compile and
    those built after it would land in two caches, and a restart would build again what the other one holds.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))


@dataclass
class AppContext:
    """Composition facade: built once in webui.py, handed to the UI (closure) and the API (app.state)."""

    flags: LaunchFlags
    settings: Settings
    jobs: JobQueue = field(default_factory=JobQueue)
    models: ModelManager = field(default_factory=ModelManager)
    download_spec: ModelDownload = DEFAULT_MODEL
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    download: DownloadState = field(default_factory=DownloadState)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.hash_cache = HashCache(self.flags.data_dir / "cache" / "hashes.json")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-hash")
        set_kernel_cache_dirs(self.flags.data_dir / "cache")
        self.upscalers = UpscalerRegistry(list(self.flags.upscaler_dirs))
        self.loras = LoraLibrary(self.flags.lora_path)
        self.embeddings = EmbeddingLibrary(self.flags.embeddings_path)
        self.vaes = VaeLibrary(self.flags.vae_folder, forced=self.flags.vae_path)
        self.styles = StyleLibrary(self.flags.style_files)
        self.refresh_checkpoints()

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def refresh_checkpoints(self) -> list[CheckpointInfo]:
        """Rescan the checkpoint directories (and ``--ckpt``) and return the new list."""
        extra = [self.flags.ckpt] if self.flags.ckpt is not None and self.flags.ckpt.exists() else []
        found = scan_checkpoints(self.flags.checkpoint_dirs, extra_files=extra, hash_cache=self.hash_cache)
        with self._lock:
            self.checkpoints = found
        self.upscalers.refresh()
        return found

    def find_checkpoint(self, query: str) -> CheckpointInfo:
        """Find a checkpoint by any A1111 alias (title, name, model name, short hash…)."""
        return find_checkpoint(self.checkpoints, query)

    def selected_checkpoint(self, settings: Settings | None = None) -> CheckpointInfo:
        """The checkpoint named by ``sd_model_checkpoint``, else ``--ckpt``, else the first one found."""
        snap = settings or self.settings
        if snap.sd_model_checkpoint:
            return self.find_checkpoint(snap.sd_model_checkpoint)
        if self.flags.ckpt is not None:
            return self.find_checkpoint(self.flags.ckpt.name)
        if not self.checkpoints:
            raise CheckpointNotFoundError(
                f"No checkpoints found. Put a .safetensors or .ckpt file into {self.flags.checkpoint_dirs[-1]} "
                "and press the refresh button next to the checkpoint list."
            )
        return self.checkpoints[0]

    def hashed(self, ckpt: CheckpointInfo) -> CheckpointInfo:
        """Return ``ckpt`` with its SHA-256 filled in (computed once, cached on disk) unless --no-hashing."""
        if ckpt.sha256 or self.flags.no_hashing:
            return ckpt
        info = CheckpointInfo(ckpt.filename, ckpt.name, self.hash_cache.sha256(ckpt.filename), ckpt.config)
        with self._lock:
            self.checkpoints = [info if c.filename == info.filename else c for c in self.checkpoints]
        return info

    # ----- settings ----------------------------------------------------------------------------------------------
    def update_settings(self, changes: Mapping[str, Any]) -> Settings:
        """Validate ``changes``, swap in the new settings, save config.json; load a newly chosen checkpoint.

        Raises:
            SettingsError: For unknown keys or invalid values (nothing is changed then).
            CheckpointNotFoundError: If ``sd_model_checkpoint`` names no known checkpoint.
        """
        changes = dict(changes)
        if changes.get("sd_model_checkpoint"):
            chosen = self.find_checkpoint(str(changes["sd_model_checkpoint"]))
            changes["sd_model_checkpoint"] = self.hashed(chosen).title
        with self._lock:
            new = self.settings.with_overrides(changes)
            old, self.settings = self.settings, new
            new.save(self.flags.settings_file)
        if new.sd_model_checkpoint != old.sd_model_checkpoint:
            self.submit_load(new.sd_model_checkpoint).wait()
        return new

    # ----- jobs --------------------------------------------------------------------------------------------------
    @functools.cached_property
    def _device_choice(self) -> tuple[str, str, str]:
        """``(device, dtype, vae_dtype)`` from the launch flags: chosen (and logged) once, as the flags never change."""
        return select_device(
            use_cpu_all=bool({"all", "sd"} & set(self.flags.use_cpu)),
            device_id=int(self.flags.device_id) if self.flags.device_id else None,
            no_half=self.flags.no_half,
            no_half_vae=self.flags.no_half_vae,
            precision=self.flags.precision,
            bf16=self.flags.bf16,
        )

    def load_options(self, model_is_sdxl: bool = False) -> LoadOptions:
        """Device and dtype policy from the launch flags, memory and compile options from flags and settings."""
        device, dtype, vae_dtype = self._device_choice
        return LoadOptions(
            device=device,
            dtype=dtype,
            vae_dtype=vae_dtype,
            allow_unsafe_pickle=self.flags.disable_safe_unpickle,
            cuda_graphs=not self.flags.disable_cuda_graphs,
            memory=self._memory_flag(),
            compile=self.flags.compile or self.settings.compile_unet,
            memory_sdxl="model" if self.flags.medvram_sdxl and self._memory_flag() == "auto" else self._memory_flag(),
        )

    def _memory_flag(self) -> str:
        """``--lowvram`` → sequential offload, ``--medvram`` → model offload, else chosen from free memory."""
        return "sequential" if self.flags.lowvram else "model" if self.flags.medvram else "auto"

    def _load(self, ckpt: CheckpointInfo, *, warm_up: bool = False) -> LoadedModel:
        """Load ``ckpt`` (with ``warm_up``, then prepare its fast path) while its SHA-256 is computed in the background.

        The hash never delays the load or the warm-up: only the end of this call waits for it (infotext needs it).
        """
        self.models.limit = self.settings.sd_checkpoints_limit
        pending = self._hasher.submit(self.hashed, ckpt)
        model = self.models.get(ckpt, self.load_options())
        if warm_up:
            try:
                warm_up_model(model)
            except Exception:  # a warm-up is an optimisation: never fail the load for it
                logger.warning("Warm-up of %s failed; the first job will prepare itself", ckpt.name, exc_info=True)
        model.checkpoint = pending.result()  # usually done by now (cached on disk after the first time)
        return model

    def submit_load(self, query: str | None = None, *, warm_up: bool = False) -> Job:
        """Queue loading a checkpoint (by alias; None = the selected one) on the worker.

        With ``warm_up`` (the start-up load), a one-step job at the model's native size follows on CUDA, so the first
        image a user asks for runs at full speed (engine/pipeline.py ``warm_up``).
        """
        ckpt = self.find_checkpoint(query) if query else self.selected_checkpoint()

        def load(job: Job) -> CheckpointInfo:
            if warm_up:
                job.textinfo = "Loading the model and preparing its fast path"
            return self._load(ckpt, warm_up=warm_up).checkpoint

        return self.jobs.submit(load, kind="load")

    def submit(
        self,
        request: GenerationRequest,
        overrides: Mapping[str, Any] | None = None,
        *,
        save: bool = True,
        job_id: str | None = None,
    ) -> Job:
        """Queue a generation. ``overrides`` apply to this job only; the job's result is a JobOutput.

        Raises:
            SettingsError: If ``overrides`` holds unknown keys or bad values.
            CheckpointNotFoundError: If the chosen checkpoint does not exist.
            InvalidRequestError: A style that no styles file has (styles are applied here, so the job's prompts,
                infotext and saved files carry them).
        """
        snapshot = self.settings.with_overrides(overrides or {})
        ckpt = self.selected_checkpoint(snapshot)
        request = self.styles.apply(request)
        run: Callable[[Job], JobOutput] = lambda job: self._run(job, request, snapshot, ckpt, save)  # noqa: E731
        return self.jobs.submit(run, kind=request.mode, job_id=job_id)

    def _run(
        self, job: Job, request: GenerationRequest, snapshot: Settings, ckpt: CheckpointInfo, save: bool
    ) -> JobOutput:
        job.textinfo = f"Loading {ckpt.name}"
        model = self._load(ckpt)
        job.textinfo = "Generating"
        options = generation_options(snapshot)
        self.upscalers.device = model.device
        names = self.upscaler_names()
        loader = self._job_loader(request, model)
        result = generate(
            model,
            request,
            options,
            job,
            upscaler=self.upscalers,
            upscaler_names=names,
            load_model=loader,
            networks=Networks(loras=self.loras, embeddings=self.embeddings, vaes=self.vaes),
        )
        paths, grid = save_outputs(result, request, snapshot, self.flags.data_dir, save=save)
        info = build_info(result, request, model.checkpoint, options)
        logger.info("Job %s: %d image(s) in %.1f s", job.id, len(result.images), _elapsed(job))
        return JobOutput(result=result, grid=grid, paths=paths, info=info)

    def _job_loader(self, request: GenerationRequest, base: LoadedModel) -> Callable[[str], LoadedModel] | None:
        """Loads the job's extra checkpoints (refiner, hires checkpoint) by name, each once per job.

        The names are resolved up front, so a missing checkpoint fails before any sampling. Extra models are
        loaded beside the base model for the job and dropped after it; naming the base model gives the base.
        """
        names = [request.refiner_checkpoint if refiner.wanted(request) else None]
        if request.enable_hr and request.hr_checkpoint_name not in (None, *hires.SAME_CHECKPOINT):
            names.append(request.hr_checkpoint_name)
        wanted = {str(n): self.hashed(self.find_checkpoint(str(n))) for n in names if n}
        if not wanted:
            return None
        loaded: dict[str, LoadedModel] = {}

        def load(name: str) -> LoadedModel:
            ckpt = wanted.get(name) or self.hashed(self.find_checkpoint(name))
            if ckpt.filename == base.checkpoint.filename:
                return base
            if name not in loaded:
                loaded[name] = load_checkpoint(ckpt, self.load_options())
            return loaded[name]

        return load

    # ----- small facades for the UI (which imports no engine module but types) --------------------------------
    def sampler_names(self) -> list[str]:
        """Names of the samplers that can run, in A1111's UI order."""
        return [s["name"] for s in sampler_list()]

    def schedule_labels(self) -> list[str]:
        """Schedule-type labels as the UI shows them (``Automatic`` first)."""
        return [s["label"] for s in schedule_list()]

    def embedding_list(self) -> dict[str, dict[str, dict[str, object]]]:
        """``/sdapi/v1/embeddings``: those that fit the loaded model (``loaded``), and the rest (``skipped``)."""
        current = self.models.current
        encoders = (current.components.text_encoder, current.components.text_encoder_2) if current else ()
        return self.embeddings.listing(model_widths(encoders))

    def style_list(self) -> list[PromptStyle]:
        """The prompt styles of ``styles.csv`` (``--styles-file``), read again when the files change."""
        return list(self.styles.styles().values())

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> Path:
        """The style editor's Save (``StyleLibrary.save``: its errors); returns the file written."""
        return self.styles.save(PromptStyle(name, prompt, negative_prompt))

    def delete_style(self, name: str) -> Path:
        """The style editor's Delete (``StyleLibrary.delete``: its errors); returns the file written."""
        return self.styles.delete(name)

    def apply_styles(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
        """The prompts with the styles ``names`` written into them (A1111's "apply styles to the prompt").

        Raises:
            InvalidRequestError: A style that no styles file has.
        """
        applied = self.styles.apply(GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, styles=names))
        return applied.prompt, applied.negative_prompt

    def vae_choices(self) -> list[str]:
        """The values of the ``sd_vae`` setting: ``Automatic``, ``None`` and the files of ``models/VAE``."""
        return ["Automatic", "None", *self.vaes.files()]

    def embedding_files(self) -> list[NetworkFile]:
        """The embedding files of ``embeddings/`` (read again when they change), whatever model they fit."""
        found, _ = self.embeddings.scan()
        return [NetworkFile(e.name, e.path) for e in found.values()]

    def lora_files(self, *, rescan: bool = False) -> list[NetworkFile]:
        """The LoRA files of ``models/Lora`` (``--lora-dir``), scanning the folder again with ``rescan``."""
        return self.loras.refresh() if rescan else self.loras.files()

    def count_tokens(self, text: str) -> tuple[int, int]:
        """Token count of ``text`` and the chunk limit it falls in (the UI's ``N/75`` counter; tags not counted)."""
        current = self.models.current
        tokenizer = current.components.tokenizer if current is not None else clip_tokenizer()
        index = current.components.embeddings if current is not None else None
        return count_tokens(tokenizer, EXTRA_NETWORK_TAG.sub("", text), embeddings=index)

    @staticmethod
    def read_image_info(image: Any) -> tuple[str | None, dict[str, Any]]:
        """Infotext and other text chunks stored in an image (PNG Info)."""
        return read_infotext(image)

    def infotext_fields(self, text: str) -> dict[str, Any]:
        """Parse an infotext into GenerationRequest field names (plus ``clip_skip``) for "send to" buttons."""
        fields = infotext_to_request_fields(parse_infotext(text))
        prompt, negative = str(fields.get("prompt", "")), str(fields.get("negative_prompt", ""))
        styles, prompt, negative = self.styles.detect(prompt, negative)
        if styles:  # A1111's default ("Apply if any"): the styles selected, their text taken off the prompts
            fields.update(prompt=prompt, negative_prompt=negative, styles=tuple(styles))
        return fields

    # ----- first-run download ------------------------------------------------------------------------------------
    def submit_default_download(self) -> Job:
        """Queue the first-run download of the default SD 1.5 checkpoint into models/Stable-diffusion."""
        dest = self.flags.checkpoint_dirs[-1]

        def run(job: Job) -> Path:
            self.download = DownloadState()

            def progress(done: int, total: int | None) -> None:
                self.download.done, self.download.total = done, total
                job.textinfo = f"Downloading {self.download_spec.filename}"
                if total:
                    job.report(done // (1 << 20), max(total // (1 << 20), 1))

            try:
                path = download_file(self.download_spec, dest, on_progress=progress, should_stop=job.should_stop)
            except Exception as exc:
                self.download.error = str(exc)
                raise
            finally:
                self.download.finished = True
            self.refresh_checkpoints()
            return path

        return self.jobs.submit(run, kind="download")

    def start(self) -> None:
        """Start-up work: download the default model if there is none (unless disabled), else load the selection."""
        if not self.checkpoints:
            if self.flags.no_download_sd_model:
                logger.warning("No checkpoints in %s; put one there.", self.flags.checkpoint_dirs[-1])
            else:
                logger.info("No checkpoints found; downloading %s", self.download_spec.url)
                self.submit_default_download()
            return
        if not self.flags.skip_load_model_at_start:
            try:
                self.submit_load(warm_up=True)
            except CheckpointNotFoundError as exc:
                logger.warning("%s", exc)

    def close(self) -> None:
        """Stop the worker and free the model."""
        self.jobs.shutdown()
        self._hasher.shutdown(wait=False, cancel_futures=True)
        self.models.unload()

    # ----- facades for the API (which imports no engine module but types) ------------------------------------
    @staticmethod
    def sampler_list() -> list[dict[str, object]]:
        """``/sdapi/v1/samplers`` items: name, aliases, options."""
        return sampler_list()

    @staticmethod
    def schedule_list() -> list[dict[str, object]]:
        """``/sdapi/v1/schedulers`` items: name, label, aliases, default_rho, need_inner_model."""
        return schedule_list()

    @staticmethod
    def parse_infotext(text: str) -> dict[str, object]:
        """Parse an infotext as A1111's ``parse_generation_parameters`` does (string values, defaults added)."""
        return parse_infotext(text)

    @staticmethod
    def encode_image(image: Any, fmt: str, infotext: str | None, jpeg_quality: int = 80) -> bytes:
        """Encode an image in ``fmt`` with ``infotext`` embedded (PNG text chunk, JPEG/WebP EXIF UserComment)."""
        return encode_image(image, fmt, infotext, jpeg_quality)

    def upscaler_names(self) -> list[str]:
        """Image upscalers (built-in and model files) for hires fix and Extras."""
        return self.upscalers.names()

    @staticmethod
    def script_infos() -> list[dict[str, object]]:
        """The selectable img2img scripts and their arguments (``/sdapi/v1/script-info``)."""
        return scripts.script_infos()

    def upscaler_list(self) -> list[str]:
        """Hires fix choices: the latent modes, then the image upscalers (A1111's order)."""
        return [*LATENT_UPSCALE_MODES, *self.upscalers.names()]

    def submit_extras(self, image: Any, options: Mapping[str, Any], *, save: bool = True) -> Job:
        """Queue an Extras upscale of one image; the job's result is an ExtrasOutput.

        Raises:
            InvalidRequestError: For a bad option or an unknown upscaler (checked before queueing).
        """
        opts = ExtrasOptions(**options)
        opts.validate(self.upscalers.names())
        snapshot = self.settings

        def run(job: Job) -> ExtrasOutput:
            self.upscalers.device = self.load_options().device
            job.textinfo = "Upscaling"
            result, info = run_extras(self.upscalers, image, opts)
            return save_extras(image, result, info, snapshot, self.flags.data_dir, save=save)

        return self.jobs.submit(run, kind="extras")

    def run_extras(self, image: Any, *, save: bool = True, **options: Any) -> Any:
        """The UI's Extras facade: upscale ``image`` on the job queue and return the result image."""
        return self.submit_extras(image, options, save=save).wait().image

    def check_request(self, request: GenerationRequest) -> None:
        """Check ranges and sampler/scheduler names before queueing (the engine checks again when it runs).

        Raises:
            InvalidRequestError: Naming each bad field and what is allowed.
        """
        problems = []
        checks = [
            lambda: validate_request(request),
            lambda: resolve_sampler(request.sampler_name, request.scheduler),
            lambda: scripts.apply_script(request),
        ]
        if refiner.wanted(request):
            checks.append(lambda: self.find_checkpoint(str(request.refiner_checkpoint)))
        if request.enable_hr and request.hr_checkpoint_name not in (None, *hires.SAME_CHECKPOINT):
            checks.append(lambda: self.find_checkpoint(str(request.hr_checkpoint_name)))
        if request.enable_hr and request.mode == "txt2img":
            checks.append(lambda: hires.validate(request, self.upscaler_names()))
        for check in checks:
            try:
                check()
            except InvalidRequestError as exc:
                problems.append(str(exc))
        if problems:
            raise InvalidRequestError("; ".join(problems))


def _elapsed(job: Job) -> float:
    return 0.0 if job.started_at is None else time.time() - job.started_at
