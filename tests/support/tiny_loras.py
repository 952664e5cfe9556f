"""Tiny kohya-format LoRA files for the tiny checkpoints (named from the checkpoint's own keys)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modules.engine.lora_names import lora_targets


def write_tiny_lora(checkpoint: Path, out: Path, *, metadata: dict[str, str] | None = None, rank: int = 2) -> Path:
    """Write a rank-``rank`` LoRA for every UNet self-attention query of ``checkpoint`` (diffusers-style names)."""
    with safe_open(str(checkpoint), "pt") as file:
        shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}  # noqa: SIM118 (no iteration)
    targets = lora_targets(shapes)
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, target in targets.items():
        if name.startswith("lora_unet_down_blocks_") and name.endswith("attn1_to_q"):
            rows, width = shapes[target.key]
            tensors[f"{name}.lora_down.weight"] = torch.randn(rank, width, generator=generator)
            tensors[f"{name}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * 0.5
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    return out
