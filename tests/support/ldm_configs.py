"""Derive diffusers/transformers component configs from an LDM/SGM yaml, and write a diffusers config folder.

This is the mapping of ``spec/offline-loading.md`` §4, written for the test-fixture generator: the fixture builds its
random models from these configs, and verifies its files by loading them with diffusers through a folder written by
``write_config_folder``. Real yamls carry no text-encoder sizes; ``text_config`` overrides the standard ones.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.support.ldm_yaml import CLIP_POSITIONS, CLIP_VOCAB, TEXT_ARCHS

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"

# yaml text-encoder target suffix → (architecture, OpenCLIP key style, diffusers drops the last layer).
TEXT_TARGETS = {
    "FrozenCLIPEmbedder": ("clip_l", False, False),
    "FrozenOpenCLIPEmbedder": ("openclip_h", True, True),
    "FrozenOpenCLIPEmbedder2": ("openclip_bigg", True, False),
}


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a checkpoint: where its keys live and how diffusers loads it.

    Attributes:
        component: The pipeline component name (``text_encoder`` or ``text_encoder_2``).
        ldm_prefix: Key prefix in the file, e.g. ``cond_stage_model.transformer.`` or
            ``conditioner.embedders.1.model.``.
        openclip: Whether the keys use the OpenCLIP layout (``transformer.resblocks.*``) rather than HF CLIP.
        config: CLIPTextConfig fields of the architecture as saved (all layers).
        drop_last_layer: diffusers loads one layer fewer (SD2's penultimate OpenCLIP-H).
        with_projection: diffusers loads it as ``CLIPTextModelWithProjection`` (SDXL's bigG).
        pad_token: The tokenizer's pad token (``!`` for OpenCLIP encoders).
    """

    component: str
    ldm_prefix: str
    openclip: bool
    config: Mapping[str, Any]
    drop_last_layer: bool
    with_projection: bool
    pad_token: str

    def diffusers_config(self) -> dict[str, Any]:
        """Return the CLIPTextConfig fields diffusers loads (one layer fewer for SD2's OpenCLIP-H)."""
        config = dict(self.config)
        config["num_hidden_layers"] -= int(self.drop_last_layer)
        return config


@dataclass(frozen=True)
class Layout:
    """Everything the generator and the verifier need to know about one yaml.

    Attributes:
        sgm: Whether the yaml is an SGM (SDXL) config.
        pipeline_class: The diffusers pipeline class name.
        unet: UNet2DConditionModel config.
        vae: AutoencoderKL config.
        scheduler: EulerDiscreteScheduler config.
        text_encoders: The text encoders, in component order.
        schedule: (linear_start, linear_end, timesteps) for the DDPM buffers of LDM files.
    """

    sgm: bool
    pipeline_class: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    schedule: tuple[float, float, int] = field(default=(0.00085, 0.012, 1000))


def unet_config(unet: Mapping[str, Any], sample_size: int) -> dict[str, Any]:
    """Map openaimodel ``UNetModel`` params to a ``UNet2DConditionModel`` config.

    Args:
        unet: The ``unet_config.params`` / ``network_config.params`` of the yaml.
        sample_size: The latent size (``image_size`` of the yaml; 128 for SGM).

    Returns:
        The diffusers config dict.
    """
    channels = [unet["model_channels"] * m for m in unet["channel_mult"]]
    attention = [2**i in unet["attention_resolutions"] for i in range(len(channels))]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    if "num_head_channels" in unet and unet["num_head_channels"] != -1:
        heads: int | list[int] = [c // unet["num_head_channels"] for c in channels]
    else:
        heads = unet["num_heads"]
    depth = unet.get("transformer_depth", 1)
    context = unet["context_dim"]
    config: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": unet["num_res_blocks"],
        "attention_head_dim": heads,
        "use_linear_projection": bool(unet.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": list(depth) if isinstance(depth, list | tuple) else depth,
        "cross_attention_dim": context[0] if isinstance(context, list | tuple) else context,
    }
    if unet.get("num_classes") == "sequential":
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": unet["adm_in_channels"],
        }
    return config


def vae_config(first_stage: Mapping[str, Any], scale_factor: float, latent_size: int) -> dict[str, Any]:
    """Map ``first_stage_config.params`` to an ``AutoencoderKL`` config.

    Args:
        first_stage: The first-stage params (with ``ddconfig``).
        scale_factor: The yaml's ``scale_factor``.
        latent_size: The latent size; the VAE ``sample_size`` is latent × 2^(levels−1).

    Returns:
        The diffusers config dict.
    """
    dd = first_stage["ddconfig"]
    levels = len(dd["ch_mult"])
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["z_channels"],
        "sample_size": latent_size * 2 ** (levels - 1),
        "scaling_factor": scale_factor,
    }


def scheduler_config(linear_start: float, linear_end: float, timesteps: int, parameterization: str) -> dict[str, Any]:
    """Return an ``EulerDiscreteScheduler`` config for an LDM noise schedule.

    Args:
        linear_start: The yaml's ``linear_start`` (first beta).
        linear_end: The yaml's ``linear_end`` (last beta).
        timesteps: The number of training timesteps.
        parameterization: ``"v"`` or ``"eps"``.

    Returns:
        The diffusers config dict.
    """
    return {
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": linear_start,
        "beta_end": linear_end,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": timesteps,
        "prediction_type": "v_prediction" if parameterization == "v" else "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }


def _text_encoder(target: str, params: Mapping[str, Any] | None, component: str, prefix: str) -> TextEncoderSpec:
    """Return the spec of one text encoder from its yaml ``target`` and ``params``."""
    name = target.rsplit(".", 1)[-1]
    if name not in TEXT_TARGETS:
        raise ValueError(f"unsupported text encoder target {target!r}")
    arch, openclip, drop = TEXT_TARGETS[name]
    hidden, mlp, layers, heads, act, proj = TEXT_ARCHS[(arch, "full")]
    standard = {
        "vocab_size": CLIP_VOCAB,
        "max_position_embeddings": CLIP_POSITIONS,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_act": act,
        "projection_dim": proj,
    }
    config = standard | dict((params or {}).get("text_config") or {})
    return TextEncoderSpec(
        component=component,
        ldm_prefix=prefix + ("model." if openclip else "transformer."),
        openclip=openclip,
        config=config,
        drop_last_layer=drop,
        with_projection=arch == "openclip_bigg",
        pad_token="!" if openclip else "<|endoftext|>",
    )


PIPELINES_BY_IN_CHANNELS = {9: "StableDiffusionInpaintPipeline", 8: "StableDiffusionInstructPix2PixPipeline"}


def _ldm_layout(params: Mapping[str, Any]) -> Layout:
    """Return the layout of an LDM (SD1/SD2) yaml's ``model.params``."""
    unet = params["unet_config"]["params"]
    latent = params.get("image_size", 64)
    schedule = (params.get("linear_start", 0.00085), params.get("linear_end", 0.012), params.get("timesteps", 1000))
    cond = params["cond_stage_config"]
    parameterization = params.get("parameterization", "eps")
    # diffusers' SD2 768-v config upcasts attention (it matters for fp16 only).
    upcast = {"upcast_attention": True} if parameterization == "v" else {}
    return Layout(
        sgm=False,
        pipeline_class=PIPELINES_BY_IN_CHANNELS.get(unet["in_channels"], "StableDiffusionPipeline"),
        unet=unet_config(unet, latent) | upcast,
        vae=vae_config(params["first_stage_config"]["params"], params.get("scale_factor", 0.18215), latent),
        scheduler=scheduler_config(*schedule, parameterization),
        text_encoders=(_text_encoder(cond["target"], cond.get("params"), "text_encoder", "cond_stage_model."),),
        schedule=schedule,
    )


def _sgm_layout(params: Mapping[str, Any]) -> Layout:
    """Return the layout of an SGM (SDXL base, inpaint or refiner) yaml's ``model.params``."""
    unet = params["network_config"]["params"]
    encoders = []
    for i, emb in enumerate(params["conditioner_config"]["params"]["emb_models"]):
        if emb["input_key"] == "txt":
            prefix = f"conditioner.embedders.{i}."
            encoders.append(_text_encoder(emb["target"], emb.get("params"), "", prefix))
    names = ("text_encoder", "text_encoder_2") if len(encoders) == 2 else ("text_encoder_2",)
    encoders = [replace(spec, component=name) for spec, name in zip(encoders, names, strict=True)]
    if len(encoders) == 1:
        pipeline = "StableDiffusionXLImg2ImgPipeline"
    else:
        pipeline = "StableDiffusionXLInpaintPipeline" if unet["in_channels"] == 9 else "StableDiffusionXLPipeline"
    return Layout(
        sgm=True,
        pipeline_class=pipeline,
        unet=unet_config(unet, 128),
        vae=vae_config(params["first_stage_config"]["params"], params.get("scale_factor", 0.13025), 128),
        scheduler=scheduler_config(0.00085, 0.012, 1000, "eps"),
        text_encoders=tuple(encoders),
    )


def layout_from_yaml(tree: Mapping[str, Any]) -> Layout:
    """Return the component configs of an LDM/SGM yaml.

    Args:
        tree: The loaded yaml (plain containers, e.g. ``OmegaConf.to_container(OmegaConf.load(p))``).

    Returns:
        The layout.
    """
    params = tree["model"]["params"]
    return _sgm_layout(params) if "conditioner_config" in params else _ldm_layout(params)


def model_index(layout: Layout) -> dict[str, Any]:
    """Return the ``model_index.json`` of a layout's pipeline (no safety checker, no image encoder)."""
    index: dict[str, Any] = {
        "_class_name": layout.pipeline_class,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    for spec in layout.text_encoders:
        cls = "CLIPTextModelWithProjection" if spec.with_projection else "CLIPTextModel"
        index[spec.component] = ["transformers", cls]
        index[spec.component.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    if not layout.sgm:
        index |= {"safety_checker": [None, None], "requires_safety_checker": False}
    elif "text_encoder" not in index:
        index |= {"text_encoder": [None, None], "tokenizer": [None, None], "requires_aesthetics_score": True}
        index["force_zeros_for_empty_prompt"] = False
    else:
        index["force_zeros_for_empty_prompt"] = True
    return index


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, pad_token: str) -> None:
    """Write a CLIP tokenizer folder from the shipped vocabulary (49,408 tokens, 77 positions).

    Args:
        folder: The ``tokenizer`` / ``tokenizer_2`` folder to create.
        pad_token: ``<|endoftext|>`` (CLIP-L) or ``!`` (OpenCLIP).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": CLIP_POSITIONS,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": pad_token,
        },
    )


def write_config_folder(layout: Layout, folder: Path, *, with_models: bool = True) -> Path:
    """Write a diffusers config folder (no weights) for ``from_single_file(..., config=folder)``.

    Args:
        layout: The layout derived from the yaml.
        folder: The folder to create.
        with_models: Also write ``unet/`` and ``vae/`` configs (not needed with ``original_config=``).

    Returns:
        ``folder``.
    """
    _write_json(folder / "model_index.json", model_index(layout))
    _write_json(folder / "scheduler" / "scheduler_config.json", layout.scheduler)
    if with_models:
        _write_json(folder / "unet" / "config.json", layout.unet)
        _write_json(folder / "vae" / "config.json", layout.vae)
    for spec in layout.text_encoders:
        cls = "CLIPTextModelWithProjection" if spec.with_projection else "CLIPTextModel"
        config = {"architectures": [cls], "model_type": "clip_text_model", **spec.diffusers_config()}
        _write_json(folder / spec.component / "config.json", config)
        write_tokenizer(folder / spec.component.replace("text_encoder", "tokenizer"), spec.pad_token)
    return folder
