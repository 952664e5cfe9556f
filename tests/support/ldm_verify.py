"""Verify a generated LDM checkpoint by loading it back with diffusers' own single-file loader, offline.

Two routes are checked: a diffusers config folder written from the yaml (every kind), and ``original_config=`` the
yaml itself with a folder that has no UNet/VAE configs (LDM kinds only; diffusers mis-builds a tiny SDXL that way,
``spec/offline-loading.md`` §5). Each loaded component is renamed back to LDM keys with the same mapping functions
that wrote the file, and every tensor must equal the file's, with none left on the meta device.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tests.support.ldm_configs import Layout, layout_from_yaml, write_config_folder
from tests.support.ldm_keys import DDPM_BUFFERS, EMA_KEYS, clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm
from tests.support.ldm_yaml import CLIP_POSITIONS, CLIP_VOCAB

logger = logging.getLogger(__name__)

MAX_REPORTED = 12
ROUTES = ("config", "original_config")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a ``.ckpt`` with ``weights_only=True`` (its ``state_dict`` entry).

    Args:
        path: The checkpoint.

    Returns:
        The LDM state dict.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["state_dict"]


def read_layout(yaml_path: Path) -> Layout:
    """Load a yaml with OmegaConf and derive its layout.

    Args:
        yaml_path: An LDM/SGM yaml.

    Returns:
        The layout.
    """
    from omegaconf import OmegaConf

    tree: Any = OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=True)
    return layout_from_yaml(tree)


def loaded_as_ldm(pipe: Any, layout: Layout) -> dict[str, torch.Tensor]:
    """Rename the state dicts of a loaded pipeline's models back to LDM keys.

    Args:
        pipe: A diffusers pipeline loaded from the checkpoint.
        layout: The layout of its yaml.

    Returns:
        ``{ldm_key: loaded tensor}``.
    """
    state = unet_to_ldm(pipe.unet.state_dict(), layout.unet["layers_per_block"])
    state |= vae_to_ldm(pipe.vae.state_dict(), len(layout.vae["block_out_channels"]))
    for spec in layout.text_encoders:
        encoder_state = getattr(pipe, spec.component).state_dict()
        rename = openclip_to_ldm if spec.openclip else clip_to_ldm
        state |= rename(encoder_state, spec.ldm_prefix)
    return state


def unloaded_keys(layout: Layout, keys: set[str]) -> set[str]:
    """Return the file keys diffusers does not load on purpose.

    These are the DDPM/EMA buffers, CLIP ``position_ids``, OpenCLIP ``logit_scale``, the ``text_projection`` of an
    encoder loaded without projection, and the last OpenCLIP-H layer (SD2 uses the penultimate one).

    Args:
        layout: The layout of the yaml.
        keys: The keys of the file.

    Returns:
        The subset of ``keys`` that is not expected in the loaded models.
    """
    skipped = {k for k in keys if k in DDPM_BUFFERS or k in EMA_KEYS or k.endswith("embeddings.position_ids")}
    for spec in layout.text_encoders:
        skipped |= {spec.ldm_prefix + "logit_scale"} & keys
        if not spec.with_projection:
            skipped |= {spec.ldm_prefix + "text_projection"} & keys
        if spec.drop_last_layer:
            last = f"{spec.ldm_prefix}transformer.resblocks.{spec.config['num_hidden_layers'] - 1}."
            skipped |= {k for k in keys if k.startswith(last)}
    return skipped


def compare(loaded: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor], unloaded: set[str]) -> list[str]:
    """Return a description of every difference between loaded and saved tensors (empty when equal).

    The file's tensor is cast to the loaded dtype (float32, or the file dtype), which is exact for a widening cast.

    Args:
        loaded: The loaded models' tensors, by LDM key.
        saved: The file's tensors.
        unloaded: File keys allowed to be absent from ``loaded``.

    Returns:
        Problem descriptions.
    """
    problems = []
    for key, tensor in loaded.items():
        source = saved.get(key)
        if tensor.device.type == "meta":
            problems.append(f"{key}: left on the meta device")
        elif source is None:
            problems.append(f"{key}: loaded but not in the file")
        elif tuple(tensor.shape) != tuple(source.shape):
            problems.append(f"{key}: shape {tuple(tensor.shape)} != file {tuple(source.shape)}")
        elif not torch.equal(tensor, source.to(tensor.dtype)):
            diff = (tensor.double() - source.double()).abs().max().item()
            problems.append(f"{key}: values differ (max abs diff {diff:g}, file {source.dtype}, loaded {tensor.dtype})")
    problems += [f"{key}: in the file but not loaded" for key in sorted(set(saved) - set(loaded) - unloaded)]
    return problems


def _check_tokenizers(pipe: Any, layout: Layout) -> list[str]:
    """Return problems with the loaded tokenizers (full CLIP vocabulary, 77 positions)."""
    problems = []
    for spec in layout.text_encoders:
        name = spec.component.replace("text_encoder", "tokenizer")
        tokenizer = getattr(pipe, name)
        if len(tokenizer) != CLIP_VOCAB or tokenizer.model_max_length != CLIP_POSITIONS:
            problems.append(f"{name}: {len(tokenizer)} tokens, model_max_length {tokenizer.model_max_length}")
    return problems


def _load(path: Path, layout: Layout, config: Path, original_config: Path | None) -> Any:
    """Load the checkpoint with ``<Pipeline>.from_single_file``, offline, in float32."""
    import diffusers

    pipeline_class = getattr(diffusers, layout.pipeline_class)
    kwargs: dict[str, Any] = {"original_config": str(original_config)} if original_config else {}
    return pipeline_class.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=torch.float32, **kwargs
    )


def verify_roundtrip(path: Path, yaml_path: Path | None = None, *, routes: Sequence[str] = ROUTES) -> None:
    """Load a checkpoint back with diffusers, offline, and check every tensor against the file.

    Each loaded tensor is renamed back with the generator's own mapping functions, so a mapping that disagrees
    with diffusers' conversion shows up as a value or shape mismatch, a missing key or a meta tensor.

    Args:
        path: A ``.safetensors`` or ``.ckpt`` written by the generator.
        yaml_path: Its yaml; defaults to ``<stem>.yaml`` beside the checkpoint.
        routes: ``"config"`` (a config folder made from the yaml) and/or ``"original_config"`` (the yaml itself;
            skipped for SGM/SDXL yamls, which diffusers mis-builds at tiny size).

    Raises:
        FileNotFoundError: If the checkpoint or the yaml is missing.
        AssertionError: On a value or shape mismatch, a missing or unexpected tensor, a tensor left on the meta
            device, or a wrong tokenizer; the message lists the first problems and the route that showed them.
    """
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        raise AssertionError("set HF_HUB_OFFLINE=1 before verifying: the round trip must not touch the Hub")
    yaml_path = yaml_path or path.with_suffix(".yaml")
    for needed in (path, yaml_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist")
    layout = read_layout(yaml_path)
    saved = read_state_dict(path)
    unloaded = unloaded_keys(layout, set(saved))
    with tempfile.TemporaryDirectory(prefix="ldm-verify-") as tmp:
        loads = []
        if "config" in routes:
            loads.append(("config folder", write_config_folder(layout, Path(tmp) / "full"), None))
        if "original_config" in routes and not layout.sgm:
            bare = write_config_folder(layout, Path(tmp) / "bare", with_models=False)
            loads.append(("original_config", bare, yaml_path))
        if not loads:
            raise ValueError(f"no route to verify {path.name} by: {routes!r}")
        for route, config, original in loads:
            pipe = _load(path, layout, config, original)
            loaded = loaded_as_ldm(pipe, layout)
            problems = compare(loaded, saved, unloaded) + _check_tokenizers(pipe, layout)
            if problems:
                shown = "\n  ".join(problems[:MAX_REPORTED])
                raise AssertionError(f"{path.name} via {route}: {len(problems)} problem(s):\n  {shown}")
            logger.info("%s via %s: %d/%d tensors identical", path.name, route, len(loaded), len(loaded))
            del pipe
