"""Map an LDM/SGM yaml (the ``<checkpoint>.yaml`` beside a file) to diffusers configs, checked against the shapes.

The mapping is offline-loading.md §4. The yaml wins for what shapes cannot tell (head counts, eps vs v, image size,
VAE scale factor, text-encoder details in the test yamls' non-standard ``text_config`` block); every size it states
must agree with the tensors, otherwise :class:`~modules.errors.CheckpointLoadError` names the disagreements.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modules.engine.architecture import (
    ENCODER_FAMILIES,
    FAMILY_DEFAULTS,
    FAMILY_ENCODERS,
    PIPELINE_CLASSES,
    TEXT_SIZE_FIELDS,
    UNET_SIZE_FIELDS,
    VAE_SIZE_FIELDS,
    ModelArchitecture,
    Shapes,
    TextEncoderSpec,
    architecture_from_shapes,
    heads_per_level,
    scheduler_config,
    size_mismatches,
    text_encoder_config,
)
from modules.engine.types import ModelType
from modules.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

# yaml ``target`` class name → text-encoder family
ENCODER_TARGETS: dict[str, str] = {
    "FrozenCLIPEmbedder": "clip-l",
    "FrozenOpenCLIPEmbedder": "openclip-h",
    "FrozenOpenCLIPEmbedder2": "openclip-bigg",
}


def load_yaml(path: Path) -> dict[str, Any]:
    """Read an LDM/SGM yaml with OmegaConf into plain containers.

    Raises:
        CheckpointLoadError: The file is not valid yaml or has no ``model.params``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, YAMLError, OmegaConfBaseException) as error:
        raise CheckpointLoadError(f"{Path(path).name}: unreadable yaml ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("model", {}).get("params"), dict):
        raise CheckpointLoadError(f"{Path(path).name}: not an LDM/SGM model yaml (no model.params)")
    return data


def _params(yaml_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``model.params``."""
    return yaml_cfg["model"]["params"]


def unet_config_from_yaml(yaml_cfg: Mapping[str, Any], model_type: ModelType) -> dict[str, Any]:
    """Map ``unet_config`` (LDM) or ``network_config`` (SGM) params to a ``UNet2DConditionModel`` config."""
    params = _params(yaml_cfg)
    unet = (params.get("unet_config") or params.get("network_config") or {}).get("params", {})
    block_out = [int(unet["model_channels"]) * int(m) for m in unet["channel_mult"]]
    attention = [2**i in unet["attention_resolutions"] for i in range(len(block_out))]
    depth = unet.get("transformer_depth") or 1
    depth_list = [int(depth)] * len(block_out) if isinstance(depth, int) else [int(d) for d in depth]
    mid = int(unet.get("transformer_depth_middle") or depth_list[-1])
    context = unet.get("context_dim")
    head_channels = unet.get("num_head_channels", -1)
    config: dict[str, Any] = {
        "sample_size": int(params.get("image_size") or FAMILY_DEFAULTS[model_type.is_sdxl][0]),
        "in_channels": int(unet["in_channels"]),
        "out_channels": int(unet["out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": block_out,
        "layers_per_block": int(unet["num_res_blocks"]),
        "cross_attention_dim": int(context[0] if isinstance(context, (list, tuple)) else context),
        "attention_head_dim": (
            heads_by_channels(block_out, int(head_channels)) if head_channels not in (None, -1) else unet["num_heads"]
        ),
        "use_linear_projection": bool(unet.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": [d if a else mid for d, a in zip(depth_list, attention, strict=True)],
        "upcast_attention": model_type in (ModelType.SD2, ModelType.SD2_INPAINT),
    }
    if unet.get("num_classes") == "sequential":
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=int(unet["adm_in_channels"]),
        )
    return config


def heads_by_channels(block_out_channels: list[int], head_channels: int) -> list[int]:
    """Return per-level head counts for a fixed channels-per-head (``num_head_channels``), at least 1."""
    if head_channels == 64:
        return heads_per_level(block_out_channels)
    return [max(1, c // head_channels) for c in block_out_channels]


def vae_config_from_yaml(yaml_cfg: Mapping[str, Any], model_type: ModelType) -> dict[str, Any]:
    """Map ``first_stage_config.params.ddconfig`` (+ ``scale_factor``) to an ``AutoencoderKL`` config."""
    params = _params(yaml_cfg)
    dd = params["first_stage_config"]["params"]["ddconfig"]
    block_out = [int(dd["ch"]) * int(m) for m in dd["ch_mult"]]
    latent_size, default_scale = FAMILY_DEFAULTS[model_type.is_sdxl]
    latent_size = int(params.get("image_size") or latent_size)
    return {
        "sample_size": latent_size * 2 ** (len(block_out) - 1),
        "in_channels": int(dd.get("in_channels", 3)),
        "out_channels": int(dd.get("out_ch", 3)),
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
        "block_out_channels": block_out,
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "scaling_factor": float(params.get("scale_factor", default_scale)),
    }


def encoder_entries(yaml_cfg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Return ``(family, params)`` for each text encoder the yaml names, in order."""
    params = _params(yaml_cfg)
    if "conditioner_config" in params:
        entries = params["conditioner_config"]["params"]["emb_models"]
    else:
        entries = [params["cond_stage_config"]]
    found = []
    for entry in entries:
        family = ENCODER_TARGETS.get(str(entry.get("target", "")).rsplit(".", 1)[-1])
        if family is not None:
            found.append((family, entry.get("params") or {}))
    return found


def prediction_type_from_yaml(yaml_cfg: Mapping[str, Any]) -> str:
    """Return ``v_prediction`` for ``parameterization: v`` (LDM) or a ``VScaling`` denoiser (SGM), else ``epsilon``."""
    params = _params(yaml_cfg)
    scaling = str(params.get("denoiser_config", {}).get("params", {}).get("scaling_config", {}).get("target", ""))
    return "v_prediction" if params.get("parameterization") == "v" or "VScaling" in scaling else "epsilon"


def scheduler_config_from_yaml(yaml_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Map ``linear_start``/``linear_end``/``timesteps``/``parameterization`` to the scheduler config."""
    params = _params(yaml_cfg)
    return scheduler_config(
        prediction_type_from_yaml(yaml_cfg),
        beta_start=params.get("linear_start", 0.00085),
        beta_end=params.get("linear_end", 0.012),
        timesteps=params.get("timesteps", 1000),
    )


def _merge_encoder(stated: Mapping[str, Any], derived: TextEncoderSpec, source: str) -> TextEncoderSpec:
    """Apply a yaml ``text_config`` block to a shape-derived encoder, after checking its sizes."""
    block = dict(stated.get("text_config") or {})
    if not block:
        return derived
    saved = dict(derived.config)
    if ENCODER_FAMILIES[derived.family].drop_last_layer and "num_hidden_layers" in block:
        saved["num_hidden_layers"] += 1  # the text_config describes the encoder as saved (all layers)
    problems = size_mismatches(block, saved, TEXT_SIZE_FIELDS)
    if problems:
        raise CheckpointLoadError(f"{source}: the yaml's {derived.family} text_config disagrees: {'; '.join(problems)}")
    merged = text_encoder_config(derived.family, {**saved, **block})
    return TextEncoderSpec(derived.family, derived.prefix, merged)


def architecture_from_yaml(
    shapes: Shapes, model_type: ModelType, yaml_cfg: Mapping[str, Any], *, source: str = "checkpoint"
) -> ModelArchitecture:
    """Build the architecture from the yaml, after checking every size it states against the tensor shapes.

    Raises:
        CheckpointLoadError: The yaml is for another model type, or a size disagrees (each one is listed).
    """
    derived = architecture_from_shapes(shapes, model_type, source=source)
    try:
        unet = unet_config_from_yaml(yaml_cfg, model_type)
        vae = vae_config_from_yaml(yaml_cfg, model_type)
        encoders = encoder_entries(yaml_cfg)
        scheduler = scheduler_config_from_yaml(yaml_cfg)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = f"the yaml lacks a field the {model_type.value} layout needs ({error})"
        raise CheckpointLoadError(f"{source}: {reason}") from error
    problems = size_mismatches(unet, derived.unet, UNET_SIZE_FIELDS)
    problems += [f"vae {p}" for p in size_mismatches(vae, derived.vae, VAE_SIZE_FIELDS)]
    expected = [family for family, _ in FAMILY_ENCODERS[model_type]]
    if [family for family, _ in encoders] != expected:
        problems.append(f"text encoders: yaml names {[f for f, _ in encoders]}, the file has {expected}")
    if problems:
        raise CheckpointLoadError(
            f"{source}: the yaml beside it does not match the {model_type.value} checkpoint: " + "; ".join(problems)
        )
    text = tuple(_merge_encoder(p, spec, source) for (_, p), spec in zip(encoders, derived.text_encoders, strict=True))
    return ModelArchitecture(
        model_type=model_type,
        pipeline_class=PIPELINE_CLASSES[model_type],
        unet={**derived.unet, **unet},
        vae=vae,
        text_encoders=text,
        scheduler=scheduler,
        prediction_known=True,
    )


def build_architecture(
    shapes: Shapes, model_type: ModelType, yaml_path: Path | None = None, *, source: str = "checkpoint"
) -> ModelArchitecture:
    """Return the architecture from the yaml beside the checkpoint when there is one, else from shapes alone."""
    if yaml_path is None:
        return architecture_from_shapes(shapes, model_type, source=source)
    logger.debug("%s: using yaml %s", source, yaml_path)
    return architecture_from_yaml(shapes, model_type, load_yaml(yaml_path), source=source)
