"""torch's layers without their random initialisation: every weight of our networks comes from a checkpoint.

Built on the meta device, torch's layers still run their ``reset_parameters`` (Kaiming/uniform init on meta tensors),
which is pure Python overhead on every load (tens of milliseconds for SD1.5, more for SDXL). These subclasses skip
it; everything else (forward, state dict names, ``isinstance`` checks against torch's classes) is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
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

    def norm_silu(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """``silu(self(x + add[:, :, None, None]))`` (``add``: (N, C) or None).

        The residual blocks' norm-then-activate, named so that engine/group_norm.py can replace it per instance with
        one fused kernel on CUDA.
        """
        if add is not None:
            x = x + add[:, :, None, None]
        return F.silu(self(x))


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""


class Embedding(nn.Embedding):
    """``nn.Embedding``, left uninitialised (weights are assigned from a file)."""

    def reset_parameters(self) -> None:
        """Nothing: the weights come from the checkpoint."""
