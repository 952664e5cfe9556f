"""Automatic VRAM management: full GPU, model offload (A1111's ``--medvram``) or sequential offload (``--lowvram``).

Modes, lightest last:

- ``full``: every model of the pipeline lives on the GPU (fastest; the UNet runs through CUDA graphs).
- ``model``: the models live in RAM and move to the GPU one at a time when called (text encoders → UNet → VAE), as
  A1111's ``--medvram`` does (:class:`ModelOffload`: a hook on each model and its direct children brings that model
  over and sends the previous one back).
- ``sequential``: weights stay in RAM (pinned) and each layer's own tensors are copied over for its call and dropped
  after it (A1111's ``--lowvram``; slow, but runs in a few hundred MB; :class:`SequentialOffload`).

``choose_mode`` picks the fastest that fits from the free memory and the model sizes; the flags force one. Out of
memory during a job → the app context retries once in the next lighter mode (``lighter``).
"""

from __future__ import annotations

import functools
import logging
from types import MappingProxyType
from typing import Any

import torch

from modules.engine.accel import disable_cuda_graphs, enable_cuda_graphs

logger = logging.getLogger(__name__)

MODES = ("full", "model", "sequential")
REQUESTS = ("auto", *MODES)
GIB = 2**30
# Working memory a job needs besides the weights (activations, VAE decode, CUDA graph pool) at the family's
# native size: SD1.5 512² b1 peaks ~1.6 GB above its weights, SDXL 1024² ~5.7 GB (tests/gpu/results/bench-h100.json).
WORK_BYTES = MappingProxyType({False: 2 * GIB, True: 6 * GIB})


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def choose_mode(parts: Any, device: str, requested: str, *, sdxl: bool, free_bytes: int | None = None) -> str:
    """The memory mode for ``parts`` on ``device``: ``requested`` unless it is ``auto``.

    Auto: ``full`` when all weights plus the work memory fit in the free memory, else ``model`` when the largest
    model plus the work memory fit, else ``sequential``. Devices other than CUDA always run ``full``.

    Raises:
        ValueError: An unknown mode name.
    """
    if requested not in REQUESTS:
        raise ValueError(f"unknown memory mode {requested!r}; expected one of {', '.join(REQUESTS)}")
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "full"
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
    sizes = [module_bytes(m) for m in parts.models().values()]
    work = WORK_BYTES[sdxl]
    if sum(sizes) + work <= free_bytes:
        return "full"
    mode = "model" if max(sizes, default=0) + work <= free_bytes else "sequential"
    logger.warning(
        "%.1f GB free on %s for %.1f GB of weights: running with %s offload (--medvram/--lowvram force a mode)",
        free_bytes / 1e9,
        device,
        sum(sizes) / 1e9,
        mode,
    )
    return mode


def lighter(mode: str) -> str | None:
    """The next lighter mode, or None after ``sequential``."""
    index = MODES.index(mode)
    return MODES[index + 1] if index + 1 < len(MODES) else None


def apply_mode(parts: Any, device: str, mode: str, *, cuda_graphs: bool, compile: bool = False) -> None:
    """Put ``parts`` in ``mode`` on ``device`` (from any mode; hooks of the previous one are removed first)."""
    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}")
    disable_cuda_graphs(parts.unet)  # graphs hold device pointers: moving weights would invalidate them
    _remove_hooks(parts)
    if mode == "full":
        parts.to(device)
        if cuda_graphs:
            enable_cuda_graphs(parts.unet, compile=compile)
    elif mode == "model":
        parts.to("cpu")
        parts.offload_hooks = ModelOffload(parts.models(), torch.device(device))
    else:
        parts.to("cpu")
        parts.offload_hooks = SequentialOffload(parts.models(), torch.device(device))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the previous mode held (weights, graph pools) goes back to the driver
    logger.info("Memory mode: %s on %s", mode, device)


def release(parts: Any) -> None:
    """Remove offload hooks and bring every model to the CPU (before caching or dropping the pipeline)."""
    disable_cuda_graphs(parts.unet)
    _remove_hooks(parts)
    parts.to("cpu")


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its weights' device, or the GPU its offload hooks bring it to.

    Inputs must go there: the VAE's ``encode``/``decode`` under offload move the weights, not the inputs.
    """
    device = module.__dict__.get("_offload_device")
    if device is not None:
        return device
    return next(module.parameters()).device


def is_offloaded(module: torch.nn.Module) -> bool:
    """Whether offload hooks move ``module``'s weights (CUDA graphs would then replay stale pointers)."""
    return "_offload_device" in module.__dict__


def _remove_hooks(parts: Any) -> None:
    if parts.offload_hooks is not None:
        parts.offload_hooks.remove()
        parts.offload_hooks = None


def _to(value: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.device != device else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _unhook(handles: list[torch.utils.hooks.RemovableHandle], models: list[torch.nn.Module]) -> None:
    """Remove an offloader's hooks and its device marks (see :func:`is_offloaded`)."""
    for handle in handles:
        handle.remove()
    handles.clear()
    for model in models:
        model.__dict__.pop("_offload_device", None)


class ModelOffload:
    """Whole-model offload (A1111's ``--medvram``): one model at a time on the GPU.

    A model moves to ``device`` when it (or one of its direct children) is called, and the model used before it
    goes back to the CPU.

    Hooks sit on each model and its direct children because the VAE is used through ``encode``/``decode``, which
    call its children, not its ``forward``; call arguments are moved to ``device`` too.
    """

    def __init__(self, models: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.models = list(models.values())
        self.active: torch.nn.Module | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for model in self.models:
            model._offload_device = device
            hook = functools.partial(self._enter, model)
            for module in (model, *model.children()):
                self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _enter(self, model: torch.nn.Module, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.active is not model:
            if self.active is not None:
                self.active.to("cpu")
            model.to(self.device)
            self.active = model
        return _to(args, self.device), _to(kwargs, self.device)

    def remove(self) -> None:
        """Remove every hook and bring the models back to the CPU."""
        _unhook(self.handles, self.models)
        for model in self.models:
            model.to("cpu")
        self.active = None


class SequentialOffload:
    """Per-layer offload: each module's own parameters/buffers visit ``device`` only during its forward.

    The weights stay in (pinned) CPU memory; a pre-hook copies a module's direct tensors to the device, a post-hook
    drops the copies. Each model and its direct children also move their call's tensor arguments to the device
    (the VAE is used through ``encode``/``decode``, which call its children, not its ``forward``).
    """

    def __init__(self, models: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.models = list(models.values())
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        pin = device.type == "cuda" and torch.cuda.is_available()
        self.masters: dict[int, dict[str, torch.Tensor]] = {}
        for model in models.values():
            model._offload_device = device
            for module in (model, *model.children()):
                self.handles.append(module.register_forward_pre_hook(self._inputs, with_kwargs=True))
            for module in model.modules():
                own = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
                if not own:
                    continue
                self.masters[id(module)] = {n: (t.data.pin_memory() if pin else t.data) for n, t in own.items()}
                self._swap(module, None)  # the module now holds the pinned copies, not a second one
                self.handles.append(module.register_forward_pre_hook(self._load))
                self.handles.append(module.register_forward_hook(self._drop))

    def _inputs(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _to(args, self.device), _to(kwargs, self.device)

    def _swap(self, module: torch.nn.Module, device: torch.device | None) -> None:
        for name, master in self.masters[id(module)].items():
            value = master.to(self.device, non_blocking=True) if device is not None else master
            if name in module._parameters:
                module._parameters[name].data = value
            else:
                module._buffers[name] = value

    def _load(self, module: torch.nn.Module, args: tuple) -> None:
        self._swap(module, self.device)

    def _drop(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self._swap(module, None)

    def remove(self) -> None:
        """Remove every hook (the weights are left on the CPU)."""
        _unhook(self.handles, self.models)
