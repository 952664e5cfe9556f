"""Write the diffusers config folder (no weights) for a model architecture (the reference models and baseline only).

Layout (offline-loading.md §2): ``model_index.json``, ``scheduler/``, ``unet/``, ``vae/``, ``text_encoder*/`` and
``tokenizer*/`` (the CLIP BPE files shipped in ``configs/tokenizer`` plus a ``tokenizer_config.json``). Folders are
cached under ``<cache_dir>/<architecture hash>``; they are tiny, so a missing one is simply rebuilt.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modules.engine.architecture import ModelArchitecture, TextEncoderSpec
from modules.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

TOKENIZER_SOURCE = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MODEL_MAX_LENGTH = 77


def default_cache_dir() -> Path:
    """Return the fallback cache directory for config folders (under the system temp dir)."""
    return Path(tempfile.gettempdir()) / "webui-diffusers-configs"


def component_subfolders(arch: ModelArchitecture) -> list[tuple[str, str, TextEncoderSpec]]:
    """Return ``(text_encoder subfolder, tokenizer subfolder, spec)`` in pipeline order.

    The SDXL refiner has only the bigG encoder, which the XL pipelines call ``text_encoder_2``.
    """
    if arch.model_type.is_sdxl and len(arch.text_encoders) == 1:
        return [("text_encoder_2", "tokenizer_2", arch.text_encoders[0])]
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    return [(te, tok, spec) for (te, tok), spec in zip(names, arch.text_encoders, strict=False)]


def model_index(arch: ModelArchitecture) -> dict[str, Any]:
    """Return ``model_index.json`` for the architecture (no safety checker, feature extractor or image encoder)."""
    index: dict[str, Any] = {
        "_class_name": arch.pipeline_class,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    if arch.model_type.is_sdxl:
        index.update(text_encoder=[None, None], tokenizer=[None, None], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
    index.update(feature_extractor=[None, None], image_encoder=[None, None])
    for te_dir, tok_dir, spec in component_subfolders(arch):
        index[te_dir] = ["transformers", spec.model_class]
        index[tok_dir] = ["transformers", "CLIPTokenizer"]
    if arch.model_type.value == "sdxl-refiner":
        index.update(requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    return index


def tokenizer_config(pad_token: str) -> dict[str, Any]:
    """Return ``tokenizer_config.json`` for a CLIP BPE tokenizer with the given pad token."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }


def text_encoder_json(spec: TextEncoderSpec) -> dict[str, Any]:
    """Return a transformers ``config.json`` for one text encoder."""
    return {"architectures": [spec.model_class], "model_type": "clip_text_model", **dict(spec.config)}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _populate(arch: ModelArchitecture, root: Path) -> None:
    """Write every file of the folder into ``root``."""
    _write_json(root / "model_index.json", model_index(arch))
    _write_json(root / "scheduler" / "scheduler_config.json", dict(arch.scheduler))
    _write_json(root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **dict(arch.unet)})
    _write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKL", **dict(arch.vae)})
    for te_dir, tok_dir, spec in component_subfolders(arch):
        _write_json(root / te_dir / "config.json", text_encoder_json(spec))
        _write_json(root / tok_dir / "tokenizer_config.json", tokenizer_config(spec.pad_token))
        for name in TOKENIZER_FILES:
            shutil.copyfile(TOKENIZER_SOURCE / name, root / tok_dir / name)


def write_config_folder(arch: ModelArchitecture, dest: Path) -> Path:
    """Write (or reuse) the diffusers config folder for ``arch`` under the cache directory ``dest``.

    The folder is ``dest/<arch.cache_key()>``; it is written to a temporary sibling and renamed into place, so a
    concurrent or interrupted write never leaves a half-written folder behind.

    Args:
        arch: The architecture to describe.
        dest: Cache directory holding one folder per architecture.

    Returns:
        The folder, ready for ``from_pretrained``/``from_single_file(config=...)``.

    Raises:
        CheckpointLoadError: The shipped tokenizer files are missing or the folder cannot be written.
    """
    folder = Path(dest) / arch.cache_key()
    if (folder / "model_index.json").is_file():
        return folder
    missing = [n for n in TOKENIZER_FILES if not (TOKENIZER_SOURCE / n).is_file()]
    if missing:
        raise CheckpointLoadError(f"the shipped CLIP tokenizer files are missing: {missing} in {TOKENIZER_SOURCE}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        _populate(arch, staging)
        try:
            staging.replace(folder)
        except OSError:  # another writer won the race: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        raise CheckpointLoadError(f"cannot write the diffusers config folder {folder}: {error}") from error
    logger.debug("wrote diffusers config folder %s for %s", folder, arch.model_type.value)
    return folder
