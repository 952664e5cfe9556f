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
the additions. Views are looked up at each call, not kept: a memory mode that moves the networks between devices
moves their weights to new tensors.
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


@dataclass
class WeightPatch:
    """Changes added to a loaded model's weights in place, with the originals kept to put back exactly.

    Attributes:
        originals: The weights as they were before the first change, by checkpoint key (host memory).
    """

    originals: dict[str, torch.Tensor] = field(default_factory=dict)

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
            view = views[key]
            if key not in self.originals:
                self.originals[key] = view.to("cpu", copy=True)
            total = view.float() + delta.to(device=view.device, dtype=torch.float32) * scale
            view.copy_(total)
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
            view = views[key]
            if key not in self.originals:
                self.originals[key] = view.to("cpu", copy=True)
            view.copy_(value)

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
        views = weight_views(components)
        for key, original in self.originals.items():
            views[key].copy_(original)
        count = len(self.originals)
        self.originals.clear()
        return count
