"""The loaded model's weights by the checkpoint's own key names, changed in place and put back exactly.

This is how a LoRA (or any weight merge) reaches the engine. The networks hold the file's tensors under its LDM key
names (engine/components.py) with two exceptions made for speed: the UNet's attention projections are fused after the
load (``to_qkv`` for self-attention, ``to_kv`` for the text's keys and values: nets/unet_blocks.py), and a
transformers-layout CLIP's q/k/v projections are one ``in_proj`` (nets/clip.py; OpenCLIP files store them so).
:func:`weight_views` maps every checkpoint key to the tensor the model computes with, a row block of the fused one
where there is one, so a change written through it keeps every weight where it lies: the UNet's CUDA graphs and
compiled kernels read the weights at their addresses, and see the change at the next job with no new capture and no
recompile (tests/gpu/test_gpu_smoke.py). The text is encoded afresh for every job, so nothing cached goes stale.

:class:`WeightPatch` adds changes and keeps the first original of every weight it touched (in host memory, as A1111
keeps its LoRA backups), so taking the changes away restores the file's weights bit for bit, whatever the rounding of
the additions. The originals stay after a restore (the weights equal them again), so the next LoRA on the same layers
copies nothing out; for weights on CUDA they lie in page-locked slabs, which both copies cross at the bus's full speed
(tests/gpu/results/lora_probe-h200.json). Views are looked up at each call, not kept: a memory mode that moves the
networks between devices moves their weights to new tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from modules.engine.architecture import UNET, VAE
from modules.engine.components import ModelComponents
from modules.engine.nets.clip import key_plan
from modules.errors import WeightPatchError

logger = logging.getLogger(__name__)

# A fused UNet projection (its state-dict suffix) and the checkpoint projections stacked in its rows, in order.
_FUSED_UNET = {
    "to_qkv.weight": ("to_q.weight", "to_k.weight", "to_v.weight"),
    "to_kv.weight": ("to_k.weight", "to_v.weight"),
}


def _rows(tensor: torch.Tensor, names: tuple[str, ...], prefix: str) -> dict[str, torch.Tensor]:
    """Views of ``tensor``'s equal row blocks, one per name (in order), keyed ``prefix + name``."""
    return {prefix + name: block for name, block in zip(names, tensor.chunk(len(names)), strict=True)}


def _unet_views(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    views: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict(keep_vars=True).items():
        tensor = tensor.detach()
        suffix = next((s for s in _FUSED_UNET if key.endswith(s)), None)
        if suffix is None:
            views[UNET + key] = tensor
        else:
            views.update(_rows(tensor, _FUSED_UNET[suffix], UNET + key[: -len(suffix)]))
    return views


def _text_encoder_views(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    spec = encoder.spec
    if spec is None:
        raise WeightPatchError("the text encoder was not built from a checkpoint, so its weights have no file keys")
    state = encoder.state_dict(keep_vars=True)
    views: dict[str, torch.Tensor] = {}
    for ours, theirs in key_plan(spec).items():
        if ours in state:  # the projection of an encoder without one, layers beyond its depth: not in the model
            views.update(_rows(state[ours].detach(), theirs, spec.prefix))
    return views


def weight_views(components: ModelComponents) -> dict[str, torch.Tensor]:
    """Every weight of the loaded networks by its checkpoint key: the model's own tensor, or rows of a fused one.

    Writing into a view (``add_``, ``copy_``) changes what the model computes with; nothing is copied or moved.
    """
    views = _unet_views(components.unet)
    views.update({VAE + k: t.detach() for k, t in components.vae.state_dict(keep_vars=True).items()})
    for encoder in (components.text_encoder, components.text_encoder_2):
        if encoder is not None:
            views.update(_text_encoder_views(encoder))
    return views


# Page-locked host memory for originals is taken in slabs of this size (PyTorch's pinned allocator rounds every
# request up to a power of two: one allocation per weight would waste a quarter of it), offsets aligned for any dtype.
_SLAB_BYTES = 256 << 20
_ALIGN = 512
# Pinned memory cannot be swapped out: slabs are page-locked only while this share of the RAM stays available.
_KEEP_AVAILABLE = 0.25


def _pinnable(nbytes: int) -> bool:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a requirement; without it, stay with pageable memory
        return False
    memory = psutil.virtual_memory()
    return memory.available - nbytes > memory.total * _KEEP_AVAILABLE


@dataclass
class _HostCopies:
    """Host copies of device tensors, page-locked for CUDA ones (in slabs), copied without blocking the host."""

    slabs: list[torch.Tensor] = field(default_factory=list)
    used: int = 0  # bytes taken from the last slab
    pending: torch.device | None = None  # the device whose copies out may still be running

    def copy_of(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "cuda":
            return tensor.to("cpu", copy=True)
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > _SLAB_BYTES:
            out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=_pinnable(nbytes))
        else:
            if not self.slabs or self.used + nbytes > _SLAB_BYTES:
                pinned = _pinnable(_SLAB_BYTES)
                self.slabs.append(torch.empty(_SLAB_BYTES, dtype=torch.uint8, pin_memory=pinned))
                self.used = 0
            out = self.slabs[-1][self.used : self.used + nbytes].view(tensor.dtype).view(tensor.shape)
            self.used += -(-nbytes // _ALIGN) * _ALIGN
        out.copy_(tensor, non_blocking=True)
        self.pending = tensor.device
        return out

    def wait(self) -> None:
        """Return once every copy has landed (the host may then read them)."""
        if self.pending is not None:
            torch.cuda.synchronize(self.pending)
            self.pending = None


@dataclass
class WeightPatch:
    """Changes added to a loaded model's weights in place, with the originals kept to put back exactly.

    Attributes:
        originals: The weights as they were before the first change, by checkpoint key (host memory). Kept after a
            restore: the next change of the same weight copies nothing out.
        changed: The keys whose weights differ from their originals now.
    """

    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    _host: _HostCopies = field(default_factory=_HostCopies, repr=False)

    @torch.no_grad()
    def add(
        self,
        components: ModelComponents,
        deltas: Mapping[str, torch.Tensor],
        scale: float = 1.0,
        *,
        views: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Add ``scale · delta`` to each named weight (the sum in float32, then rounded once to the weight's dtype).

        ``views``: ``weight_views(components)`` when the caller has it already (many small calls in a row).

        Raises:
            WeightPatchError: A key the model does not have, or a delta of another shape; nothing is changed then.
        """
        views = weight_views(components) if views is None else views
        self._check(views, deltas)
        for key, delta in deltas.items():
            view = self._keep(key, views[key])
            total = view.float() + delta.to(device=view.device, dtype=torch.float32) * scale
            view.copy_(total)
        self._host.wait()
        logger.debug("Changed %d weight(s) in place", len(deltas))

    @torch.no_grad()
    def put(
        self,
        components: ModelComponents,
        values: Mapping[str, torch.Tensor],
        *,
        views: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Set each named weight to a new value (converted to the weight's dtype and device), in place.

        ``views``: ``weight_views(components)`` when the caller has it already.

        Raises:
            WeightPatchError: A key the model does not have, or a value of another shape; nothing is changed then.
        """
        views = weight_views(components) if views is None else views
        self._check(views, values)
        for key, value in values.items():
            self._keep(key, views[key]).copy_(value)
        self._host.wait()

    def _keep(self, key: str, view: torch.Tensor) -> torch.Tensor:
        """``view``, its original kept first if it has none yet, and marked changed."""
        if key not in self.originals:
            self.originals[key] = self._host.copy_of(view)
        self.changed.add(key)
        return view

    @staticmethod
    def _check(views: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(k for k in values if k not in views)
        if unknown:
            raise WeightPatchError(f"{len(unknown)} weight(s) not in the loaded model, e.g. {', '.join(unknown[:3])}")
        for key, value in values.items():
            if tuple(value.shape) != tuple(views[key].shape):
                shapes = f"{tuple(value.shape)} for a weight of {tuple(views[key].shape)}"
                raise WeightPatchError(f"{key}: a change of shape {shapes}")

    @torch.no_grad()
    def restore(self, components: ModelComponents) -> int:
        """Put every changed weight back as it was; return how many."""
        if not self.changed:
            return 0
        views = weight_views(components)
        for key in self.changed:
            views[key].copy_(self.originals[key], non_blocking=True)  # stream-ordered before the next job's reads
        count = len(self.changed)
        self.changed.clear()
        return count
