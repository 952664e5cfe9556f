"""Reference: the diffusers/transformers models of a checkpoint, for tests and the benchmark's baseline.

The app builds its own networks (modules/engine/nets); this builds what diffusers would, the "component route" of
offline-loading.md §3: keys renamed with diffusers' own LDM converters, each model built empty from a config folder
(:mod:`tests.support.config_folder`) and filled with ``load_state_dict(assign=True)``. Tests compare our networks
with these on the tiny checkpoints; ``tests/gpu/bench.py`` runs plain diffusers pipelines over them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.initialization import no_init_weights

from modules.engine.architecture import ENCODER_FAMILIES, ModelArchitecture, TextEncoderSpec
from modules.errors import CheckpointLoadError
from tests.support.config_folder import MODEL_MAX_LENGTH, component_subfolders

logger = logging.getLogger(__name__)

VOCAB_SIZE = 49408
MAX_LISTED = 10
TEXT_MODEL_CLASSES: dict[str, type[torch.nn.Module]] = {
    "CLIPTextModel": CLIPTextModel,
    "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
}
# Converted keys that are expected leftovers, never weights of the built model.
IGNORED_KEYS = re.compile(r"(^|\.)position_ids$|(^|\.)logit_scale$")


def _examples(keys: list[str]) -> str:
    """Return up to MAX_LISTED keys, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def meta_tensors(model: torch.nn.Module) -> list[str]:
    """Return the names of parameters and buffers still on the meta device (i.e. never loaded)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.device.type == "meta"]


def fill_model(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str, source: str, dtype: torch.dtype
) -> None:
    """Load converted weights (cast to ``dtype``) into an empty model; fail on missing keys, warn on unexpected ones.

    Raises:
        CheckpointLoadError: A weight is missing or has the wrong shape.
    """
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items() if not IGNORED_KEYS.search(k)}
    try:
        result = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:400]
        raise CheckpointLoadError(f"{source}: {what} weights do not fit the architecture: {reason}") from error
    missing = sorted(set(result.missing_keys) | set(meta_tensors(model)))
    if missing:
        reason = f"{len(missing)} {what} weights missing from the file: {_examples(missing)}"
        raise CheckpointLoadError(f"{source}: {reason}")
    if result.unexpected_keys:
        logger.warning(
            "%s: %d unexpected %s keys ignored, e.g. %s",
            source, len(result.unexpected_keys), what, _examples(sorted(result.unexpected_keys)),
        )  # fmt: skip
    model.requires_grad_(False)
    model.eval()


def build_unet(
    state_dict: Mapping[str, torch.Tensor], folder: Path, source: str, dtype: torch.dtype
) -> UNet2DConditionModel:
    """Build the UNet from ``folder/unet`` and the file's ``model.diffusion_model.*`` weights."""
    config = UNet2DConditionModel.load_config(folder, subfolder="unet", local_files_only=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    fill_model(unet, convert_ldm_unet_checkpoint(dict(state_dict), unet.config), "UNet", source, dtype)
    return unet


def build_vae(state_dict: Mapping[str, torch.Tensor], folder: Path, source: str, dtype: torch.dtype) -> AutoencoderKL:
    """Build the VAE from ``folder/vae`` and the file's ``first_stage_model.*`` weights."""
    config = AutoencoderKL.load_config(folder, subfolder="vae", local_files_only=True)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    fill_model(vae, convert_ldm_vae_checkpoint(dict(state_dict), vae.config), "VAE", source, dtype)
    return vae


def _text_weights(state_dict: Mapping[str, torch.Tensor], spec: TextEncoderSpec, model: Any) -> dict[str, Any]:
    """Rename one text encoder's LDM keys to the transformers layout of ``model``."""
    family = ENCODER_FAMILIES[spec.family]
    if family.layout == "hf":
        weights = {"text_model." + k[len(spec.prefix) :]: v for k, v in state_dict.items() if k.startswith(spec.prefix)}
    else:
        weights = convert_open_clip_checkpoint(model, state_dict, prefix=spec.prefix)
    layers = int(spec.config["num_hidden_layers"])
    layer_key = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
    if family.drop_last_layer:  # penultimate-layer encoders: the saved last layer is unused by design
        weights = {k: v for k, v in weights.items() if not ((m := layer_key.match(k)) and int(m.group(1)) >= layers)}
    if not hasattr(model, "text_projection"):
        weights.pop("text_projection.weight", None)
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattens CLIPTextModel
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return weights


def build_text_encoder(
    state_dict: Mapping[str, torch.Tensor],
    spec: TextEncoderSpec,
    folder: Path,
    subfolder: str,
    source: str,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """Build one CLIP text encoder from ``folder/<subfolder>`` and its weights in the file."""
    config = CLIPTextConfig.from_pretrained(folder / subfolder, local_files_only=True)
    with no_init_weights():  # on the CPU (its position_ids buffer is not in the file), no random init
        model = TEXT_MODEL_CLASSES[spec.model_class](config)
    fill_model(model, _text_weights(state_dict, spec, model), f"{subfolder} ({spec.family})", source, dtype)
    return model


@functools.lru_cache(maxsize=8)
def _tokenizer(path: Path) -> CLIPTokenizer:
    """The CLIP tokenizer in ``path``, built once per process (its files are the same for every model family)."""
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(folder: Path, subfolder: str, source: str) -> CLIPTokenizer:
    """Load a CLIP tokenizer from the config folder and check it is the full 49,408-token, 77-position one.

    Raises:
        CheckpointLoadError: The tokenizer files are incomplete (transformers would silently build a 2-token one).
    """
    tokenizer = _tokenizer(folder / subfolder)
    if len(tokenizer) != VOCAB_SIZE or tokenizer.model_max_length != MODEL_MAX_LENGTH:
        raise CheckpointLoadError(
            f"{source}: broken {subfolder}: {len(tokenizer)} tokens, model_max_length {tokenizer.model_max_length} "
            f"(expected {VOCAB_SIZE} and {MODEL_MAX_LENGTH}); check configs/tokenizer"
        )
    return tokenizer


def build_components(
    state_dict: Mapping[str, torch.Tensor],
    arch: ModelArchitecture,
    folder: Path,
    *,
    source: str,
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Build every pipeline component, keyed by the pipeline's ``__init__`` argument names.

    Args:
        state_dict: The whole checkpoint, LDM key layout.
        arch: Its architecture (already checked against the shapes).
        folder: The config folder written for ``arch``.
        source: File name for messages.
        dtype: Dtype of the UNet and text encoders.
        vae_dtype: Dtype of the VAE.

    Raises:
        CheckpointLoadError: A component's weights are missing or misshapen.
    """
    try:
        components: dict[str, Any] = {
            "unet": build_unet(state_dict, folder, source, dtype),
            "vae": build_vae(state_dict, folder, source, vae_dtype),
            "scheduler": EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True),
        }
        for te_dir, tok_dir, spec in component_subfolders(arch):
            components[te_dir] = build_text_encoder(state_dict, spec, folder, te_dir, source, dtype)
            components[tok_dir] = load_tokenizer(folder, tok_dir, source)
    except KeyError as error:  # diffusers' LDM converters index keys they require
        raise CheckpointLoadError(f"{source}: required tensor {error} is missing from the file") from error
    return components


def reference_pipeline(path: Path, *, device: str, dtype: torch.dtype, vae_dtype: torch.dtype) -> Any:
    """The plain diffusers pipeline (txt2img class of the family) for a single-file checkpoint, on ``device``.

    The file is read, its architecture derived as the app does, a config folder written to a temporary directory,
    the reference models built from it, and the standard pipeline class instantiated over them (no safety checker).
    """
    import tempfile

    import diffusers

    from modules.engine.detection import detect_model_type
    from modules.engine.ldm_yaml import build_architecture
    from modules.engine.loader import read_state_dict
    from tests.support.config_folder import write_config_folder

    state_dict = read_state_dict(path, dtype=dtype, vae_dtype=vae_dtype)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    model_type = detect_model_type(shapes, source=path)
    config = path.with_suffix(".yaml")
    arch = build_architecture(shapes, model_type, config if config.is_file() else None, source=path.name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(arch, Path(tmp))
        parts = build_components(state_dict, arch, folder, source=path.name, dtype=dtype, vae_dtype=vae_dtype)
    cls = getattr(diffusers, arch.pipeline_class)
    expected, optional = cls._get_signature_keys(cls)
    names = set(expected) | set(optional)
    kwargs = {k: v for k, v in parts.items() if k in names}
    kwargs.update({k: None for k in expected if k not in kwargs})  # safety_checker, feature_extractor…
    if "requires_safety_checker" in names:
        kwargs["requires_safety_checker"] = False
    pipe = cls(**kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
