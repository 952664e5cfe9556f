"""The Stable Diffusion autoencoder (LDM ``AutoencoderKL``): encoder, decoder and diagonal Gaussian posterior.

Built from the diffusers-style config that ``architecture.vae_config_from_shapes`` derives; its state dict has the
keys of the original checkpoint with ``first_stage_model.`` removed (see :mod:`modules.engine.nets.vae_blocks`).
``encode`` / ``decode`` return objects shaped like diffusers' (``.latent_dist``, ``.sample``), and with tiling on,
images larger than a tile are encoded / decoded one overlapping tile at a time and blended linearly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from modules.engine.nets.layers import Conv2d
from modules.engine.nets.vae_blocks import Decoder, Encoder

logger = logging.getLogger(__name__)

DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
LOGVAR_RANGE = (-30.0, 20.0)
# diffusers config fields this network does not implement, with the only value it supports
FIXED_FIELDS = (("act_fn", "silu"), ("mid_block_add_attention", True))
Span = tuple[int, int]


@dataclass(frozen=True)
class VAEConfig:
    """The autoencoder's sizes and latent scaling (diffusers' ``AutoencoderKL`` config names and defaults)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    sample_size: int = 512
    force_upcast: bool = True
    norm_num_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    down_block_types: tuple[str, ...] = ()
    up_block_types: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Take the known fields of a diffusers-style dict (others are ignored) and check the block types.

        Raises:
            ValueError: A block type other than the LDM encoder/decoder blocks, a mismatched count, or a setting of
                :data:`FIXED_FIELDS` other than the LDM one.
        """
        for key, supported in FIXED_FIELDS:
            if config.get(key, supported) != supported:
                raise ValueError(f"unsupported VAE {key}={config[key]!r}: only {supported!r} is implemented")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in names}
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            if key in values:
                values[key] = tuple(values[key])
        ignored = sorted(k for k in config if k not in names and not k.startswith("_"))
        if ignored:
            logger.debug("VAE config keys ignored: %s", ", ".join(ignored))
        result = cls(**values)
        levels = len(result.block_out_channels)
        for key, kind in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            types = getattr(result, key)
            if types and (len(types) != levels or any(t != kind for t in types)):
                raise ValueError(f"unsupported VAE {key} {list(types)}: expected {levels} × {kind}")
        return result


class DiagonalGaussian:
    """The posterior ``N(mean, exp(logvar))`` from the encoder's moments (log-variance clamped to −30…20)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std · ε`` with ε drawn from ``generator`` (on its device, then moved) or the global RNG."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)


@dataclass
class EncoderOutput:
    """What ``encode`` returns: the posterior as ``latent_dist``."""

    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    """What ``decode`` returns: the pixels (about −1…1, not clamped) as ``sample``."""

    sample: torch.Tensor


def tile_spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Cover ``0…length`` with the fewest tiles of ``tile`` overlapping by at least ``overlap``, spread evenly.

    Returns ``[(0, length)]`` when it fits in one tile.
    """
    if length <= tile:
        return [(0, length)]
    overlap = min(max(overlap, 0), tile - 1)
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(s, s + tile) for s in starts]


def blend_weights(spans: Sequence[Span], scale: int) -> list[torch.Tensor]:
    """1-D weights of each tile (spans scaled by ``scale``): linear ramps across each overlap, summing to 1.

    A tile's weight rises across the part it shares with the previous tile and falls across the part it shares with
    the next; the weights are then divided by their sum at each position (which is already 1 where two tiles meet).
    """
    spans = [(s * scale, e * scale) for s, e in spans]
    weights = []
    for i, (start, end) in enumerate(spans):
        pos = torch.arange(end - start, dtype=torch.float64) + 0.5
        w = torch.ones(end - start, dtype=torch.float64)
        if i > 0:
            w = torch.minimum(w, pos / (spans[i - 1][1] - start))
        if i + 1 < len(spans):
            w = torch.minimum(w, (end - start - pos) / (end - spans[i + 1][0]))
        weights.append(w)
    total = torch.zeros(spans[-1][1], dtype=torch.float64)
    for (start, end), w in zip(spans, weights, strict=True):
        total[start:end] += w
    return [w / total[start:end] for (start, end), w in zip(spans, weights, strict=True)]


class AutoencoderKL(nn.Module):
    """The KL autoencoder of Stable Diffusion 1/2/XL, with the original checkpoint's key layout.

    Attributes:
        config: The sizes and latent scaling (:class:`VAEConfig`).
        use_tiling: Encode/decode large images in overlapping tiles (bounded memory).
        tile_latent_size: Tile edge in latent pixels (default: the config's ``sample_size`` / ``f``, as diffusers:
            64 for SD1/SD2, 128 for SDXL); pixel tiles are ``f`` times larger, ``f = 2^(levels−1)``.
        tile_overlap: The least overlap between neighbouring tiles, as a fraction of the tile.
    """

    def __init__(self, config: Mapping[str, Any] | VAEConfig) -> None:
        super().__init__()
        self.config = config if isinstance(config, VAEConfig) else VAEConfig.from_mapping(config)
        c = self.config
        channels, layers, groups = c.block_out_channels, c.layers_per_block, c.norm_num_groups
        self.encoder = Encoder(c.in_channels, c.latent_channels, channels, layers, groups)
        self.decoder = Decoder(c.latent_channels, c.out_channels, channels, layers, groups)
        moments = 2 * c.latent_channels
        self.quant_conv = Conv2d(moments, moments, 1) if c.use_quant_conv else None
        self.post_quant_conv = Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        self.scale_factor = 2 ** (len(channels) - 1)
        self.use_tiling = False
        self.tile_latent_size = max(1, c.sample_size // self.scale_factor)
        self.tile_overlap = 0.25

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.encoder.conv_in.weight.device

    def enable_tiling(self) -> None:
        """Encode and decode in overlapping tiles from now on."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Encode and decode in one pass from now on."""
        self.use_tiling = False

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Encode pixels ``[B, in, H, W]`` in −1…1 to the latent posterior (unscaled latents)."""
        tiled = self.use_tiling and max(x.shape[-2:]) > self.tile_latent_size * self.scale_factor
        moments = self._tiled_encode(x) if tiled else self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return EncoderOutput(DiagonalGaussian(moments))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """Decode unscaled latents ``[B, latent, h, w]`` to pixels ``[B, out, h·f, w·f]`` (about −1…1)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        tiled = self.use_tiling and max(z.shape[-2:]) > self.tile_latent_size
        return DecoderOutput(self._tiled_decode(z) if tiled else self.decoder(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> DecoderOutput:
        """Encode then decode (the posterior's mode, or a sample of it)."""
        posterior = self.encode(x).latent_dist
        return self.decode(posterior.sample(generator) if sample_posterior else posterior.mode())

    def _tiles(self, height: int, width: int, scale: int) -> Iterator[tuple[Span, Span, torch.Tensor]]:
        """Yield each tile's latent row and column spans and its blend weight (for outputs ``scale`` times larger)."""
        overlap = round(self.tile_latent_size * self.tile_overlap)
        rows = tile_spans(height, self.tile_latent_size, overlap)
        cols = tile_spans(width, self.tile_latent_size, overlap)
        row_weights, col_weights = blend_weights(rows, scale), blend_weights(cols, scale)
        for row, wy in zip(rows, row_weights, strict=True):
            for col, wx in zip(cols, col_weights, strict=True):
                yield row, col, (wy[:, None] * wx[None, :]).float()

    @staticmethod
    def _blend(
        net: nn.Module, pieces: Iterable[tuple[torch.Tensor, int, int, torch.Tensor]], size: tuple[int, int]
    ) -> torch.Tensor:
        """Run ``net`` on each piece in turn and add its output times the piece's weight at ``(y, x)`` of the result.

        The float32 result (spatial ``size``) is created on the first output's device, where offload hooks may have
        moved the computation; the weights of overlapping tiles sum to 1. Returns it in the outputs' dtype.
        """
        out, dtype = None, None
        for piece, y, x, weight in pieces:
            tile = net(piece)
            if out is None:
                out = torch.zeros((*tile.shape[:2], *size), device=tile.device, dtype=torch.float32)
            out[:, :, y : y + tile.shape[2], x : x + tile.shape[3]] += tile.float() * weight.to(tile.device)
            dtype = tile.dtype
        return out.to(dtype)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's moments, computed one overlapping pixel tile at a time and blended linearly."""
        f = self.scale_factor
        height, width = x.shape[-2:]
        lat_h, lat_w = height, width  # the latent grid of the one-pass encoder: each downsample floors the size
        for _ in range(len(self.config.block_out_channels) - 1):
            lat_h, lat_w = lat_h // 2, lat_w // 2
        # the last row/column of tiles also takes the pixels that do not fill a whole latent
        pieces = (
            (x[:, :, y0 * f : height if y1 == lat_h else y1 * f, x0 * f : width if x1 == lat_w else x1 * f], y0, x0, w)
            for (y0, y1), (x0, x1), w in self._tiles(lat_h, lat_w, 1)
        )
        return self._blend(self.encoder, pieces, (lat_h, lat_w))

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's pixels, computed one overlapping latent tile at a time and blended linearly."""
        f = self.scale_factor
        height, width = z.shape[-2:]
        pieces = ((z[:, :, y0:y1, x0:x1], y0 * f, x0 * f, w) for (y0, y1), (x0, x1), w in self._tiles(height, width, f))
        return self._blend(self.decoder, pieces, (height * f, width * f))


VAE = AutoencoderKL
