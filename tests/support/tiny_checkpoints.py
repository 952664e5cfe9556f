"""Generate random checkpoints in the original LDM single-file format (tiny for tests, full-size for benchmarks).

The yaml (``tests.support.ldm_yaml``) is the single source of truth: the diffusers/transformers configs are derived
from it (``tests.support.ldm_configs``), random models are built from them with one seed per component, every key is
renamed to the CompVis/Stability layout (``tests.support.ldm_keys``) and the extra buffers of real files are added.
``spec/offline-loading.md`` §9 is the specification.

CLI: ``python -m tests.support.tiny_checkpoints --kind sd1 --size full --dtype fp16 --out /tmp/x.safetensors``
``[--no-yaml] [--verify]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from tests.support.ldm_configs import Layout, TextEncoderSpec, layout_from_yaml
from tests.support.ldm_keys import (
    clip_extras,
    clip_to_ldm,
    ddpm_extras,
    openclip_extras,
    openclip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from tests.support.ldm_yaml import CLIP_POSITIONS, check_kind, yaml_text, yaml_tree
from tests.support.ldm_yaml import write_yaml as _write_yaml_file

logger = logging.getLogger(__name__)

KINDS = ("sd1", "sd2v", "sd1-inpaint", "sdxl")
ALL_KINDS = (*KINDS, "sd2-inpaint", "sdxl-inpaint", "sdxl-refiner", "sd1-pix2pix")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
SUFFIXES = (".safetensors", ".ckpt")

__all__ = [
    "ALL_KINDS",
    "KINDS",
    "header_shapes",
    "layout_for",
    "ldm_state_dict",
    "main",
    "save_checkpoint",
    "verify_roundtrip",
    "write_checkpoint",
    "write_yaml",
    "yaml_text",
]


def layout_for(kind: str, size: str = "tiny") -> Layout:
    """Return the component configs of a kind, derived from its yaml.

    Args:
        kind: One of ``ALL_KINDS``.
        size: ``"tiny"`` or ``"full"``.

    Returns:
        The layout (diffusers configs and text-encoder specs).
    """
    check_kind(kind, size)
    return layout_from_yaml(yaml_tree(kind, size))


@contextlib.contextmanager
def _seeded(seed: int, meta: bool) -> Iterator[None]:
    """Seed torch's CPU generator inside a forked RNG state; build on the meta device when ``meta``."""
    with torch.random.fork_rng(devices=[]), torch.device("meta" if meta else "cpu"):
        torch.manual_seed(seed)
        yield


def _cast(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast floating-point tensors to ``dtype`` (integer buffers keep theirs) and make them contiguous."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _text_encoder_state(spec: TextEncoderSpec, seed: int, meta: bool) -> dict[str, torch.Tensor]:
    """Build one random text encoder as saved (all layers) and return its LDM-named state dict."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**spec.config)
    # OpenCLIP files carry a text_projection (SD2's is unused), so build those with a projection.
    model_class = CLIPTextModelWithProjection if spec.openclip else CLIPTextModel
    with _seeded(seed, meta):
        model = model_class(config)
    if spec.openclip:
        return openclip_to_ldm(model.state_dict(), spec.ldm_prefix) | openclip_extras(spec.ldm_prefix)
    return clip_to_ldm(model.state_dict(), spec.ldm_prefix) | clip_extras(spec.ldm_prefix, CLIP_POSITIONS)


def ldm_state_dict(
    kind: str, size: str = "tiny", *, dtype: torch.dtype = torch.float16, seed: int = 0, meta: bool = False
) -> dict[str, torch.Tensor]:
    """Build the random models of a kind and return one state dict in the original LDM key layout.

    Components are seeded separately (UNet ``seed``, VAE ``seed+1``, text encoder i ``seed+2+i``), so the result
    does not depend on build order. Each model is freed once renamed, to bound peak memory at full size.

    Args:
        kind: One of ``ALL_KINDS``.
        size: ``"tiny"`` or ``"full"``.
        dtype: The dtype of floating-point tensors in the result.
        seed: The base seed.
        meta: Build on the meta device (shapes only, no memory; for headers).

    Returns:
        ``{ldm_key: tensor}`` with the extra buffers of real files.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    layout = layout_for(kind, size)
    # 1. UNet, renamed to model.diffusion_model.*
    with _seeded(seed, meta):
        unet = UNet2DConditionModel.from_config(dict(layout.unet))
    state = _cast(unet_to_ldm(unet.state_dict(), layout.unet["layers_per_block"]), dtype)
    del unet
    # 2. VAE, renamed to first_stage_model.*
    with _seeded(seed + 1, meta):
        vae = AutoencoderKL.from_config(dict(layout.vae))
    state |= _cast(vae_to_ldm(vae.state_dict(), len(layout.vae["block_out_channels"])), dtype)
    del vae
    # 3. Text encoders, as saved (OpenCLIP-H keeps its last layer and projection)
    for i, spec in enumerate(layout.text_encoders):
        state |= _cast(_text_encoder_state(spec, seed + 2 + i, meta), dtype)
    # 4. DDPM schedule buffers and EMA counters of SD1/SD2 files
    if not layout.sgm:
        state |= _cast(ddpm_extras(*layout.schedule), dtype)
    return state


def header_shapes(kind: str, size: str = "tiny") -> dict[str, list[int]]:
    """Return the keys and shapes of a kind's checkpoint without allocating any weights.

    Args:
        kind: One of ``ALL_KINDS``.
        size: ``"tiny"`` or ``"full"``.

    Returns:
        ``{ldm_key: shape}``, sorted by key.
    """
    state = ldm_state_dict(kind, size, meta=True)
    return {key: list(state[key].shape) for key in sorted(state)}


def save_checkpoint(state: Mapping[str, torch.Tensor], path: Path, *, seed: int = 0) -> Path:
    """Write an LDM state dict as ``.safetensors`` (metadata ``format: pt``) or Lightning-style ``.ckpt``.

    Args:
        state: The LDM state dict (contiguous tensors sharing no storage).
        path: The output path; its suffix picks the format.
        seed: Stored as ``seed`` in a ``.ckpt`` (beside ``global_step`` 0 and ``epoch`` 0).

    Returns:
        ``path``.

    Raises:
        ValueError: For a suffix other than ``.safetensors`` / ``.ckpt``.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r} in {path}; use one of {SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(state), str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": dict(state), "global_step": 0, "epoch": 0, "seed": seed}, path)
    return path


def write_yaml(kind: str, path: Path, size: str = "tiny") -> Path:
    """Write the yaml of a kind to ``path`` (or to ``<stem>.yaml`` beside a checkpoint path).

    Args:
        kind: One of ``ALL_KINDS``.
        path: A ``.yaml`` path or a checkpoint path.
        size: ``"tiny"`` or ``"full"``.

    Returns:
        The yaml path.
    """
    return _write_yaml_file(kind, path, size)


def write_checkpoint(
    kind: str,
    path: Path,
    *,
    size: str = "tiny",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    write_yaml: bool = True,
) -> Path:
    """Build a random checkpoint of a kind and write it; the same arguments give a byte-identical file.

    Args:
        kind: One of ``ALL_KINDS``.
        path: ``*.safetensors`` or ``*.ckpt``.
        size: ``"tiny"`` (spec §9 table) or ``"full"`` (the real architecture).
        dtype: The dtype of floating-point tensors.
        seed: The base seed.
        write_yaml: Also write ``<stem>.yaml`` beside the checkpoint.

    Returns:
        The checkpoint path.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r} in {path}; use one of {SUFFIXES}")
    state = ldm_state_dict(kind, size, dtype=dtype, seed=seed)
    save_checkpoint(state, path, seed=seed)
    logger.info("wrote %s (%s, %s, %d tensors)", path, kind, size, len(state))
    if write_yaml:
        _write_yaml_file(kind, path, size)
    return path


def verify_roundtrip(
    path: Path, yaml_path: Path | None = None, *, routes: Sequence[str] = ("config", "original_config")
) -> None:
    """Load a generated checkpoint back with diffusers' single-file loader, offline, and compare every tensor.

    See ``tests.support.ldm_verify.verify_roundtrip``. Requires ``HF_HUB_OFFLINE=1``.

    Args:
        path: The checkpoint.
        yaml_path: Its yaml; defaults to ``<stem>.yaml`` beside it.
        routes: ``"config"`` (config folder from the yaml) and/or ``"original_config"`` (LDM kinds only).

    Raises:
        AssertionError: On any mismatch, missing tensor or tensor left on the meta device.
    """
    from tests.support.ldm_verify import verify_roundtrip as _verify

    _verify(Path(path), None if yaml_path is None else Path(yaml_path), routes=routes)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the CLI arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.tiny_checkpoints", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kind", required=True, choices=ALL_KINDS)
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--dtype", default="fp16", choices=tuple(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="*.safetensors or *.ckpt")
    parser.add_argument("--no-yaml", action="store_true", help="do not write <stem>.yaml beside the checkpoint")
    parser.add_argument("--verify", action="store_true", help="load it back with diffusers and compare every tensor")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI: write one checkpoint (and its yaml), optionally verify it.

    Args:
        argv: The arguments (without the program name); ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = write_checkpoint(
        args.kind, args.out, size=args.size, dtype=DTYPES[args.dtype], seed=args.seed, write_yaml=not args.no_yaml
    )
    if args.verify:
        yaml_path = path.with_suffix(".yaml")
        if args.no_yaml:
            yaml_path = _write_yaml_file(args.kind, path.with_name(path.stem + ".verify.yaml"), args.size)
        try:
            verify_roundtrip(path, yaml_path)
        finally:
            if args.no_yaml:
                yaml_path.unlink()
        logger.info("verified %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
