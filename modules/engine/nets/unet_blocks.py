"""Building blocks of the Stable Diffusion UNet, named as in the original LDM ``openaimodel`` checkpoint layout.

Residual blocks (``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``), the spatial transformer
(``norm`` / ``proj_in`` / ``transformer_blocks`` / ``proj_out``), the stride-2 downsampling conv (``op``) and the
nearest-2x upsampling conv (``conv``). Every block holds parameters only (no buffers), so the UNet can be built on
the meta device and filled with ``load_state_dict(assign=True)``. Attention goes through
``torch.nn.functional.scaled_dot_product_attention``; the layout changes are ``permute`` + ``reshape``, correct for
any memory format (channels_last included). Forwards branch on module types, shapes and layouts, never on values,
so they trace under ``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from modules.engine.nets.layers import Conv2d, GroupNorm, LayerNorm, Linear

GROUPS = 32
RESNET_EPS = 1e-5
TRANSFORMER_NORM_EPS = 1e-6
FF_MULT = 4
MAX_PERIOD = 10000.0
NHWC_UPSAMPLE_LIMIT = 2**31  # PyTorch's NHWC nearest kernel fails above this many output elements


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Return the sinusoidal embedding of 1-D (possibly fractional) timesteps: ``[cos | sin]``, float32, (N, dim).

    Frequencies are ``exp(-ln(max_period) * i / (dim // 2))`` for ``i < dim // 2`` (no frequency shift); an odd
    ``dim`` gets one zero column at the end. The frequencies are computed here, on the timesteps' device, so the
    module that calls this needs no buffer.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / half)
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """Return ``channels_last`` for an NHWC-strided 4-D tensor, else ``contiguous_format``."""
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


class ResBlock(nn.Module):
    """Residual block: GroupNorm → SiLU → 3x3 conv, plus the projected time embedding, GroupNorm → SiLU → 3x3 conv.

    A 1x1 ``skip_connection`` conv adapts the channel count when it changes.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm(GROUPS, channels, eps=RESNET_EPS),
            nn.SiLU(),
            Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm(GROUPS, out_channels, eps=RESNET_EPS),
            nn.SiLU(),
            nn.Identity(),  # LDM's dropout (inference only here); keeps the conv at index 3
            Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (B, C, H, W) conditioned on ``emb`` (B, E)."""
        h = self.in_layers[2](self.in_layers[0].norm_silu(x))
        h = self.out_layers[3](self.out_layers[0].norm_silu(h, self.emb_layers(emb)))
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding 1): an H x W map becomes ceil(H/2) x ceil(W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the spatial size."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling (2x, or to an explicit size) followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Upsample ``x`` to ``size`` (H, W) when given (odd latent sizes: the matching skip's size), else 2x."""
        out_size = (x.shape[-2] * 2, x.shape[-1] * 2) if size is None else (size[0], size[1])
        if x.shape[0] * x.shape[1] * out_size[0] * out_size[1] > NHWC_UPSAMPLE_LIMIT:
            x = x.contiguous()
        x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head attention with separate bias-free q/k/v projections and a biased output projection.

    :meth:`fuse_projections` merges the projections that read the same input into one matmul (q/k/v of
    self-attention, k/v of cross-attention): one larger GEMM instead of two or three small ones on the GPU. The merged
    weights replace the separate ones (no extra memory); the state dict then has the merged names.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([Linear(inner, query_dim)])
        self.fused: str = ""  # "", "qkv" (self-attention) or "kv" (cross-attention)

    def fuse_projections(self, *, self_attention: bool) -> None:
        """Merge q/k/v (``self_attention``) or k/v into one linear layer (``to_qkv`` / ``to_kv``)."""
        if self.fused:
            return
        names = ("to_q", "to_k", "to_v") if self_attention else ("to_k", "to_v")
        layers = [getattr(self, n) for n in names]
        weight = torch.cat([layer.weight.detach() for layer in layers])
        with torch.device("meta"):
            merged = Linear(layers[0].in_features, weight.shape[0], bias=False)
        merged.weight = nn.Parameter(weight, requires_grad=False)
        for name in names:
            delattr(self, name)
        self.fused = "qkv" if self_attention else "kv"
        setattr(self, f"to_{self.fused}", merged)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B, N, D) to ``context`` (B, M, Dc), or to ``x`` itself when no context is given."""
        source = x if context is None else context
        if self.fused == "qkv":
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        elif self.fused == "kv":
            q = self.to_q(x)
            k, v = self.to_kv(source).chunk(2, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """Linear projection to twice the width, split in two halves: ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated projection."""
        return self.gate(self.proj(x))

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """``value * gelu(gate)`` of the projection's two halves (engine/geglu.py fuses it into one kernel on CUDA)."""
        value, gate = h.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``net.0`` (GEGLU to 4x width) → ``net.2`` (linear back); ``net.1`` is LDM's dropout."""

    def __init__(self, dim: int, mult: int = FF_MULT) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the feed-forward network."""
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the text context, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def fuse_projections(self) -> None:
        """Merge the attention projections (see :meth:`Attention.fuse_projections`)."""
        self.attn1.fuse_projections(self_attention=True)
        self.attn2.fuse_projections(self_attention=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens ``x`` (B, N, D) with the text ``context`` (B, M, Dc)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with a residual connection around it.

    ``proj_in`` / ``proj_out`` are 1x1 convs (SD1) or linear layers (``linear=True``: SD2, SDXL).
    """

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, *, linear: bool) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        self.linear = linear
        self.norm = GroupNorm(GROUPS, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in: nn.Module = Linear(channels, channels) if linear else Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, heads, channels // heads) for _ in range(depth)
        )
        self.proj_out: nn.Module = Linear(channels, channels) if linear else Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Apply the transformer to ``x`` (B, C, H, W) with the text ``context`` (B, M, Dc)."""
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous(memory_format=memory_format(x))
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class Stage(nn.ModuleList):
    """One entry of ``input_blocks`` / ``middle_block`` / ``output_blocks``: layers run in order.

    Each layer is given the inputs its type takes (time embedding, text context or upsampling size).
    """

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Run the layers on ``x``; ``size`` is the output size of an upsampling layer (None: 2x)."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x
