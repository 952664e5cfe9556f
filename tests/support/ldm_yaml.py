"""Write LDM/SGM inference yamls for the test-checkpoint kinds, mirroring the official Stability/CompVis files.

The yaml is the single source of truth of a generated checkpoint: every size of every component comes from it. The
layout follows ``v1-inference.yaml``, ``v1-inpainting-inference.yaml``, ``v2-inference-v.yaml``,
``512-inpainting-ema.yaml``, ``sd_xl_base.yaml``, ``sd_xl_refiner.yaml`` and A1111's ``sd_xl_inpaint.yaml``. The one
non-standard addition is a ``text_config`` block (``CLIPTextConfig`` field names) under each text encoder's params;
its ``num_hidden_layers`` is the number of layers SAVED in the file (24 for OpenCLIP-H, of which diffusers loads 23).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

SIZES = ("tiny", "full")
LDM_KINDS = ("sd1", "sd1-inpaint", "sd1-pix2pix", "sd2v", "sd2-inpaint")
SGM_KINDS = ("sdxl", "sdxl-inpaint", "sdxl-refiner")

CLIP_VOCAB = 49408
CLIP_POSITIONS = 77

# Text-encoder architectures: (hidden, mlp, layers saved, heads, activation, projection) per size.
TEXT_ARCHS = MappingProxyType(
    {
        ("clip_l", "full"): (768, 3072, 12, 12, "quick_gelu", 768),
        ("clip_l", "tiny"): (32, 128, 12, 2, "quick_gelu", 32),
        ("openclip_h", "full"): (1024, 4096, 24, 16, "gelu", 1024),
        ("openclip_h", "tiny"): (32, 128, 24, 2, "gelu", 32),
        ("openclip_bigg", "full"): (1280, 5120, 32, 20, "gelu", 1280),
        ("openclip_bigg", "tiny"): (48, 192, 32, 3, "gelu", 48),
    }
)

# UNet sizes per family and size: model_channels, channel_mult, attention_resolutions, heads key/value, depth.
UNET_SIZES = MappingProxyType(
    {
        ("sd1", "full"): (320, (1, 2, 4, 4), (4, 2, 1), ("num_heads", 8), 1),
        ("sd1", "tiny"): (32, (1, 2, 2, 2), (4, 2, 1), ("num_heads", 8), 1),
        ("sd2", "full"): (320, (1, 2, 4, 4), (4, 2, 1), ("num_head_channels", 64), 1),
        ("sd2", "tiny"): (32, (1, 2, 2, 2), (4, 2, 1), ("num_head_channels", 16), 1),
        ("sdxl", "full"): (320, (1, 2, 4), (4, 2), ("num_head_channels", 64), (1, 2, 10)),
        ("sdxl", "tiny"): (32, (1, 2, 2), (4, 2), ("num_head_channels", 16), (1, 1, 2)),
        ("refiner", "full"): (384, (1, 2, 4, 4), (4, 2), ("num_head_channels", 64), 4),
        ("refiner", "tiny"): (32, (1, 2, 2, 2), (4, 2), ("num_head_channels", 16), 2),
    }
)

# VAE (ch, ch_mult) per size; num_res_blocks 2 and z_channels 4 throughout.
VAE_SIZES = MappingProxyType({"full": (128, (1, 2, 4, 4)), "tiny": (32, (1, 2, 2, 2))})

# Latent image_size of the LDM yamls (SGM yamls carry none).
IMAGE_SIZES = MappingProxyType(
    {
        ("sd1", "full"): 64,
        ("sd1-inpaint", "full"): 64,
        ("sd1-pix2pix", "full"): 32,
        ("sd2v", "full"): 96,
        ("sd2-inpaint", "full"): 64,
    }
)
TINY_IMAGE_SIZE = 8

HEADER = (
    "# {kind} ({size}) test-fixture config, mirroring the official {mirror}.\n"
    "# Non-standard: text_config gives the text encoder sizes (CLIPTextConfig names; layers as saved).\n"
)
MIRRORS = MappingProxyType(
    {
        "sd1": "v1-inference.yaml",
        "sd1-inpaint": "v1-inpainting-inference.yaml",
        "sd1-pix2pix": "instruct-pix2pix.yaml",
        "sd2v": "v2-inference-v.yaml",
        "sd2-inpaint": "512-inpainting-ema.yaml",
        "sdxl": "sd_xl_base.yaml",
        "sdxl-inpaint": "sd_xl_inpaint.yaml (A1111)",
        "sdxl-refiner": "sd_xl_refiner.yaml",
    }
)


def check_kind(kind: str, size: str) -> None:
    """Raise ValueError unless ``kind`` and ``size`` are known.

    Args:
        kind: One of ``LDM_KINDS + SGM_KINDS``.
        size: ``"tiny"`` or ``"full"``.

    Raises:
        ValueError: For an unknown kind or size.
    """
    if kind not in LDM_KINDS + SGM_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {LDM_KINDS + SGM_KINDS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def text_config(arch: str, size: str) -> dict[str, Any]:
    """Return the ``CLIPTextConfig`` fields of a text-encoder architecture as saved in the file.

    Args:
        arch: ``"clip_l"``, ``"openclip_h"`` or ``"openclip_bigg"``.
        size: ``"tiny"`` or ``"full"``.

    Returns:
        A fresh dict of CLIPTextConfig keyword arguments.
    """
    hidden, mlp, layers, heads, act, proj = TEXT_ARCHS[(arch, size)]
    return {
        "vocab_size": CLIP_VOCAB,
        "max_position_embeddings": CLIP_POSITIONS,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_act": act,
        "projection_dim": proj,
    }


def _unet_params(family: str, size: str, in_channels: int, context_dim: int) -> dict[str, Any]:
    """Return the openaimodel ``UNetModel`` params (without the SGM-only keys)."""
    channels, mult, attn, (heads_key, heads), depth = UNET_SIZES[(family, size)]
    params: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": 4,
        "model_channels": channels,
        "attention_resolutions": list(attn),
        "num_res_blocks": 2,
        "channel_mult": list(mult),
        heads_key: heads,
        "use_spatial_transformer": True,
        "transformer_depth": list(depth) if isinstance(depth, tuple) else depth,
        "context_dim": context_dim,
        "use_checkpoint": True,
        "legacy": False,
    }
    if family != "sd1":
        params["use_linear_in_transformer"] = True
    return params


def _first_stage(size: str, target: str) -> dict[str, Any]:
    """Return the ``first_stage_config`` block (the KL autoencoder)."""
    ch, mult = VAE_SIZES[size]
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": ch,
        "ch_mult": list(mult),
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    params = {
        "embed_dim": 4,
        "monitor": "val/rec_loss",
        "ddconfig": ddconfig,
        "lossconfig": {"target": "torch.nn.Identity"},
    }
    return {"target": target, "params": params}


def _ldm_yaml(kind: str, size: str) -> dict[str, Any]:
    """Return the yaml tree of an SD1/SD2 kind (``ldm.models.diffusion.ddpm.*``)."""
    sd2 = kind.startswith("sd2")
    inpaint = kind.endswith("-inpaint")
    edit = kind.endswith("-pix2pix")
    arch = "openclip_h" if sd2 else "clip_l"
    text = text_config(arch, size)
    params: dict[str, Any] = {"parameterization": "v"} if kind == "sd2v" else {}
    params |= {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": 1000,
        "first_stage_key": "edited" if edit else "jpg",
        "cond_stage_key": "edit" if edit else "txt",
        "image_size": IMAGE_SIZES[(kind, size)] if size == "full" else TINY_IMAGE_SIZE,
        "channels": 4,
        "cond_stage_trainable": False,
        "conditioning_key": "hybrid" if inpaint or edit else "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215,
        "use_ema": False,
    }
    if inpaint:
        params["finetune_keys"] = None
    unet = _unet_params("sd2" if sd2 else "sd1", size, 9 if inpaint else 8 if edit else 4, text["hidden_size"])
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet}
    params["first_stage_config"] = _first_stage(size, "ldm.models.autoencoder.AutoencoderKL")
    if sd2:
        cond = {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate", "text_config": text},
        }
    else:
        cond = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": {"text_config": text}}
    params["cond_stage_config"] = cond
    target = "ddpm.LatentDiffusion"
    if inpaint or edit:
        target = "ddpm.LatentInpaintDiffusion" if inpaint else "ddpm_edit.LatentDiffusion"
    rate = 7.5e-05 if inpaint else 1.0e-04
    return {"model": {"base_learning_rate": rate, "target": f"ldm.models.diffusion.{target}", "params": params}}


def _timestep_embedder(input_key: str) -> dict[str, Any]:
    """Return one ``ConcatTimestepEmbedderND`` entry of an SGM conditioner."""
    return {
        "is_trainable": False,
        "input_key": input_key,
        "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
        "params": {"outdim": 256},
    }


def _bigg_embedder(size: str, legacy: bool) -> dict[str, Any]:
    """Return the ``FrozenOpenCLIPEmbedder2`` (ViT-bigG) conditioner entry."""
    params = {
        "arch": "ViT-bigG-14",
        "version": "laion2b_s39b_b160k",
        "freeze": True,
        "layer": "penultimate",
        "always_return_pooled": True,
        "legacy": legacy,
        "text_config": text_config("openclip_bigg", size),
    }
    return {
        "is_trainable": False,
        "input_key": "txt",
        "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
        "params": params,
    }


def _sgm_embedders(kind: str, size: str) -> list[dict[str, Any]]:
    """Return the SGM conditioner's ``emb_models`` list."""
    if kind == "sdxl-refiner":
        sizes = ("original_size_as_tuple", "crop_coords_top_left", "aesthetic_score")
        return [_bigg_embedder(size, legacy=False), *(_timestep_embedder(key) for key in sizes)]
    clip_l = {
        "is_trainable": False,
        "input_key": "txt",
        "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
        "params": {"layer": "hidden", "layer_idx": 11, "text_config": text_config("clip_l", size)},
    }
    sizes = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
    return [clip_l, _bigg_embedder(size, legacy=False), *(_timestep_embedder(key) for key in sizes)]


def _sgm_yaml(kind: str, size: str) -> dict[str, Any]:
    """Return the yaml tree of an SDXL kind (``sgm.models.diffusion.DiffusionEngine``)."""
    bigg = text_config("openclip_bigg", size)
    clip_l = text_config("clip_l", size)
    refiner = kind == "sdxl-refiner"
    context = bigg["hidden_size"] if refiner else clip_l["hidden_size"] + bigg["hidden_size"]
    n_scalars = 5 if refiner else 6  # ConcatTimestepEmbedderND values, 256 features each
    unet = {
        "adm_in_channels": bigg["projection_dim"] + n_scalars * 256,
        "num_classes": "sequential",
        **_unet_params("refiner" if refiner else "sdxl", size, 9 if kind == "sdxl-inpaint" else 4, context),
    }
    del unet["use_spatial_transformer"], unet["legacy"]
    if refiner:
        unet["context_dim"] = [context] * len(unet["channel_mult"])
    unet["spatial_transformer_attn_type"] = "softmax-xformers"
    denoiser = {
        "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
        "params": {
            "num_idx": 1000,
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
            "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"},
        },
    }
    first_stage = _first_stage(size, "sgm.models.autoencoder.AutoencoderKLInferenceWrapper")
    first_stage["params"]["ddconfig"] = {"attn_type": "vanilla-xformers", **first_stage["params"]["ddconfig"]}
    params = {
        "scale_factor": 0.13025,
        "disable_first_stage_autocast": True,
        "denoiser_config": denoiser,
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        "conditioner_config": {
            "target": "sgm.modules.GeneralConditioner",
            "params": {"emb_models": _sgm_embedders(kind, size)},
        },
        "first_stage_config": first_stage,
    }
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}}


def yaml_tree(kind: str, size: str = "tiny") -> dict[str, Any]:
    """Return the yaml of a kind as a fresh nested dict.

    Args:
        kind: A checkpoint kind (``LDM_KINDS + SGM_KINDS``).
        size: ``"tiny"`` (test fixtures) or ``"full"`` (the real architecture).

    Returns:
        The tree that ``yaml_text`` dumps.
    """
    check_kind(kind, size)
    return _sgm_yaml(kind, size) if kind in SGM_KINDS else _ldm_yaml(kind, size)


def yaml_text(kind: str, size: str = "tiny") -> str:
    """Return the yaml text of a kind, in the official files' layout plus ``text_config``.

    Args:
        kind: A checkpoint kind (``LDM_KINDS + SGM_KINDS``).
        size: ``"tiny"`` or ``"full"``.

    Returns:
        YAML text (OmegaConf and PyYAML load it).
    """
    body = yaml.safe_dump(yaml_tree(kind, size), sort_keys=False, default_flow_style=None, width=120)
    return HEADER.format(kind=kind, size=size, mirror=MIRRORS[kind]) + body


def write_yaml(kind: str, path: Path, size: str = "tiny") -> Path:
    """Write the yaml of a kind to ``path`` (a ``.yaml`` file, or a checkpoint path whose stem is used).

    Args:
        kind: A checkpoint kind.
        path: The yaml path, or the checkpoint path beside which ``<stem>.yaml`` is written.
        size: ``"tiny"`` or ``"full"``.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".yaml":
        path = path.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml_text(kind, size), encoding="utf-8")
    return path
