"""kohya-format LoRA files for the test checkpoints, named from the checkpoint's own keys (any size)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modules.engine.lora_names import lora_targets

# What a LoRA trainer's default covers: the UNet's attention projections and feed-forward, the text encoders' attention
# and MLP (diffusers-style UNet names for SD1/SD2, kohya's LDM-style ones for SDXL: both are in the map).
TRAINED = re.compile(r"_(attn[12]_to_(q|k|v|out_0)|ff_net_(0_proj|2)|self_attn_(q|k|v|out)_proj|mlp_fc[12])$")
LDM_STYLE = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_", "lora_unet_time_embed_",
             "lora_unet_label_emb_", "lora_unet_out_")  # fmt: skip
QUERIES = re.compile(r"^lora_unet_(down|input)_blocks_.*_attn1_to_q$")


def write_lora(
    checkpoint: Path,
    out: Path,
    *,
    select: re.Pattern[str] = QUERIES,
    rank: int = 2,
    alpha: float | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a random rank-``rank`` LoRA for the layers of ``checkpoint`` whose kohya names match ``select``.

    The UNet's layers are named in diffusers' style, except for SDXL (kohya's own style for it); each layer once.
    """
    with safe_open(str(checkpoint), "pt") as file:
        shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}  # noqa: SIM118 (no iteration)
    sdxl = any(key.startswith("conditioner.") for key in shapes)
    generator = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for name, target in lora_targets(shapes).items():
        if not select.search(name) or (name.startswith("lora_unet_") and name.startswith(LDM_STYLE) != sdxl):
            continue
        rows = shapes[target.key][0] // target.chunks
        width = int(torch.Size(shapes[target.key][1:]).numel())
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, width, generator=generator) / width**0.5
        tensors[f"{name}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * 0.5
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    return out


def write_tiny_lora(checkpoint: Path, out: Path, *, metadata: dict[str, str] | None = None) -> Path:
    """A rank-2 LoRA of the self-attention queries of the UNet's down blocks (a small file that changes the image)."""
    return write_lora(checkpoint, out, metadata=metadata)
