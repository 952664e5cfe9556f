"""Rename diffusers/transformers state dicts to the original LDM single-file key layout, failing on unknown keys.

Each ``*_to_ldm`` function maps every key it is given and raises ``UnmappedKeyError`` for a key it does not know, so
a change in the diffusers or transformers module layout cannot slip through. The functions work on any tensors,
meta tensors included (``header_shapes`` uses that). The ``*_extras`` functions return the additional tensors real
files carry (DDPM schedule buffers, EMA counters, CLIP ``position_ids``, OpenCLIP ``logit_scale``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_WB = r"(weight|bias)"
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
TRANSFORMER_INNER = re.compile(
    r"(norm|proj_in|proj_out|transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|norm[123]))\." + _WB
)
CLIP_KEY = re.compile(
    r"text_model\.(embeddings\.(token_embedding|position_embedding)\.weight|embeddings\.position_ids|"
    r"final_layer_norm\." + _WB + r"|encoder\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\." + _WB + ")"
)
OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
DDPM_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
EMA_KEYS = ("model_ema.decay", "model_ema.num_updates")


class UnmappedKeyError(ValueError):
    """A state-dict key that the LDM key mapping does not know."""

    def __init__(self, component: str, key: str) -> None:
        super().__init__(f"{component}: no LDM name for key {key!r}; the diffusers/transformers layout changed?")


def _unet_inner(part: str, rest: str, key: str) -> str:
    """Map the part of a UNet key inside a resnet or transformer block."""
    if part == "resnets":
        name, _, param = rest.rpartition(".")
        if name in UNET_RESNET and param in ("weight", "bias"):
            return f"0.{UNET_RESNET[name]}.{param}"
    elif TRANSFORMER_INNER.fullmatch(rest):
        return f"1.{rest}"
    raise UnmappedKeyError("unet", key)


def unet_key(key: str, layers_per_block: int, up_attention: frozenset[int]) -> str:
    """Return the openaimodel name (without prefix) of one ``UNet2DConditionModel`` key.

    Args:
        key: The diffusers key.
        layers_per_block: ``n``, the residual blocks per down level (up levels have n+1).
        up_attention: The up-block indices that have attention (their upsampler sits at index 2, not 1).

    Returns:
        The LDM key below ``model.diffusion_model.``.

    Raises:
        UnmappedKeyError: For any key outside the known layout.
    """
    n = layers_per_block
    head, _, param = key.rpartition(".")
    if head in UNET_TOP and param in ("weight", "bias"):
        return f"{UNET_TOP[head]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if j < n:
            return f"input_blocks.{1 + level * (n + 1) + j}.{_unet_inner(part, rest, key)}"
    elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\." + _WB, key):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    elif m := re.fullmatch(r"mid_block\.(resnets\.[01]|attentions\.0)\.(.+)", key):
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[m[1]]
        return f"middle_block.{index}.{_unet_inner(m[1][:-2], m[2], key)[2:]}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if j <= n:
            return f"output_blocks.{block * (n + 1) + j}.{_unet_inner(part, rest, key)}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\." + _WB, key):
        block = int(m[1])
        return f"output_blocks.{block * (n + 1) + n}.{2 if block in up_attention else 1}.conv.{m[2]}"
    raise UnmappedKeyError("unet", key)


def unet_to_ldm(state: Mapping[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename a ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys.

    Args:
        state: The diffusers state dict.
        layers_per_block: The UNet's ``layers_per_block``.

    Returns:
        The renamed tensors (the same tensor objects).
    """
    up_attention = frozenset(int(m[1]) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k)))
    return {UNET_PREFIX + unet_key(k, layers_per_block, up_attention): v for k, v in state.items()}


def vae_key(key: str, levels: int) -> str:
    """Return the LDM autoencoder name (without prefix) of one ``AutoencoderKL`` key.

    Args:
        key: The diffusers key.
        levels: The number of resolution levels (LDM numbers decoder levels from the bottom).

    Returns:
        The LDM key below ``first_stage_model.``.

    Raises:
        UnmappedKeyError: For any key outside the known layout.
    """
    resnet = "(" + "|".join(VAE_RESNET) + r")\." + _WB
    if re.fullmatch(r"(post_)?quant_conv\." + _WB, key) or re.fullmatch(r"(en|de)coder\.conv_(in|out)\." + _WB, key):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\." + _WB, key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\." + resnet, key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{VAE_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(
        r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\." + _WB, key
    ):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\." + resnet, key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{VAE_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\." + _WB, key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\." + resnet, key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{VAE_RESNET[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\." + _WB, key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    raise UnmappedKeyError("vae", key)


def vae_to_ldm(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKL`` state dict to ``first_stage_model.*`` keys.

    The mid-block attention's linear weights become 1×1 convolution weights, as LDM stores them.

    Args:
        state: The diffusers state dict.
        levels: The number of resolution levels (``len(block_out_channels)``).

    Returns:
        The renamed (and, for the attention weights, reshaped) tensors.
    """
    out = {}
    for key, value in state.items():
        name = vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and not name.endswith("norm.weight"):
            value = value[:, :, None, None]
        out[VAE_PREFIX + name] = value
    return out


def _text_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise transformers 5's flattened ``CLIPTextModel`` keys to the ``text_model.*`` layout."""
    out = {}
    for key, value in state.items():
        out[key if key.startswith("text_model.") or key == "text_projection.weight" else f"text_model.{key}"] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Rename a CLIP-L ``CLIPTextModel`` state dict to ``<prefix>text_model.*`` keys (transformers 4 layout).

    Args:
        state: The transformers state dict (flattened or not).
        prefix: E.g. ``cond_stage_model.transformer.`` or ``conditioner.embedders.0.transformer.``.

    Returns:
        The renamed tensors.

    Raises:
        UnmappedKeyError: For any key outside the known layout (a projection included: CLIP-L files have none).
    """
    out = {}
    for key, value in _text_model_keys(state).items():
        if not CLIP_KEY.fullmatch(key):
            raise UnmappedKeyError("clip", key)
        out[prefix + key] = value
    return out


def _openclip_key(key: str) -> tuple[str, int | None]:
    """Return the OpenCLIP name of one normalised HF CLIP key and, for q/k/v, its slot in ``in_proj``."""
    if key in OPENCLIP_TOP:
        return OPENCLIP_TOP[key], None
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\." + _WB, key):
        return f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", "qkv".index(m[2])
    layer = "(" + "|".join(re.escape(k) for k in OPENCLIP_LAYER) + r")\." + _WB
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\." + layer, key):
        return f"transformer.resblocks.{m[1]}.{OPENCLIP_LAYER[m[2]]}.{m[3]}", None
    raise UnmappedKeyError("openclip", key)


def openclip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Rename an HF CLIP text model state dict to the OpenCLIP layout under ``prefix``.

    q, k and v are concatenated into ``attn.in_proj_weight`` / ``in_proj_bias``; the HF ``text_projection`` (a
    Linear weight) is stored transposed as OpenCLIP's ``text_projection`` matrix. ``position_ids`` is dropped.

    Args:
        state: A ``CLIPTextModel`` or ``CLIPTextModelWithProjection`` state dict.
        prefix: E.g. ``cond_stage_model.model.`` or ``conditioner.embedders.1.model.``.

    Returns:
        The renamed tensors.

    Raises:
        UnmappedKeyError: For an unknown key, or a q/k/v triple with a member missing.
    """
    out: dict[str, torch.Tensor] = {}
    slots: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.position_ids":
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
            continue
        name, slot = _openclip_key(key)
        if slot is None:
            out[prefix + name] = value
        else:
            slots.setdefault(name, [None, None, None])[slot] = value
    for name, parts in slots.items():
        if any(p is None for p in parts):
            raise UnmappedKeyError("openclip", f"{name} (q/k/v incomplete)")
        out[prefix + name] = torch.cat(parts, dim=0)
    return out


def ddpm_extras(linear_start: float, linear_end: float, timesteps: int) -> dict[str, torch.Tensor]:
    """Return the 12 DDPM schedule buffers and the EMA counters that SD1/SD2 files carry.

    The betas are LDM's "linear" schedule: ``linspace(sqrt(start), sqrt(end), T) ** 2``, computed in float64.

    Args:
        linear_start: The first beta.
        linear_end: The last beta.
        timesteps: The number of training timesteps.

    Returns:
        ``{name: float32 tensor [T]}`` plus ``model_ema.decay`` (float32) and ``model_ema.num_updates`` (int32).
    """
    betas = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    cumprod = torch.cumprod(alphas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    variance = betas * (1.0 - prev) / (1.0 - cumprod)
    values = (
        betas,
        cumprod,
        prev,
        cumprod.sqrt(),
        (1.0 - cumprod).sqrt(),
        (1.0 - cumprod).log(),
        (1.0 / cumprod).sqrt(),
        (1.0 / cumprod - 1.0).sqrt(),
        variance,
        variance.clamp(min=1e-20).log(),
        betas * prev.sqrt() / (1.0 - cumprod),
        (1.0 - prev) * alphas.sqrt() / (1.0 - cumprod),
    )
    out = {name: value.float() for name, value in zip(DDPM_BUFFERS, values, strict=True)}
    out[EMA_KEYS[0]] = torch.tensor(0.9999, dtype=torch.float32)
    out[EMA_KEYS[1]] = torch.tensor(0, dtype=torch.int32)
    return out


def clip_extras(prefix: str, positions: int) -> dict[str, torch.Tensor]:
    """Return the ``text_model.embeddings.position_ids`` buffer (int64 ``[1, positions]``) under ``prefix``."""
    return {prefix + "text_model.embeddings.position_ids": torch.arange(positions, dtype=torch.int64)[None]}


def openclip_extras(prefix: str) -> dict[str, torch.Tensor]:
    """Return OpenCLIP's ``logit_scale`` (``log(1/0.07)``, a float32 scalar) under ``prefix``."""
    return {prefix + "logit_scale": torch.tensor(math.log(1 / 0.07), dtype=torch.float32)}
