"""torch's layers without their random initialisation: every weight of our networks comes from a checkpoint.

Built on the meta device, torch's layers still run their ``reset_parameters`` (Kaiming/uniform init on meta tensors),
which is pure Python overhead on every load (tens of milliseconds for SD1.5, more for SDXL). These subclasses skip
it; everything else (forward, state dict names, ``isinstance`` checks against torch's classes) is unchanged.
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    """``nn.Linear``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""


class Embedding(nn.Embedding):
    """``nn.Embedding``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""
