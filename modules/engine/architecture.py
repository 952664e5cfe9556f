"""Describe a checkpoint's architecture as diffusers/transformers configs, derived from tensor shapes (and its yaml).

Shapes give every size (channels, levels, attention placement, transformer depth, context width, text-encoder
width/depth/MLP). They cannot give attention head counts, the VAE scale factor, the default image size or eps vs v;
those follow the family's rule (SD1: 8 heads; SD2/SDXL and text encoders: 64 channels per head, at least 1) unless
a yaml says otherwise (:mod:`modules.engine.ldm_yaml`). When a yaml is given its sizes are checked against the shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modules.engine.types import ModelType
from modules.errors import CheckpointLoadError

Shapes = Mapping[str, Sequence[int]]
UNET = "model.diffusion_model."
SD1_TYPES = (ModelType.SD1, ModelType.SD1_INPAINT, ModelType.SD1_PIX2PIX)
VAE = "first_stage_model."
CLIP_SPECIAL_TOKENS = {"bos_token_id": 49406, "eos_token_id": 49407}


@dataclass(frozen=True)
class EncoderFamily:
    """How one kind of text encoder is stored and configured (a row of :data:`ENCODER_FAMILIES`)."""

    layout: str  # "hf": transformers key layout (CLIP-L); "openclip": OpenCLIP resblocks layout
    hidden_act: str
    pad_token: str
    pad_token_id: int
    model_class: str
    drop_last_layer: bool  # SD2's penultimate-layer OpenCLIP-H: diffusers builds one layer fewer than saved


ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    "clip-l": EncoderFamily("hf", "quick_gelu", "<|endoftext|>", 49407, "CLIPTextModel", False),
    "openclip-h": EncoderFamily("openclip", "gelu", "!", 0, "CLIPTextModel", True),
    "openclip-bigg": EncoderFamily("openclip", "gelu", "!", 0, "CLIPTextModelWithProjection", False),
}

# model type → (pipeline class, [(encoder family, key prefix)], scheduler/vae defaults)
FAMILY_ENCODERS: dict[ModelType, tuple[tuple[str, str], ...]] = {
    ModelType.SD1: (("clip-l", "cond_stage_model.transformer.text_model."),),
    ModelType.SD1_INPAINT: (("clip-l", "cond_stage_model.transformer.text_model."),),
    ModelType.SD1_PIX2PIX: (("clip-l", "cond_stage_model.transformer.text_model."),),
    ModelType.SD2: (("openclip-h", "cond_stage_model.model."),),
    ModelType.SD2_INPAINT: (("openclip-h", "cond_stage_model.model."),),
    ModelType.SDXL: (
        ("clip-l", "conditioner.embedders.0.transformer.text_model."),
        ("openclip-bigg", "conditioner.embedders.1.model."),
    ),
    ModelType.SDXL_INPAINT: (
        ("clip-l", "conditioner.embedders.0.transformer.text_model."),
        ("openclip-bigg", "conditioner.embedders.1.model."),
    ),
    ModelType.SDXL_REFINER: (("openclip-bigg", "conditioner.embedders.0.model."),),
}

PIPELINE_CLASSES: dict[ModelType, str] = {
    ModelType.SD1: "StableDiffusionPipeline",
    ModelType.SD1_INPAINT: "StableDiffusionInpaintPipeline",
    ModelType.SD1_PIX2PIX: "StableDiffusionInstructPix2PixPipeline",
    ModelType.SD2: "StableDiffusionPipeline",
    ModelType.SD2_INPAINT: "StableDiffusionInpaintPipeline",
    ModelType.SDXL: "StableDiffusionXLPipeline",
    ModelType.SDXL_INPAINT: "StableDiffusionXLInpaintPipeline",
    ModelType.SDXL_REFINER: "StableDiffusionXLImg2ImgPipeline",
}

# Per-family values shapes cannot tell: (UNet sample size in latents, VAE scale factor).
FAMILY_DEFAULTS: dict[bool, tuple[int, float]] = {False: (64, 0.18215), True: (128, 0.13025)}

# Fields that describe sizes (compared between yaml and shapes); the others are conventions shapes cannot tell.
UNET_SIZE_FIELDS = (
    "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
    "cross_attention_dim", "use_linear_projection", "transformer_layers_per_block",
    "projection_class_embeddings_input_dim", "addition_embed_type",
)  # fmt: skip
VAE_SIZE_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels")
TEXT_SIZE_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings", "projection_dim",
)  # fmt: skip


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: where its keys live in the file and the transformers config to build it with.

    Attributes:
        family: A key of :data:`ENCODER_FAMILIES`.
        prefix: Key prefix in the LDM file.
        config: ``CLIPTextConfig`` keyword arguments.
    """

    family: str
    prefix: str
    config: Mapping[str, Any]

    @property
    def model_class(self) -> str:
        """The transformers class name (``CLIPTextModel`` or ``CLIPTextModelWithProjection``)."""
        return ENCODER_FAMILIES[self.family].model_class

    @property
    def pad_token(self) -> str:
        """The tokenizer's pad token: ``<|endoftext|>`` for CLIP-L, ``!`` for OpenCLIP."""
        return ENCODER_FAMILIES[self.family].pad_token


@dataclass(frozen=True)
class ModelArchitecture:
    """Everything needed to build a checkpoint's networks, without its weights.

    Attributes:
        model_type: The detected family.
        pipeline_class: The matching diffusers pipeline class name (the reference tests and benchmark use it).
        unet: ``UNet2DConditionModel`` config.
        vae: ``AutoencoderKL`` config.
        text_encoders: In pipeline order (``text_encoder``, ``text_encoder_2``).
        scheduler: ``EulerDiscreteScheduler`` config (``prediction_type`` included).
        prediction_known: False when eps vs v was not stated (SD2 without yaml): the loader then probes the UNet.
    """

    model_type: ModelType
    pipeline_class: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    prediction_known: bool = True

    def cache_key(self) -> str:
        """Return a short hash of the whole architecture, for caching its config folder."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Return the sorted distinct integers captured by ``pattern`` (one group) over all keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def _shape(shapes: Shapes, key: str, source: str) -> Sequence[int]:
    """Return one tensor's shape, or raise a CheckpointLoadError naming the missing key."""
    if key not in shapes:
        raise CheckpointLoadError(f"{source}: missing tensor {key}; the file is incomplete or not this model type")
    return shapes[key]


def _transformer_depth(shapes: Shapes, block: str) -> int:
    """Count the transformer blocks inside one LDM spatial-transformer block (0 if it has none)."""
    found = _indices(shapes, re.escape(UNET + block) + r"\.1\.transformer_blocks\.(\d+)\.")
    return len(found)


def unet_config_from_shapes(shapes: Shapes, model_type: ModelType, *, source: str = "checkpoint") -> dict[str, Any]:
    """Derive the ``UNet2DConditionModel`` config from the LDM UNet's tensor shapes."""
    _, in_channels = _shape(shapes, UNET + "input_blocks.0.0.weight", source)[:2]
    n_inputs = len(_indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\."))
    n_levels = len(_indices(shapes, re.escape(UNET) + r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    res_blocks = (n_inputs - 1 - (n_levels - 1)) // n_levels
    firsts = [1 + level * (res_blocks + 1) for level in range(n_levels)]
    block_out = [int(_shape(shapes, f"{UNET}input_blocks.{i}.0.in_layers.2.weight", source)[0]) for i in firsts]
    attention = [f"{UNET}input_blocks.{i}.1.proj_in.weight" in shapes for i in firsts]
    mid_depth = _transformer_depth(shapes, "middle_block")
    depths = [
        _transformer_depth(shapes, f"input_blocks.{i}") if a else mid_depth
        for i, a in zip(firsts, attention, strict=True)
    ]
    first_attn = next((i for i, a in zip(firsts, attention, strict=True) if a), None)
    if first_attn is None or mid_depth == 0:
        raise CheckpointLoadError(f"{source}: the UNet has no cross-attention blocks; not a text-to-image UNet")
    attn = f"{UNET}input_blocks.{first_attn}.1."
    sdxl = model_type.is_sdxl
    config: dict[str, Any] = {
        "sample_size": FAMILY_DEFAULTS[sdxl][0],
        "in_channels": int(in_channels),
        "out_channels": int(_shape(shapes, UNET + "out.2.weight", source)[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": block_out,
        "layers_per_block": res_blocks,
        "cross_attention_dim": int(_shape(shapes, attn + "transformer_blocks.0.attn2.to_k.weight", source)[1]),
        "attention_head_dim": 8 if model_type in SD1_TYPES else heads_per_level(block_out),
        "use_linear_projection": len(_shape(shapes, attn + "proj_in.weight", source)) == 2,
        "transformer_layers_per_block": depths,
        "upcast_attention": model_type in (ModelType.SD2, ModelType.SD2_INPAINT),
    }
    if depths[-1] != mid_depth:
        reason = f"middle-block transformer depth {mid_depth} differs from the last level's {depths[-1]}"
        raise CheckpointLoadError(f"{source}: {reason}; unsupported")
    if UNET + "label_emb.0.0.weight" in shapes:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=int(shapes[UNET + "label_emb.0.0.weight"][1]),
        )
    return config


def heads_per_level(block_out_channels: Sequence[int]) -> list[int]:
    """Return SD2/SDXL head counts: 64 channels per head, at least one head."""
    return [max(1, int(c) // 64) for c in block_out_channels]


def vae_config_from_shapes(shapes: Shapes, model_type: ModelType, *, source: str = "checkpoint") -> dict[str, Any]:
    """Derive the ``AutoencoderKL`` config from the LDM VAE's tensor shapes (scale factor: the family default)."""
    levels = _indices(shapes, re.escape(VAE) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise CheckpointLoadError(f"{source}: no VAE tensors ({VAE}encoder.down.*); the checkpoint has no VAE")
    blocks = [int(_shape(shapes, f"{VAE}encoder.down.{i}.block.0.conv1.weight", source)[0]) for i in levels]
    conv_in = _shape(shapes, VAE + "encoder.conv_in.weight", source)
    latent_size, scale = FAMILY_DEFAULTS[model_type.is_sdxl]
    return {
        "sample_size": latent_size * 2 ** (len(levels) - 1),
        "in_channels": int(conv_in[1]),
        "out_channels": int(_shape(shapes, VAE + "decoder.conv_out.weight", source)[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": blocks,
        "layers_per_block": len(_indices(shapes, re.escape(VAE) + r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(_shape(shapes, VAE + "decoder.conv_in.weight", source)[1]),
        "scaling_factor": scale,
    }


def _hf_encoder_sizes(shapes: Shapes, prefix: str, source: str) -> dict[str, Any]:
    """Read CLIP-L sizes from transformers-layout keys (``…text_model.``)."""
    vocab, width = _shape(shapes, prefix + "embeddings.token_embedding.weight", source)
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(width),
        "max_position_embeddings": int(_shape(shapes, prefix + "embeddings.position_embedding.weight", source)[0]),
        "num_hidden_layers": len(_indices(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")),
        "intermediate_size": int(_shape(shapes, prefix + "encoder.layers.0.mlp.fc1.weight", source)[0]),
    }


def _openclip_encoder_sizes(shapes: Shapes, prefix: str, source: str) -> dict[str, Any]:
    """Read OpenCLIP sizes from its own layout (``token_embedding``, ``transformer.resblocks.N``)."""
    vocab, width = _shape(shapes, prefix + "token_embedding.weight", source)
    projection = shapes.get(prefix + "text_projection")
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(width),
        "max_position_embeddings": int(_shape(shapes, prefix + "positional_embedding", source)[0]),
        "num_hidden_layers": len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")),
        "intermediate_size": int(_shape(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight", source)[0]),
        "projection_dim": int(projection[-1]) if projection is not None else int(width),
    }


def text_encoder_config(family: str, sizes: Mapping[str, Any]) -> dict[str, Any]:
    """Complete a ``CLIPTextConfig`` from sizes: head rule, activation, special tokens, penultimate-layer rule."""
    spec = ENCODER_FAMILIES[family]
    config: dict[str, Any] = {
        "num_attention_heads": max(1, int(sizes["hidden_size"]) // 64),
        "projection_dim": int(sizes["hidden_size"]),
        "hidden_act": spec.hidden_act,
        "layer_norm_eps": 1e-5,
        **CLIP_SPECIAL_TOKENS,
        "pad_token_id": spec.pad_token_id,
        **sizes,
    }
    if spec.drop_last_layer:
        config["num_hidden_layers"] = int(sizes["num_hidden_layers"]) - 1
    return config


def text_encoders_from_shapes(
    shapes: Shapes, model_type: ModelType, *, source: str = "checkpoint"
) -> tuple[TextEncoderSpec, ...]:
    """Derive each text encoder's config from its tensor shapes."""
    specs = []
    for family, prefix in FAMILY_ENCODERS[model_type]:
        reader = _hf_encoder_sizes if ENCODER_FAMILIES[family].layout == "hf" else _openclip_encoder_sizes
        specs.append(TextEncoderSpec(family, prefix, text_encoder_config(family, reader(shapes, prefix, source))))
    return tuple(specs)


def scheduler_config(
    prediction_type: str = "epsilon", *, beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000
) -> dict[str, Any]:
    """Return the ``EulerDiscreteScheduler`` config LDM's "linear" (= diffusers' ``scaled_linear``) schedule maps to."""
    return {
        "_class_name": "EulerDiscreteScheduler",
        "num_train_timesteps": int(timesteps),
        "beta_start": float(beta_start),
        "beta_end": float(beta_end),
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }


def architecture_from_shapes(shapes: Shapes, model_type: ModelType, *, source: str = "checkpoint") -> ModelArchitecture:
    """Build the whole architecture from shapes alone (no yaml). SD2's eps/v is left to the loader's probe."""
    probe = model_type is ModelType.SD2  # SD2 inpainting (512-inpainting-ema) is eps; A1111 probes plain SD2 only
    return ModelArchitecture(
        model_type=model_type,
        pipeline_class=PIPELINE_CLASSES[model_type],
        unet=unet_config_from_shapes(shapes, model_type, source=source),
        vae=vae_config_from_shapes(shapes, model_type, source=source),
        text_encoders=text_encoders_from_shapes(shapes, model_type, source=source),
        scheduler=scheduler_config("epsilon"),
        prediction_known=not probe,
    )


def size_mismatches(stated: Mapping[str, Any], derived: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """List ``field: stated X, file has Y`` for each size field the two configs disagree on (absent = no claim)."""
    out = []
    for name in fields:
        if name in stated and stated[name] is not None and _norm(stated[name]) != _norm(derived.get(name)):
            out.append(f"{name}: yaml says {stated[name]}, the file has {derived.get(name)}")
    return out


def _norm(value: Any) -> Any:
    """Normalise lists/tuples so that configs compare by value."""
    return list(value) if isinstance(value, (list, tuple)) else value
