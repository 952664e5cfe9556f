"""Detect a checkpoint's model type from its tensor names and shapes; reads only the safetensors header / key shapes.

The rules follow A1111's order (``modules/sd_models_config.py``, a1111-compat.md §4): SD3, SDXL (base / inpaint),
SDXL refiner, SD2 depth, unCLIP, SD2 (inpaint), SD1 inpaint / instruct-pix2pix, AltDiffusion, SD1. The supported
types map to :class:`~modules.engine.types.ModelType`; the others are recognised only to explain the refusal.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modules.engine.types import ModelType
from modules.errors import CheckpointLoadError, UnknownModelTypeError

logger = logging.getLogger(__name__)

Shapes = Mapping[str, Sequence[int]]

UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class DetectionRule:
    """One row of the detection table.

    Attributes:
        sentinel: The key whose presence selects this row.
        result: The model type, or a description of an unsupported architecture (a str), or None to fall through.
        by_in_channels: Overrides of ``result`` keyed by the UNet's input channel count (9 = inpainting).
    """

    sentinel: str
    result: ModelType | str | None
    by_in_channels: Mapping[int, ModelType | str] = field(default_factory=dict)


DETECTION_RULES: tuple[DetectionRule, ...] = (
    DetectionRule("model.diffusion_model.x_embedder.proj.weight", "an SD3 model (not supported)"),
    DetectionRule("conditioner.embedders.1.model.ln_final.weight", ModelType.SDXL, {9: ModelType.SDXL_INPAINT}),
    DetectionRule("conditioner.embedders.0.model.ln_final.weight", ModelType.SDXL_REFINER),
    DetectionRule(
        "depth_model.model.pretrained.act_postprocess3.0.project.0.bias", "an SD2 depth model (not supported)"
    ),
    DetectionRule("embedder.model.ln_final.weight", "an SD2 unCLIP model (not supported)"),
    DetectionRule(
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        ModelType.SD2,
        {9: ModelType.SD2_INPAINT},
    ),
    DetectionRule(
        UNET_IN_KEY,
        None,
        {9: ModelType.SD1_INPAINT, 8: ModelType.SD1_PIX2PIX},
    ),
    DetectionRule(
        "cond_stage_model.roberta.embeddings.word_embeddings.weight", "an AltDiffusion model (not supported)"
    ),
    DetectionRule(UNET_IN_KEY, ModelType.SD1),
)

# (key prefix or fragment, what the file seems to be) for explaining files that match no rule.
LOOKS_LIKE: tuple[tuple[str, str], ...] = (
    ("lora_unet_", "a LoRA (lora_unet_* keys); put it in models/Lora"),
    ("lora_te", "a LoRA (lora_te* keys); put it in models/Lora"),
    (".lora_down.", "a LoRA (lora_down keys); put it in models/Lora"),
    (".lora_A.", "a LoRA (PEFT lora_A keys); put it in models/Lora"),
    ("hada_w1_a", "a LyCORIS/LoHa network; put it in models/Lora"),
    ("string_to_param", "a textual inversion embedding; put it in embeddings/"),
    ("emb_params", "a textual inversion embedding; put it in embeddings/"),
    ("control_model.", "a ControlNet; put it in models/ControlNet"),
    ("input_hint_block.", "a ControlNet; put it in models/ControlNet"),
    ("double_blocks.", "a Flux model (not supported)"),
    ("joint_blocks.", "an SD3 model (not supported)"),
    ("first_stage_model.", "only a VAE inside a checkpoint wrapper (no UNet); put VAEs in models/VAE"),
    ("decoder.up.", "a VAE; put it in models/VAE"),
    ("decoder.up_blocks.", "a VAE in diffusers format; put it in models/VAE"),
    ("down_blocks.", "a diffusers-format component, not an original single-file checkpoint"),
)


def _in_channels(shapes: Shapes) -> int | None:
    """Return the UNet's input channel count, or None when the UNet input conv is absent."""
    shape = shapes.get(UNET_IN_KEY)
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def describe_unknown(shapes: Shapes) -> str | None:
    """Guess what a non-checkpoint file is (LoRA, VAE, embedding…) from its keys, or None if unrecognisable."""
    for fragment, description in LOOKS_LIKE:
        if any(fragment in key for key in shapes):
            return description
    return None


def detect_model_type(shapes: Shapes, *, source: str | Path | None = None) -> ModelType:
    """Tell the model type from tensor names and shapes, testing :data:`DETECTION_RULES` in A1111's order.

    Args:
        shapes: Key → shape of every tensor in the file (only the keys and UNet input shape are consulted).
        source: The file, named in error messages.

    Returns:
        The detected type.

    Raises:
        UnknownModelTypeError: No rule matched, or the matching rule is an unsupported architecture.
    """
    in_channels = _in_channels(shapes)
    for rule in DETECTION_RULES:
        if rule.sentinel not in shapes:
            continue
        result = rule.by_in_channels.get(in_channels, rule.result) if in_channels is not None else rule.result
        if result is None:
            continue
        if isinstance(result, ModelType):
            logger.debug("%s: %s (sentinel %s, %s input channels)", source, result.value, rule.sentinel, in_channels)
            return result
        raise UnknownModelTypeError(f"{_name(source)}: looks like {result}; sentinel key {rule.sentinel} found")
    raise UnknownModelTypeError(_unknown_message(shapes, source))


def _name(source: str | Path | None) -> str:
    """Return the file name for messages."""
    return Path(source).name if source is not None else "checkpoint"


def _unknown_message(shapes: Shapes, source: str | Path | None) -> str:
    """Build the message for a file that matches no detection rule."""
    looked_for = ", ".join(dict.fromkeys(rule.sentinel for rule in DETECTION_RULES))
    guess = describe_unknown(shapes)
    seems = f"it looks like {guess}" if guess else f"its {len(shapes)} keys match no known layout"
    examples = ", ".join(list(shapes)[:3])
    return (
        f"{_name(source)} is not a Stable Diffusion checkpoint: {seems}. "
        f"Looked for any of: {looked_for}. First keys: {examples or '(none)'}"
    )


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Read a ``.safetensors`` file's tensor shapes from its JSON header, without reading any tensor data.

    The header is an 8-byte little-endian length followed by that many bytes of JSON. The data offsets it declares
    are checked against the file size, so a truncated download is caught here.

    Raises:
        CheckpointLoadError: The file is too short, the header is not valid JSON, or the data is truncated.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointLoadError(f"{path.name}: not a safetensors file ({size} bytes, too short for a header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointLoadError(f"{path.name}: corrupt safetensors header (declares {length} header bytes)")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointLoadError(f"{path.name}: corrupt safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise CheckpointLoadError(f"{path.name}: corrupt safetensors header (not a JSON object)")
    return _shapes_from_header(header, path, data_size=size - 8 - length)


def _shapes_from_header(header: dict[str, object], path: Path, *, data_size: int) -> dict[str, tuple[int, ...]]:
    """Validate the header entries and return their shapes."""
    shapes: dict[str, tuple[int, ...]] = {}
    data_end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shapes[key] = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
            data_end = max(data_end, int(entry["data_offsets"][1]))  # type: ignore[index]
        except (TypeError, KeyError, IndexError, ValueError) as error:
            raise CheckpointLoadError(f"{path.name}: corrupt safetensors header entry {key!r}") from error
    if data_end > data_size:
        raise CheckpointLoadError(
            f"{path.name}: truncated file: the header declares {data_end} bytes of tensor data, {data_size} present"
        )
    return shapes


def read_header(path: Path, *, allow_unsafe: bool = False) -> dict[str, tuple[int, ...]]:
    """Return key → shape for every tensor of a checkpoint file.

    ``.safetensors``: only the JSON header is read. ``.ckpt``: the pickle is loaded through the safe loader
    (:mod:`modules.engine.safe_load`); its tensors may be nested under ``state_dict``.

    Args:
        path: The checkpoint file.
        allow_unsafe: Unpickle ``.ckpt`` files without restriction (``--disable-safe-unpickle``).

    Raises:
        CheckpointLoadError: Unknown extension, missing, corrupt or truncated file.
        UnsafeCheckpointError: A ``.ckpt`` pickle was refused.
    """
    from modules.engine.safe_load import load_ckpt_state_dict  # torch is imported only when a .ckpt is read

    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors_header(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return {k: tuple(v.shape) for k, v in load_ckpt_state_dict(path, allow_unsafe=allow_unsafe).items()}
    raise CheckpointLoadError(f"{path.name}: unsupported file type {suffix!r} (expected .safetensors or .ckpt)")
