"""ModelManager: checkpoint → our own networks (engine/nets) on the device, dtype/device policy, eviction.

Loading needs no network and follows one route for ``.safetensors`` and ``.ckpt``: read the header (safetensors) or
the safe pickle (ckpt), detect the type, build the architecture from the yaml beside the file or from the shapes,
read the weights once and assign them to the networks by their original key names (:mod:`modules.engine.components`).
For a safetensors file the header gives the shapes, so the architecture is checked before any tensor is read and the
empty networks are built on another thread during the read.

Device/dtype policy (:func:`select_device`), following A1111:

- CUDA: UNet and text encoders fp16 (bf16 with ``--bf16`` on GPUs that have it; fp32 with ``--no-half`` /
  ``--precision full``); VAE fp16 unless ``--no-half-vae``. An fp16 VAE that produces NaNs (the SDXL 1.0 VAE
  overflows in fp16) switches itself to fp32 (engine/vae.py, A1111's automatic VAE precision).
- MPS: fp16 UNet/text, fp32 VAE (as A1111 on macOS).
- CPU: fp32 always (fp16 on CPU is ~10× slower and not supported by every op).

On CUDA (Linux) PyTorch's allocator is switched to expandable segments unless ``PYTORCH_CUDA_ALLOC_CONF`` is set
(:func:`configure_allocator`): with fixed segments, the blocks a job frees (text encoder, UNet, VAE decode of other
sizes) stay reserved in pieces that the next large request cannot use, so the reserved peak sits ~0.8 GB above the
allocated one for an SD1.5 512² job (tests/gpu/results/mem_probe_default_allocator-h200.json); with expandable
segments 0.34 GB, below plain diffusers' default (mem_probe-h200.json).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from modules.engine import offload, stream_read
from modules.engine.accel import disable_cuda_graphs, hash_triton_sources, prepare_unet, prepare_vae
from modules.engine.components import ModelComponents, build_components, empty_networks
from modules.engine.detection import detect_model_type, read_header
from modules.engine.ldm_yaml import build_architecture
from modules.engine.safe_load import load_ckpt_state_dict
from modules.engine.switch_interval import short_switch_interval
from modules.engine.types import CheckpointInfo, ModelType
from modules.engine.weights import WeightPatch
from modules.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Expandable segments: less memory reserved in unusable pieces. Pinned host memory (the originals a LoRA replaces,
# engine/weights.py; --lowvram's weights) is page-locked by 8 threads: 5.9 GB in 1.0 s instead of 3.0 s on the H200
# machine (README, LoRA).
ALLOCATOR_SETTINGS = "expandable_segments:True,pinned_use_cuda_host_register:True,pinned_num_register_threads:8"
_ALLOC_ENV = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a checkpoint (built from Settings by the app context).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        dtype: UNet and text-encoder dtype name (a key of :data:`DTYPES`).
        vae_dtype: VAE dtype name.
        allow_unsafe_pickle: ``--disable-safe-unpickle``: unpickle ``.ckpt`` files without restriction.
        cuda_graphs: Replay the UNet through CUDA graphs on CUDA devices (engine/accel.py).
        memory: ``auto`` (by free memory), ``full``, ``model`` (``--medvram``) or ``sequential`` (``--lowvram``).
        memory_sdxl: The same for SDXL models (``--medvram-sdxl``).
        compile: ``--compile``: the UNet's graphs replay torch.compile'd kernels once compiled (engine/compiling.py).
    """

    device: str = "cpu"
    dtype: str = "float32"
    vae_dtype: str = "float32"
    allow_unsafe_pickle: bool = False
    cuda_graphs: bool = True
    memory: str = "auto"
    memory_sdxl: str = "auto"
    compile: bool = False


def select_device(
    *,
    use_cpu_all: bool,
    device_id: int | None,
    no_half: bool,
    no_half_vae: bool,
    precision: str,
    bf16: bool = False,
) -> tuple[str, str, str]:
    """Choose ``(device, dtype, vae_dtype)`` from A1111's flags and the hardware (policy in the module docstring).

    Args:
        use_cpu_all: ``--use-cpu all``.
        device_id: ``--device-id`` (CUDA index) or None.
        no_half: ``--no-half``.
        no_half_vae: ``--no-half-vae``.
        precision: ``--precision`` (``"autocast"``, ``"half"`` or ``"full"``; ``"full"`` acts as ``--no-half``).
        bf16: ``--bf16``: on CUDA, UNet and text encoders in bfloat16 instead of float16 where the GPU supports it
            (the VAE keeps its own policy). ``--no-half`` wins.
    """
    full = no_half or precision == "full"
    if not use_cpu_all and torch.cuda.is_available():
        configure_allocator()
        device = f"cuda:{device_id}" if device_id is not None else "cuda"
        half = "float16"
        if bf16 and not full:
            if torch.cuda.is_bf16_supported():
                half = "bfloat16"
            else:
                logger.warning("--bf16: this GPU has no bfloat16 support; the UNet and text encoders stay float16")
        choice = (device, "float32" if full else half, "float32" if full or no_half_vae else "float16")
    elif not use_cpu_all and torch.backends.mps.is_available():
        choice = ("mps", "float32" if full else "float16", "float32")
    else:
        choice = ("cpu", "float32", "float32")
    logger.info("Device: %s, UNet/text dtype %s, VAE dtype %s", *choice)
    return choice


def configure_allocator() -> bool:
    """Give PyTorch's CUDA allocator :data:`ALLOCATOR_SETTINGS`; True if set.

    Left alone when the user set ``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF`` (their settings win), on a build
    without CUDA (ROCm) and off Linux (Windows has no expandable segments).
    """
    if any(os.environ.get(name) for name in _ALLOC_ENV) or torch.version.cuda is None or sys.platform != "linux":
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTINGS  # for child processes
    set_allocator_settings(ALLOCATOR_SETTINGS)  # normally before any segment exists: CUDA is not in use yet
    logger.info("CUDA allocator: %s", ALLOCATOR_SETTINGS)
    return True


def set_allocator_settings(settings: str) -> None:
    """Change PyTorch's CUDA allocator settings (e.g. ``expandable_segments:False``) for the segments made from now on.

    Recent torch names the call ``torch._C._accelerator_setAllocatorSettings`` and deprecates the older
    ``torch.cuda.memory._set_allocator_settings``; whichever exists is used.
    """
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(settings)


@dataclass
class LoadedModel:
    """A loaded checkpoint and its txt2img (or inpainting) pipeline.

    Attributes:
        checkpoint: The file it came from.
        model_type: The detected family.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (also set on the scheduler).
        components: Its networks and tokenizers.
        device: Where its weights live.
        dtype: UNet/text-encoder dtype name (the VAE may differ: ``components.vae.dtype``).
        load_seconds: Wall time of the load.
        memory_mode: ``full``, ``model`` or ``sequential`` (engine/offload.py).
        cuda_graphs: Whether the UNet replays CUDA graphs in ``full`` mode.
        weight_patch: The LoRA changes merged into its weights in place, with the originals (engine/lora.py).
        merged_loras: Which files and multipliers ``weight_patch`` holds.
        vae_patch: A separate VAE file's weights copied over the checkpoint's own, with the originals.
        vae_file: Which file ``vae_patch`` holds (path, size, modification time), or None.
    """

    checkpoint: CheckpointInfo
    model_type: ModelType
    prediction_type: str
    components: ModelComponents = field(repr=False)
    device: str
    dtype: str
    load_seconds: float
    memory_mode: str = "full"
    cuda_graphs: bool = False
    compile: bool = False
    preferred_mode: str = ""  # the mode chosen at load ("" = memory_mode); a job returns to it when it can
    weight_patch: WeightPatch = field(default_factory=WeightPatch, repr=False)  # LoRAs merged in place (lora.py)
    merged_loras: tuple = ()  # what weight_patch holds: ((file stamp, te, unet), ...)
    vae_patch: WeightPatch = field(default_factory=WeightPatch, repr=False)  # a VAE file in place (vae_files.py)
    vae_file: tuple | None = None  # which file vae_patch holds: (path, size, mtime)

    def set_memory_mode(self, mode: str) -> None:
        """Switch to another memory mode in place (e.g. a lighter one after running out of memory).

        Raises:
            torch.OutOfMemoryError: The models do not fit in ``mode``; they are back in the previous mode.
        """
        if mode == self.memory_mode:
            return
        try:
            offload.apply_mode(self.components, self.device, mode, cuda_graphs=self.cuda_graphs, compile=self.compile)
        except torch.OutOfMemoryError:
            _free_memory()
            offload.apply_mode(
                self.components, self.device, self.memory_mode, cuda_graphs=self.cuda_graphs, compile=self.compile
            )
            raise
        self.memory_mode = mode


def _set_offline() -> None:
    """Make sure nothing reaches the Hugging Face Hub (respecting values the user set explicitly)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# The LDM key prefixes the components are built from; everything else in a file (EMA copies, schedule buffers) is
# not read.
MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def read_state_dict(
    path: Path,
    *,
    allow_unsafe: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors (safetensors, or the safe ``.ckpt`` loader).

    A safetensors file is read tensor by tensor straight to ``device`` (CUDA: through pinned buffers with the copies
    overlapping the read, engine/stream_read.py; else memory-mapped), only the keys under :data:`MODEL_PREFIXES`,
    each floating tensor cast on arrival (``first_stage_model.*`` to ``vae_dtype``, the rest to ``dtype``; None keeps
    the file's). A ``.ckpt`` is unpickled whole to the CPU.

    Raises:
        CheckpointLoadError: The file is corrupt or truncated (or an unsafe pickle, as UnsafeCheckpointError).
    """
    if path.suffix.lower() != ".safetensors":
        return load_ckpt_state_dict(path, allow_unsafe=allow_unsafe)

    def target(key: str, file_dtype: torch.dtype) -> torch.dtype:
        wanted = vae_dtype if key.startswith("first_stage_model.") else dtype
        return wanted if wanted is not None else file_dtype

    if torch.device(device).type == "cuda":  # read and host → GPU copies overlapped (engine/stream_read.py)
        try:
            return stream_read.read_tensors(path, device, lambda k: k.startswith(MODEL_PREFIXES), target)
        except stream_read.UnsupportedFileError as error:
            logger.info("%s: %s; reading it through safetensors", path.name, error)
        except RuntimeError as error:  # a CUDA-side problem (pinned memory…): the ordinary reader still works
            logger.warning("%s: overlapped read failed (%s); reading it through safetensors", path.name, error)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointLoadError(f"{path.name}: cannot read tensors ({reason})") from error
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=device) as file:
            for key in file.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if not key.startswith(MODEL_PREFIXES):
                    continue
                tensor = file.get_tensor(key)
                wanted = target(key, tensor.dtype)
                tensors[key] = tensor.to(wanted) if tensor.is_floating_point() and tensor.dtype != wanted else tensor
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointLoadError(f"{path.name}: cannot read tensors ({reason})") from error
    return tensors


def direct_mode(shapes: Mapping[str, tuple[int, ...]], model_type: ModelType, options: LoadOptions) -> str | None:
    """``"full"`` when a safetensors file can be read straight into VRAM, else None (read to RAM, decide later).

    Straight to VRAM: a CUDA device and full GPU mode, forced or automatic with the weights (in the target dtype)
    plus the work memory within the free memory.
    """
    if not options.device.startswith("cuda"):
        return None
    requested = options.memory_sdxl if model_type.is_sdxl else options.memory
    if requested != "auto":
        return "full" if requested == "full" else None
    size = DTYPES[options.dtype].itemsize
    weights = sum(math.prod(shape) * size for key, shape in shapes.items() if key.startswith(MODEL_PREFIXES))
    free, _ = torch.cuda.mem_get_info(torch.device(options.device))
    return "full" if weights + offload.WORK_BYTES[model_type.is_sdxl] <= free else None


TRITON_HASH_WAIT_S = 30.0  # the longest a load waits for Triton's hash (0.4 s on the H200; a stuck one is left)


def load_checkpoint(checkpoint: CheckpointInfo, options: LoadOptions) -> LoadedModel:
    """Load one checkpoint into a ready pipeline (steps in the module docstring).

    Raises:
        CheckpointLoadError: Unreadable, truncated or inconsistent file, or a yaml that does not match it.
        UnsafeCheckpointError: A ``.ckpt`` pickle was refused.
        UnknownModelTypeError: The file is not a supported Stable Diffusion checkpoint.
    """
    _set_offline()  # nothing here reaches the Hub; this guards what a tokenizer import might pull in
    from modules.engine.prediction import probe_prediction_type

    started = time.perf_counter()
    # Triton's installation hash, needed by the kernels' first launch, computed while the file is read (accel.py).
    triton_hash = hash_triton_sources() if options.device.startswith("cuda") else None
    path, source = Path(checkpoint.filename), Path(checkpoint.filename).name
    # 1. Tensors (safetensors: header first, so a LoRA or VAE is refused before reading gigabytes).
    #    A safetensors file whose weights fit in the free VRAM is read straight to the GPU in the target dtypes.
    is_safetensors = path.suffix.lower() == ".safetensors"
    shapes = read_header(path) if is_safetensors else None
    model_type = detect_model_type(shapes, source=path) if shapes is not None else None
    _check_dtypes(options)
    direct = direct_mode(shapes, model_type, options) if shapes is not None and model_type is not None else None
    # 2. Architecture (from the yaml beside the file, or the shapes): known before the read for a safetensors file,
    #    whose empty networks are then built while the tensors are read.
    arch = None
    if shapes is not None and model_type is not None:
        arch = build_architecture(shapes, model_type, checkpoint.config, source=source)
    with ThreadPoolExecutor(1, thread_name_prefix="build-networks") as builder, short_switch_interval():
        empty = builder.submit(empty_networks, arch) if arch is not None else None
        state_dict = read_state_dict(
            path,
            allow_unsafe=options.allow_unsafe_pickle,
            device=options.device if direct else "cpu",
            dtype=DTYPES[options.dtype],
            vae_dtype=DTYPES[options.vae_dtype],
        )
        networks = empty.result() if empty is not None else None
    if arch is None:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        model_type = detect_model_type(shapes, source=path)
        arch = build_architecture(shapes, model_type, checkpoint.config, source=source)
    # 3. Networks from the one state dict (tensors assigned as they are: already in their dtype and place).
    parts = build_components(
        state_dict,
        arch,
        source=source,
        dtype=DTYPES[options.dtype],
        vae_dtype=DTYPES[options.vae_dtype],
        empty=networks,
    )
    del state_dict
    prediction = arch.scheduler["prediction_type"]
    if not arch.prediction_known:
        prediction = probe_prediction_type(parts.unet)
    parts.schedule["prediction_type"] = prediction
    # 4. Device and memory mode.
    prepare_unet(parts.unet, model_type, options.device, compile=options.compile)
    prepare_vae(parts.vae, options.device)
    mode = direct or _memory_mode(parts, model_type, options)
    offload.apply_mode(parts, options.device, mode, cuda_graphs=options.cuda_graphs, compile=options.compile)
    if triton_hash is not None:  # not finished yet: the first job would compute it a second time beside this thread
        triton_hash.join(TRITON_HASH_WAIT_S)
    seconds = time.perf_counter() - started
    logger.info("Loaded %s (%s, %s) in %.1f s on %s", source, model_type.value, prediction, seconds, options.device)
    return LoadedModel(
        checkpoint,
        model_type,
        prediction,
        parts,
        options.device,
        options.dtype,
        seconds,
        mode,
        options.cuda_graphs,
        options.compile,
    )


def _memory_mode(parts: Any, model_type: ModelType, options: LoadOptions) -> str:
    """The memory mode for this model (``offload.choose_mode`` over the option that applies to its family)."""
    requested = options.memory_sdxl if model_type.is_sdxl else options.memory
    return offload.choose_mode(parts, options.device, requested, sdxl=model_type.is_sdxl)


def _check_dtypes(options: LoadOptions) -> None:
    """Raise CheckpointLoadError for a dtype name outside :data:`DTYPES`."""
    for name in ("dtype", "vae_dtype"):
        if getattr(options, name) not in DTYPES:
            raise CheckpointLoadError(f"unknown {name} {getattr(options, name)!r}; expected one of {list(DTYPES)}")


class ModelManager:
    """Owns the loaded models: one active on the device, up to ``limit − 1`` recently used ones kept in RAM.

    ``limit`` is A1111's ``sd_checkpoints_limit`` (default 1: switching frees the previous model before loading the
    next). With a higher limit, a model switched away from stays in VRAM when there is room for another as large
    (switching back costs nothing), else moves to RAM (switching back is a host-to-device copy, not a load from
    disk). Its CUDA graphs are dropped either way.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._current: LoadedModel | None = None
        self._options: LoadOptions | None = None
        self._cache: OrderedDict[tuple[Path, LoadOptions], LoadedModel] = OrderedDict()

    @property
    def current(self) -> LoadedModel | None:
        """The active model, or None."""
        return self._current

    @property
    def cached(self) -> list[CheckpointInfo]:
        """Checkpoints kept in RAM, least recently used first."""
        return [m.checkpoint for m in self._cache.values()]

    def get(self, checkpoint: CheckpointInfo, options: LoadOptions) -> LoadedModel:
        """Return the model for ``checkpoint`` on the device: the active one, one from the RAM cache, or a load."""
        current = self._current
        path = Path(checkpoint.filename)
        if current is not None and Path(current.checkpoint.filename) == path and self._options == options:
            return current
        del current  # hold no reference while unloading, or the old weights stay in memory
        cached = self._cache.pop((path, options), None)
        self._retire_current()
        if cached is not None:
            started = time.perf_counter()
            mode = _memory_mode(cached.components, cached.model_type, options)
            offload.apply_mode(  # no copy when it stayed on the device
                cached.components, options.device, mode, cuda_graphs=options.cuda_graphs, compile=options.compile
            )
            logger.info("Moved %s from RAM to %s in %.2f s", path.name, options.device, time.perf_counter() - started)
            loaded = replace(cached, checkpoint=checkpoint, memory_mode=mode)
        else:
            loaded = load_checkpoint(checkpoint, options)
        self._current, self._options = loaded, options
        return loaded

    def _retire_current(self) -> None:
        """Move the active model to the RAM cache (within ``limit``), or free it."""
        current, options = self._current, self._options
        self._current = self._options = None
        if current is None or options is None:
            return
        disable_cuda_graphs(current.components.unet)
        dropped = [current]
        if self.limit > 1:
            if current.memory_mode != "full" or (
                options.device != "cpu" and not _room_to_stay(current.components, options.device)
            ):
                offload.release(current.components)
            self._cache[(Path(current.checkpoint.filename), options)] = current
            dropped.clear()
        del current
        while len(self._cache) > max(self.limit - 1, 0):
            dropped.append(self._cache.popitem(last=False)[1])
        models = [weakref.ref(m) for model in dropped for m in model.components.models().values()]
        del dropped
        _free_memory(collect=any(ref() is not None for ref in models))

    def unload(self) -> None:
        """Drop the active model and the RAM cache, and give their memory back (``gc`` and the CUDA cache)."""
        if self._current is None and not self._cache:
            return
        if self._current is not None:
            disable_cuda_graphs(self._current.components.unet)
        name = self._current.checkpoint.name if self._current is not None else "the cached models"
        pipe_ref = weakref.ref(self._current.components) if self._current is not None else None
        self._current, self._options = None, None
        self._cache.clear()
        _free_memory()
        still = pipe_ref is not None and pipe_ref() is not None
        logger.info("Unloaded %s%s", name, " (still referenced elsewhere)" if still else "")


def _pipe_bytes(parts: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's models."""
    return sum(offload.module_bytes(c) for c in parts.models().values())


def _room_to_stay(parts: Any, device: str) -> bool:
    """Whether a retired model may stay in VRAM: room is left for another as large plus 4 GiB of work memory.

    Switching back is then free; otherwise the model moves to RAM (A1111's ``sd_checkpoints_keep_in_cpu``).
    """
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free >= _pipe_bytes(parts) + 4 * 2**30


def _free_memory(*, collect: bool = True) -> None:
    """Collect garbage (with ``collect``) and return the CUDA cache to the driver.

    A switch passes ``collect=False`` when the models it dropped are already gone (freed by reference counting, as
    they are unless something made a cycle through them): a full collection cost 0.09 s of an SD1.5 switch after
    SDXL on the H200 (tests/gpu/results/load_profile_switch_sdxl_before-h200.txt) and frees nothing then.
    """
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
