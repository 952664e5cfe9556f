"""CUDA-graph replay of the UNet: the eager fast path on CUDA (no compile step, ready after one warm-up).

On the project's H100 the eager SD1.5 UNet is launch-bound (~22 it/s at 512², batch 1): Python and kernel launches,
not the GPU, set the pace. Capturing the whole UNet forward once per input signature and replaying it removes that
overhead without inductor. Outputs are the same kernels' outputs (compared against eager in tests/gpu).

How: the UNet module we hold gets an instance-level ``forward`` (``GraphedForward``) that, for a supported call
(tensors only, no extra kwargs, no autograd), copies the inputs into static buffers and replays the graph captured for
that signature (shapes, dtypes); anything else runs eagerly. Graphs share one memory pool and are kept in a small
LRU cache (a new width/height/batch/prompt length captures a new one in ~3 forward passes). ``disable`` restores
the plain module. Nothing third-party is patched: only the UNet instance this app owns.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modules.engine import geglu, group_norm, kernel_build
from modules.engine.compiling import READY, BackgroundCompiler
from modules.engine.streams import GRAPHS, side_stream
from modules.engine.tiling import CIRCULAR
from modules.engine.types import ModelType

logger = logging.getLogger(__name__)

MAX_GRAPHS = 4
_WARMUP_RUNS = 2


@dataclass
class _Graph:
    """One captured forward: its static inputs and output."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


def _flatten(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, added: dict | None) -> dict:
    """Return the call's tensors by name, or an empty dict when the call cannot be graphed."""
    if not isinstance(timestep, torch.Tensor) or timestep.device != sample.device:
        return {}
    tensors = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
    for key, value in (added or {}).items():
        if not isinstance(value, torch.Tensor):
            return {}
        tensors[f"added.{key}"] = value
    return tensors


def _signature(tensors: dict[str, torch.Tensor]) -> tuple:
    return tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(tensors.items()))


class _GraphCache:
    """The captured graphs, least recently used first (at most ``max_graphs``), and the memory pool they share.

    PyTorch releases a graph pool when the last graph captured into it is freed, and capturing into a released pool
    fails inside its allocator (``use_count > 0`` assertion; torch 2.11 on the H200, when a size's eager graph was
    dropped for its compiled one). So whenever the cache becomes empty the next capture gets a new pool.
    """

    def __init__(self, max_graphs: int, new_pool: Callable[[], Any]) -> None:
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._max = max_graphs
        self._new_pool = new_pool
        self.pool = new_pool()

    def kept(self) -> list[tuple]:
        """The keys of the graphs kept, least recently used first."""
        return list(self._graphs)

    def get(self, key: tuple) -> _Graph | None:
        """The graph for ``key`` (now the most recently used), or None."""
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: _Graph) -> None:
        """Keep ``entry``, dropping the least recently used graphs beyond ``max_graphs``."""
        self._graphs[key] = entry
        while len(self._graphs) > self._max:
            self._graphs.popitem(last=False)

    def drop(self, key: tuple) -> None:
        """Free the graph for ``key`` if there is one."""
        if self._graphs.pop(key, None) is not None and not self._graphs:
            self.pool = self._new_pool()

    def clear(self) -> None:
        """Free every graph."""
        self._graphs.clear()
        self.pool = self._new_pool()


class GraphedForward:
    """Callable installed as ``unet.forward``: graph replay for supported calls, eager for the rest."""

    def __init__(self, unet: torch.nn.Module, max_graphs: int = MAX_GRAPHS, *, compile: bool = False) -> None:
        self._eager: Callable[..., Any] = type(unet).forward.__get__(unet)
        self._graphs = _GraphCache(max_graphs, torch.cuda.graph_pool_handle)
        self.failed = False
        self.compiler = BackgroundCompiler(self._eager, self._run_static) if compile else None

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        added_cond_kwargs: dict | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run the UNet: replay a captured graph when possible, else the eager forward."""
        extra = {k: v for k, v in kwargs.items() if v is not None}
        # a tiling job pads circularly: the graphs hold the zero-padded kernels (engine/tiling.py)
        tiled = getattr(self._eager.__self__, CIRCULAR, False)
        tensors = (
            {}
            if (args or extra or torch.is_grad_enabled() or self.failed or kernel_build.active() or tiled)
            else _flatten(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        )
        if not tensors:
            return self._eager(
                sample,
                timestep,
                encoder_hidden_states,
                *args,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=return_dict,
                **kwargs,
            )
        try:
            out = self._replay(tensors).clone()
        except RuntimeError as exc:  # a capture problem must never fail the job: fall back to eager for good
            logger.warning("CUDA graph capture failed (%s); running the UNet eagerly from now on", exc)
            self.failed = True
            self.clear()
            return self._eager(
                sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, return_dict=return_dict
            )
        if return_dict:
            from modules.engine.nets.unet import UNetOutput

            return UNetOutput(sample=out)
        return (out,)

    @property
    def captured(self) -> list[str]:
        """What each kept graph replays, least recently used first: ``eager`` or ``compiled``."""
        return ["compiled" if compiled else "eager" for _, compiled in self._graphs.kept()]

    def _replay(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        signature = _signature(tensors)
        fn = self._eager
        if self.compiler is not None:
            state = self.compiler.state(signature)
            if state is None:
                self.compiler.request(signature, tensors)
            elif state == READY:
                fn = self.compiler.compiled
                self._graphs.drop((signature, False))  # the eager graph of this size is not needed any more
        key = (signature, fn is not self._eager)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(tensors, fn)
            self._graphs.put(key, entry)
        for name, value in tensors.items():
            entry.inputs[name].copy_(value)
        entry.graph.replay()
        return entry.output

    def _run_static(self, fn: Callable[..., Any], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        added = {k.removeprefix("added."): v for k, v in inputs.items() if k.startswith("added.")}
        return fn(
            inputs["sample"],
            inputs["timestep"],
            inputs["encoder_hidden_states"],
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]

    def _capture(self, tensors: dict[str, torch.Tensor], fn: Callable[..., Any]) -> _Graph:
        inputs = {name: t.clone() for name, t in tensors.items()}
        # warm-up and capture on one long-lived stream: cuBLAS makes its workspace for it once, in the warm-up, not
        # inside a capture (where it would come from the graph's pool and outlive the graph; engine/streams.py)
        stream = side_stream(tensors["sample"].device, GRAPHS)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_RUNS):
                self._run_static(fn, inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a background compile (engine/compiling.py) may use CUDA while this thread captures
        with torch.cuda.graph(graph, pool=self._graphs.pool, stream=stream, capture_error_mode="thread_local"):
            output = self._run_static(fn, inputs)
        kind = "compiled" if fn is not self._eager else "eager"
        logger.info(
            "Captured a CUDA graph of the %s UNet for %s", kind, {k: tuple(v.shape) for k, v in tensors.items()}
        )
        return _Graph(graph, inputs, output)

    def clear(self) -> None:
        """Drop every captured graph (later captures use a new memory pool)."""
        self._graphs.clear()


def prepare_unet(unet: torch.nn.Module, model_type: ModelType, device: str, *, compile: bool = False) -> bool:
    """Merge the UNet's attention projections; on CUDA put it in channels_last with the hand-written kernels.

    Returns whether the layout was changed. Merged projections: one matmul for self-attention's q/k/v and one for
    cross-attention's k/v (nets/unet_blocks.py), same weights, same results up to rounding.

    On CUDA the UNet runs channels_last (cuDNN's convolutions stop converting layouts, the spatial transformers'
    reshapes become views) with its GroupNorms as one Triton kernel on the NHWC data (engine/group_norm.py; in the
    residual blocks it also adds the time embedding and applies SiLU) and the fused GEGLU gate (engine/geglu.py).
    Measured on the H200 (tests/gpu/results/unet_profile-h200.json, one CFG step replayed from a CUDA graph):
    SD1.5 9.12 ms with PyTorch's GroupNorm → 7.09 ms (GEGLU kernel alone: 7.48 → 7.09); SDXL 41.2 ms contiguous with
    PyTorch's kernels → 38.2 with the GEGLU kernel → 34.8 ms channels_last with the GroupNorm kernel. (On the H100,
    channels_last with PyTorch's GroupNorm was slower for SDXL: its NHWC GroupNorm is a slow strided path.)
    The kernels are installed without ``compile`` only: inductor fuses these itself and cannot trace through
    hand-written kernels. With ``compile`` an SDXL UNet stays contiguous as before: the layout gain above comes from the
    GroupNorm kernel, which inductor replaces with its own, and the compiled layouts have not been compared.
    """
    fuse = getattr(unet, "fuse_projections", None)
    if fuse is not None:
        fuse()
    if not device.startswith("cuda") or (compile and model_type.is_sdxl):
        return False
    unet.to(memory_format=torch.channels_last)
    if not compile:
        geglu.install(unet)
        group_norm.install(unet)
    return True


def prepare_vae(vae: torch.nn.Module, device: str) -> bool:
    """On CUDA put the VAE in channels_last with its GroupNorms (and their SiLU) as the Triton kernel; else nothing.

    Returns whether the layout was changed. Same computation; cuDNN's NHWC convolutions and the fused
    norm-then-activate (nets/vae_blocks.py ``norm_silu``) replace PyTorch's NCHW kernels and separate SiLU passes
    over the decoder's full-resolution activations. H200, fp16 (tests/gpu/results/vae_probe-h200.json): decode SD1.5
    512² 23.5 → 13.7 ms, 1024² 90.6 → 43.8 ms, SDXL 1024² 94.6 → 44.2 ms, pixels within 3/255; channels_last with
    PyTorch's GroupNorm alone was slower (27.3 / 131 ms).
    """
    if not device.startswith("cuda"):
        return False
    vae.to(memory_format=torch.channels_last)
    group_norm.install(vae)
    return True


def hash_triton_sources() -> threading.Thread:
    """Import Triton and compute the hash of its installation that its first kernel launch needs, on a daemon thread.

    Triton keys its on-disk kernel cache by a hash of its own sources and library (``triton_key``, computed once per
    process and cached): 0.4 s of the first job after a restart on the H200 (``triton_key`` in
    tests/gpu/results/startup_profile_no_bytecode_cache-h200.txt). The loader starts this as a CUDA load begins, so
    that it runs during the read (W6, a new process to its first image: 4.43-4.98 s with the thread started at the end
    of the load, 3.97-4.33 s started at its beginning, w6_before_vae_kernels-h200.json; two lent machines). Where
    this Triton has no such function (or there is no Triton) the thread does nothing and the first launch works as
    before.
    """
    thread = threading.Thread(target=_triton_key, name="triton-key", daemon=True)
    thread.start()
    return thread


def _triton_key() -> None:
    for name in ("triton.runtime.cache", "triton.compiler.compiler"):  # where Triton versions keep it
        try:
            key = getattr(importlib.import_module(name), "triton_key", None)
            if callable(key):
                key()
                return
        except ImportError:
            continue
        except Exception as exc:  # a head start only: a broken Triton shows itself at its first launch
            logger.debug("Triton's installation hash could not be computed ahead (%s)", exc)
            return


def enable_cuda_graphs(unet: torch.nn.Module, *, compile: bool = False) -> bool:
    """Install graph replay on ``unet`` if it runs on CUDA (with ``compile``: of inductor-compiled kernels).

    Returns whether it was installed.
    """
    param = next(unet.parameters(), None)
    if param is None or param.device.type != "cuda" or "_offload_device" in unet.__dict__:
        return False  # not on CUDA, or offloaded (weights move, graphs would replay stale pointers)
    unet.forward = GraphedForward(unet, compile=compile)
    how = "compiled (torch.compile, in the background) and " if compile else ""
    logger.info("UNet runs %sthrough CUDA graphs (captured per image size and batch on first use)", how)
    return True


def graphs_enabled(unet: torch.nn.Module) -> bool:
    """Whether ``unet`` replays CUDA graphs (``enable_cuda_graphs`` installed them)."""
    return isinstance(unet.__dict__.get("forward"), GraphedForward)


def start_queued_compiles(unet: torch.nn.Module) -> None:
    """After a job: start the background compiles its new input sizes queued (``--compile``; else nothing)."""
    forward = unet.__dict__.get("forward")
    if isinstance(forward, GraphedForward) and forward.compiler is not None:
        forward.compiler.start_queued()


def disable_cuda_graphs(unet: torch.nn.Module) -> None:
    """Remove graph replay from ``unet`` and free its graphs."""
    forward = unet.__dict__.pop("forward", None)
    if isinstance(forward, GraphedForward):
        forward.clear()
