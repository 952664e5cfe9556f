"""Tiling (A1111's ``tiling`` setting and request field): images that repeat seamlessly side to side and top to bottom.

For the job, every padded convolution of the UNet and the VAE pads circularly instead of with zeros (A1111's
``apply_circular``), so each network sees the image as wrapping around: shifting the latent by whole cells shifts
the output the same way (tests/engine/test_tiling.py). The convolutions get their zero padding back when the job
ends, failed or not. A UNet replaying CUDA graphs runs eagerly meanwhile: a graph would replay the zero-padded
kernels it captured (engine/accel.py reads ``CIRCULAR``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

CIRCULAR = "circular_padding"  # set on a UNet while its convolutions pad circularly


@dataclass
class CircularPadding:
    """The networks switched to circular padding so far in one job, to switch back."""

    convs: list[torch.nn.Conv2d] = field(default_factory=list)
    unets: list[torch.nn.Module] = field(default_factory=list)

    def apply(self, model: Any) -> Any:
        """Switch ``model``'s (a ``loader.LoadedModel``) UNet and VAE to circular padding; return the model."""
        unet, vae = model.components.unet, model.components.vae
        compiler = getattr(unet.forward, "compiler", None)  # --compile: a trace running now must see zero padding
        if compiler is not None:
            compiler.join_running()
        for network in (unet, vae):
            for module in network.modules():
                padded = isinstance(module, torch.nn.Conv2d) and any(p > 0 for p in _pairs(module.padding))
                if padded and module.padding_mode == "zeros":
                    module.padding_mode = "circular"
                    self.convs.append(module)
        if not getattr(unet, CIRCULAR, False):
            setattr(unet, CIRCULAR, True)
            self.unets.append(unet)
        return model

    def restore(self) -> None:
        """Give every switched convolution its zero padding back."""
        for conv in self.convs:
            conv.padding_mode = "zeros"
        for unet in self.unets:
            setattr(unet, CIRCULAR, False)
        self.convs.clear()
        self.unets.clear()


def _pairs(padding: Any) -> tuple[int, ...]:
    return tuple(padding) if isinstance(padding, tuple | list) else (0,) if isinstance(padding, str) else (padding,)


@contextmanager
def tiling(enabled: bool, model: Any, load_model: Callable[[str], Any] | None) -> Iterator[Callable[[str], Any] | None]:
    """While the block runs, ``model`` (and each model ``load_model`` gives) pads circularly when ``enabled``.

    Yields the loader to use for the job's other checkpoints (refiner, hires checkpoint).
    """
    if not enabled:
        yield load_model
        return
    padding = CircularPadding()
    padding.apply(model)
    try:
        yield None if load_model is None else (lambda name: padding.apply(load_model(name)))
    finally:
        padding.restore()
