"""The Stable Diffusion UNet (LDM ``openaimodel`` UNetModel with spatial transformers), written for this project.

One class serves every supported family: SD1 (also 9-channel inpainting and 8-channel instruct-pix2pix, via
``in_channels``), SD2 (linear ``proj_in``/``proj_out``), SDXL base / inpaint / refiner (ADM "text_time"
conditioning through ``label_emb``). It is configured by the diffusers-style ``UNet2DConditionModel`` config that
:func:`modules.engine.architecture.unet_config_from_shapes` derives, computes what ``UNet2DConditionModel`` computes
for that config, and its state-dict keys are the original checkpoint's with ``model.diffusion_model.`` removed::

    with torch.device("meta"):
        unet = UNet(config)
    unet.load_state_dict({k.removeprefix("model.diffusion_model."): v for k, v in ...}, strict=True, assign=True)

Config semantics kept from diffusers: ``attention_head_dim`` is the NUMBER of heads (an int, or one per level; the
middle block uses the last level's); ``transformer_layers_per_block`` and ``cross_attention_dim`` may also be per
level (the middle block uses the last); ``upcast_attention`` is ignored (attention always runs through SDPA).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from modules.engine.nets.layers import Conv2d, GroupNorm, Linear
from modules.engine.nets.unet_blocks import (
    GROUPS,
    RESNET_EPS,
    Downsample,
    ResBlock,
    SpatialTransformer,
    Stage,
    TransformerBlock,
    Upsample,
    timestep_embedding,
)

logger = logging.getLogger(__name__)

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
# diffusers config keys this implementation does not read: the value it implements (any other value is refused).
FIXED_SETTINGS = MappingProxyType({
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "norm_num_groups": GROUPS, "norm_eps": RESNET_EPS,
    "time_embedding_type": "positional", "mid_block_type": "UNetMidBlock2DCrossAttn",
    "resnet_time_scale_shift": "default", "center_input_sample": False, "class_embed_type": None,
    "num_class_embeds": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "time_cond_proj_dim": None,
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "dual_cross_attention": False, "class_embeddings_concat": False,
    "num_attention_heads": None, "reverse_transformer_layers_per_block": None,
})  # fmt: skip


@dataclass(frozen=True)
class UNetConfig:
    """The UNet's diffusers-style config, read-only. Keys outside the named fields stay readable as attributes.

    List values are stored as tuples; ints stay ints (``config.cross_attention_dim`` is what the dict said).
    """

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    cross_attention_dim: int | tuple[int, ...]
    layers_per_block: int | tuple[int, ...] = 2
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    transformer_layers_per_block: int | tuple[int, ...] = 1
    upcast_attention: bool = False
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    sample_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Build from a config dict, checking it describes an architecture this module implements.

        Raises:
            ValueError: A required key is missing, a per-level list has the wrong length, or a setting differs
                from what is implemented (block types, embedding kinds, norm settings…).
        """
        named = {f.name for f in fields(cls)} - {"extra"}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in named}
        extra = {k: v for k, v in config.items() if k not in named}
        try:
            made = cls(**values, extra=extra)
        except TypeError as error:
            raise ValueError(f"UNet config incomplete: {error}") from error
        made.validate()
        return made

    def validate(self) -> None:
        """Raise ValueError if the config asks for something this implementation does not compute."""
        levels = len(self.block_out_channels)
        for name in ("layers_per_block", "attention_head_dim", "transformer_layers_per_block", "cross_attention_dim"):
            self.per_level(name)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(f"UNet config: {levels} levels but block types {self.down_block_types}, "
                             f"{self.up_block_types}")  # fmt: skip
        unknown = [t for t in self.down_block_types if t not in DOWN_BLOCKS]
        unknown += [t for t in self.up_block_types if t not in UP_BLOCKS]
        if unknown:
            raise ValueError(f"UNet config: unsupported block types {unknown}")
        if self.addition_embed_type not in (None, "text_time"):
            raise ValueError(f"UNet config: unsupported addition_embed_type {self.addition_embed_type!r}")
        sizes = (self.projection_class_embeddings_input_dim, self.addition_time_embed_dim)
        if self.addition_embed_type and not all(sizes):
            raise ValueError("UNet config: text_time conditioning needs projection_class_embeddings_input_dim and "
                             "addition_time_embed_dim")  # fmt: skip
        for key, implemented in FIXED_SETTINGS.items():
            if key in self.extra and self.extra[key] != implemented:
                raise ValueError(f"UNet config: {key}={self.extra[key]!r} is not supported (only {implemented!r})")

    def per_level(self, name: str) -> tuple[Any, ...]:
        """Return a field as one value per level (an int broadcast to every level).

        Raises:
            ValueError: The field is a list whose length is not the number of levels.
        """
        value = getattr(self, name)
        levels = len(self.block_out_channels)
        if not isinstance(value, tuple):
            return (value,) * levels
        if len(value) != levels:
            raise ValueError(f"UNet config: {name} has {len(value)} entries for {levels} levels")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict (named fields and extra keys)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**dict(self.extra), **out}

    def __getitem__(self, key: str) -> Any:
        """Read a key dict-style, as diffusers' ``FrozenDict`` config allows (``config["in_channels"]``)."""
        try:
            return getattr(self, key)
        except AttributeError as error:
            raise KeyError(key) from error

    def __getattr__(self, name: str) -> Any:
        """Look up keys of the source dict that are not named fields (e.g. ``_class_name``)."""
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"UNet config has no {name!r}")


@dataclass(frozen=True)
class UNetOutput:
    """The UNet's result: ``sample`` has the input's batch and spatial size and ``out_channels`` channels."""

    sample: torch.Tensor


def _broadcast_timesteps(timestep: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """Return the timestep(s) as a (batch,) tensor on ``device``; a 0-d, (1,) or (batch,) tensor, or a number."""
    if not isinstance(timestep, torch.Tensor):
        return torch.full((batch,), float(timestep), dtype=torch.float32, device=device)
    return timestep.reshape(-1).to(device).expand(batch)


class UNet(nn.Module):
    """The LDM UNet: ``input_blocks`` → ``middle_block`` → ``output_blocks`` (with skip concatenations) → ``out``.

    Attributes:
        config: The :class:`UNetConfig` it was built from.
    """

    def __init__(self, config: Mapping[str, Any] | UNetConfig) -> None:
        super().__init__()
        self.config = config if isinstance(config, UNetConfig) else UNetConfig.from_mapping(config)
        cfg = self.config
        base = cfg.block_out_channels[0]
        emb_dim = 4 * base
        self.time_embed = nn.Sequential(Linear(base, emb_dim), nn.SiLU(), Linear(emb_dim, emb_dim))
        self.label_emb: nn.Sequential | None = None
        if cfg.addition_embed_type == "text_time":
            adm = int(cfg.projection_class_embeddings_input_dim or 0)
            self.label_emb = nn.Sequential(nn.Sequential(Linear(adm, emb_dim), nn.SiLU(), Linear(emb_dim, emb_dim)))
        skips = self._build_input_blocks(emb_dim)
        heads, depths = cfg.per_level("attention_head_dim"), cfg.per_level("transformer_layers_per_block")
        top = cfg.block_out_channels[-1]
        context = cfg.per_level("cross_attention_dim")[-1]
        self.middle_block = Stage(
            [
                ResBlock(top, emb_dim, top),
                SpatialTransformer(top, heads[-1], depths[-1], context, linear=cfg.use_linear_projection),
                ResBlock(top, emb_dim, top),
            ]
        )
        self._build_output_blocks(emb_dim, skips)
        self.out = nn.Sequential(
            GroupNorm(GROUPS, base, eps=RESNET_EPS), nn.SiLU(), Conv2d(base, cfg.out_channels, 3, padding=1)
        )
        logger.debug(
            "UNet: %d levels %s, %d input / %d output blocks, ADM %s",
            len(cfg.block_out_channels), cfg.block_out_channels, len(self.input_blocks), len(self.output_blocks),
            cfg.addition_embed_type,
        )  # fmt: skip

    def _transformer(self, level: int) -> SpatialTransformer:
        """Return a new spatial transformer for one level (its channels, heads, depth and context width)."""
        cfg = self.config
        return SpatialTransformer(
            cfg.block_out_channels[level],
            cfg.per_level("attention_head_dim")[level],
            cfg.per_level("transformer_layers_per_block")[level],
            cfg.per_level("cross_attention_dim")[level],
            linear=cfg.use_linear_projection,
        )

    def _build_input_blocks(self, emb_dim: int) -> list[int]:
        """Create ``input_blocks``; return the channel count of each block's output (the skips, in order)."""
        cfg = self.config
        channels = cfg.block_out_channels[0]
        self.input_blocks = nn.ModuleList([Stage([Conv2d(cfg.in_channels, channels, 3, padding=1)])])
        skips = [channels]
        levels = len(cfg.block_out_channels)
        counts = cfg.per_level("layers_per_block")
        for level, (width, count) in enumerate(zip(cfg.block_out_channels, counts, strict=True)):
            for _ in range(count):
                layers: list[nn.Module] = [ResBlock(channels, emb_dim, width)]
                channels = width
                if cfg.down_block_types[level] == "CrossAttnDownBlock2D":
                    layers.append(self._transformer(level))
                self.input_blocks.append(Stage(layers))
                skips.append(channels)
            if level != levels - 1:
                self.input_blocks.append(Stage([Downsample(channels)]))
                skips.append(channels)
        return skips

    def _build_output_blocks(self, emb_dim: int, skips: list[int]) -> None:
        """Create ``output_blocks``, consuming the skip channel counts from the end."""
        cfg = self.config
        skips = list(skips)
        channels = cfg.block_out_channels[-1]
        counts = cfg.per_level("layers_per_block")
        levels = len(cfg.block_out_channels)
        self.output_blocks = nn.ModuleList()
        for position, level in enumerate(reversed(range(levels))):
            width = cfg.block_out_channels[level]
            for index in range(counts[level] + 1):
                layers: list[nn.Module] = [ResBlock(channels + skips.pop(), emb_dim, width)]
                channels = width
                if cfg.up_block_types[position] == "CrossAttnUpBlock2D":
                    layers.append(self._transformer(level))
                if level and index == counts[level]:
                    layers.append(Upsample(channels))
                self.output_blocks.append(Stage(layers))

    def fuse_projections(self) -> None:
        """Merge each attention's projections that share an input into one matmul (q/k/v, and k/v of the text).

        The output is unchanged up to matmul rounding; loading by the file's key names must happen before.
        """
        for module in self.modules():
            if isinstance(module, TransformerBlock):
                module.fuse_projections()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first parameter."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the first parameter."""
        return next(self.parameters()).device

    def _embedding(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, added_cond_kwargs: Mapping[str, Any] | None
    ) -> torch.Tensor:
        """Return the time embedding (plus the SDXL size/crop/pooled-text embedding) in the model's dtype."""
        weight = self.time_embed[0].weight
        steps = _broadcast_timesteps(timestep, sample.shape[0], sample.device)
        emb = self.time_embed(timestep_embedding(steps, weight.shape[1]).to(weight.dtype))
        if self.label_emb is None:
            return emb
        if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
            raise ValueError("this UNet needs added_cond_kwargs with 'text_embeds' and 'time_ids' (SDXL)")
        text_embeds = added_cond_kwargs["text_embeds"]
        time_ids = added_cond_kwargs["time_ids"]
        dim = int(self.config.addition_time_embed_dim or 0)
        time_embeds = timestep_embedding(time_ids.flatten(), dim).reshape(text_embeds.shape[0], -1)
        adm = torch.cat([text_embeds.to(emb.dtype), time_embeds.to(emb.dtype)], dim=-1)
        return emb + self.label_emb(adm)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) for a batch of latents.

        Args:
            sample: Latents, (B, in_channels, H, W); H and W need not be multiples of 8 (upsampling then goes to
                the size of the matching skip connection).
            timestep: A number, or a 0-d, (1,) or (B,) tensor (float or int).
            encoder_hidden_states: The text context, (B, tokens, cross_attention_dim).
            added_cond_kwargs: SDXL only: ``text_embeds`` (B, pooled width) and ``time_ids`` (B, 5 or 6).
            return_dict: Return a :class:`UNetOutput` (True) or a 1-tuple.

        Raises:
            ValueError: SDXL conditioning is missing.
        """
        emb = self._embedding(sample, timestep, added_cond_kwargs)
        context = encoder_hidden_states
        h = sample
        skips: list[torch.Tensor] = []
        for stage in self.input_blocks:
            h = stage(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for stage in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = stage(h, emb, context, skips[-1].shape[-2:] if skips else None)
        h = self.out(h)
        return UNetOutput(sample=h) if return_dict else (h,)
