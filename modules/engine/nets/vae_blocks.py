"""The building blocks of the Stable Diffusion autoencoder, named as in the original LDM checkpoint.

``Encoder`` and ``Decoder`` keep the ``first_stage_model.encoder.*`` / ``decoder.*`` key layout of single-file
checkpoints: ``down.{i}.block.{j}``, ``down.{i}.downsample.conv``, ``mid.block_1`` / ``attn_1`` / ``block_2``,
``up.{i}.block.{j}``, ``up.{i}.upsample.conv``, ``norm_out``, ``conv_out``. As in LDM the decoder's ``up`` list is
indexed by resolution level (``up.0`` is the full-resolution level), so it runs from ``up.{n-1}`` down to ``up.0``.

Every module with weights is called through its own ``forward`` (offload hooks copy a module's tensors for its call).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from modules.engine.nets.layers import Conv2d, GroupNorm

logger = logging.getLogger(__name__)

NORM_EPS = 1e-6


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """The autoencoder's normalisation: ``groups`` groups, eps 1e-6, affine."""
    return GroupNorm(groups, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Two (GroupNorm → SiLU → 3×3 conv) stages plus a shortcut (a 1×1 ``nin_shortcut`` when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`` (``norm_silu``: one kernel on CUDA)."""
        h = self.conv1(self.norm1.norm_silu(x))
        h = self.conv2(self.norm2.norm_silu(h))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class PointwiseLinear(nn.Module):
    """A linear map over channels stored as a 1×1 convolution weight ``[out, in, 1, 1]`` (LDM's q/k/v/proj_out).

    It is applied to channels-last token rows ``[..., in]`` with ``F.linear``. Files that went through diffusers
    store the weight as ``[out, in]``; both shapes load (the 2-D one is viewed as ``[out, in, 1, 1]``).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = in_features**-0.5  # the default init of nn.Conv2d / nn.Linear; real weights come from the file
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` over the last dimension."""
        return F.linear(x, self.weight.flatten(1), self.bias)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Mapping[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept a 2-D ``[out, in]`` weight as well as the 4-D 1×1 convolution one."""
        key = prefix + "weight"
        weight = state_dict.get(key)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            state_dict[key] = weight[:, :, None, None]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with a residual connection (the mid block's ``attn_1``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = PointwiseLinear(channels, channels)
        self.k = PointwiseLinear(channels, channels)
        self.v = PointwiseLinear(channels, channels)
        self.proj_out = PointwiseLinear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + proj_out(softmax(q kᵀ / √C) v)`` over the ``H·W`` positions of ``norm(x)``."""
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (layer(tokens)[:, None] for layer in (self.q, self.k, self.v))  # [B, 1, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]
        h = self.proj_out(h).transpose(1, 2).reshape(batch, channels, height, width)
        return x + h


class MidBlock(nn.Module):
    """``block_1`` → ``attn_1`` → ``block_2`` at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the three layers in order."""
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    """Halve the resolution: pad right and bottom by one, then a 3×3 stride-2 convolution (as LDM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(pad(x, (0, 1, 0, 1)))``."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour 2× then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(nearest_2x(x))``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, then an optional ``downsample`` (encoder) or ``upsample`` (decoder)."""

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, groups: int, *, resample: str | None = None
    ) -> None:
        super().__init__()
        channels = [in_channels] + [out_channels] * blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, groups) for a, b in pairwise(channels))
        self.downsample = Downsample(out_channels) if resample == "down" else None
        self.upsample = Upsample(out_channels) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, then the resampling layer if any."""
        for block in self.block:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """Pixels ``[B, in, H, W]`` → posterior moments ``[B, 2·latent, H/f, W/f]`` (``f = 2^(levels−1)``)."""

    def __init__(
        self, in_channels: int, latent_channels: int, block_out_channels: Sequence[int], layers: int, groups: int
    ) -> None:
        super().__init__()
        last = len(block_out_channels) - 1
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        inputs = [block_out_channels[0], *block_out_channels[:-1]]
        self.down = nn.ModuleList(
            Level(c_in, c_out, layers, groups, resample="down" if i < last else None)
            for i, (c_in, c_out) in enumerate(zip(inputs, block_out_channels, strict=True))
        )
        self.mid = MidBlock(block_out_channels[-1], groups)
        self.norm_out = group_norm(block_out_channels[-1], groups)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode to the moments (mean and log-variance stacked on the channel axis), before ``quant_conv``."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(self.norm_out.norm_silu(h))


class Decoder(nn.Module):
    """Latents ``[B, latent, h, w]`` (after ``post_quant_conv``) → pixels ``[B, out, h·f, w·f]``."""

    def __init__(
        self, latent_channels: int, out_channels: int, block_out_channels: Sequence[int], layers: int, groups: int
    ) -> None:
        super().__init__()
        top = block_out_channels[-1]
        self.conv_in = Conv2d(latent_channels, top, 3, padding=1)
        self.mid = MidBlock(top, groups)
        # up.{i} works at level i; its input comes from level i+1 (or the mid block for the last level)
        inputs = [*block_out_channels[1:], top]
        self.up = nn.ModuleList(
            Level(c_in, c_out, layers + 1, groups, resample="up" if i > 0 else None)
            for i, (c_in, c_out) in enumerate(zip(inputs, block_out_channels, strict=True))
        )
        self.norm_out = group_norm(block_out_channels[0], groups)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode to pixels in about −1…1 (not clamped)."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(self.norm_out.norm_silu(h))
