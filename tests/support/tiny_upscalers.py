"""Tiny random super-resolution models in their original checkpoint formats, for the upscaler tests.

The architectures are real ones that spandrel detects from the weights: ESRGAN (RRDBNet, the old ``model.N`` key
layout of the original 4x_*.pth files) and Real-ESRGAN Compact (SRVGGNetCompact, ``body.N`` keys), only with few
filters/blocks so they run in milliseconds on a CPU. Weights are random (fixed seed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _state_dict(kind: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "esrgan":
        from spandrel.architectures.ESRGAN import ESRGAN

        model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    elif kind == "compact":
        from spandrel.architectures.Compact import Compact

        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    else:
        raise ValueError(kind)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_upscaler(kind: str, path: Path) -> Path:
    """Write a tiny ``kind`` ("esrgan" ×4 or "compact" ×2) model to ``path`` (.pth or .safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _state_dict(kind)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
