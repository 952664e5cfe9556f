"""Kohya LoRA module names → the weights of the original LDM single-file checkpoint that they change.

kohya-ss LoRA files (the format of almost every civitai LoRA) name each patched layer ``<name>.lora_down.weight``,
``<name>.lora_up.weight`` and ``<name>.alpha``, where ``<name>`` is a module path with ``.`` replaced by ``_``.
Module names contain ``_`` themselves, so kohya names cannot be parsed back reliably; instead this module starts
from the checkpoint's own keys and derives, for each Linear/Conv weight, every kohya name that denotes it:

* UNet, diffusers paths (kohya sd-scripts for SD1/SD2, several SDXL trainers): ``lora_unet_down_blocks_0_…``,
  ``lora_unet_mid_block_…``, ``lora_unet_up_blocks_3_…``, ``lora_unet_conv_in``, ``lora_unet_time_embedding_…``.
* UNet, LDM/sgm paths (kohya's SDXL LoRAs): ``lora_unet_input_blocks_4_1_…``, ``lora_unet_middle_block_1_…``.
  Both styles are mapped for every model type; they never collide (different first path component).
* Text encoders, transformers' CLIP paths from ``text_model_encoder_layers_N_…``. The prefix follows the diffusers
  component the encoder becomes: ``lora_te_`` for the single encoder of SD1/SD2 (``cond_stage_model``),
  ``lora_te1_`` for the HF-layout CLIP-L and ``lora_te2_`` for the OpenCLIP bigG of an SDXL ``conditioner``. The
  SDXL refiner holds only bigG (``conditioner.embedders.0.model``); diffusers loads it as ``text_encoder_2`` and it is
  the base model's second encoder, so it is ``lora_te2_`` too (``lora_te1_`` names then match nothing, as they
  should). OpenCLIP stores q, k and v stacked in one ``attn.in_proj_weight``: those map to row chunks 0/1/2 of 3.

The UNet block correspondence (``input_blocks.N`` ↔ ``down_blocks.i.{resnets,attentions}.j``) depends on the number
of layers per level, which is read from the keys (the index of the first downsampler), never from the model type.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from modules.errors import WeightPatchError

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
WEIGHT_SUFFIX = ".weight"

# LDM UNet paths (no prefix, no ".weight") outside the blocks → diffusers UNet2DConditionModel paths.
UNET_TOP_LAYERS = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.2": "conv_out",
}
# Layers of an LDM ResBlock → those of a diffusers ResnetBlock2D (the norms are left out on purpose).
RESNET_LAYERS = {
    "in_layers.2": "conv1",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
# Linear/Conv layers of a SpatialTransformer; their paths are the same in diffusers' Transformer2DModel.
ATTENTION_LAYER = re.compile(
    r"proj_in|proj_out|transformer_blocks\.\d+\.(?:attn\d\.(?:to_[qkv]|to_out\.0)|ff\.net\.(?:0\.proj|2))"
)
SIDE_BLOCK = re.compile(r"(input|output)_blocks\.(\d+)\.\d+\.(.+)")
MIDDLE_BLOCK = re.compile(r"middle_block\.(\d+)\.(.+)")
DOWNSAMPLER = re.compile(r"input_blocks\.(\d+)\.0\.op")
INPUT_BLOCK = re.compile(r"input_blocks\.(\d+)\.")

# Text encoders: owner (LDM cond_stage_model or an sgm embedder), layout (HF "transformer" or OpenCLIP "model").
TEXT_ENCODER = re.compile(r"(cond_stage_model|conditioner\.embedders\.\d+)\.(transformer|model)\.(.+)")
HF_LAYER = re.compile(r"(?:text_model\.)?(encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12]))\.weight")
OPENCLIP_LAYER = re.compile(
    r"transformer\.resblocks\.(\d+)\.(?:attn\.in_proj_weight|(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.weight)"
)
OPENCLIP_TO_HF = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
QKV_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass(frozen=True)
class LoraTarget:
    """The checkpoint weight a LoRA module changes.

    Attributes:
        key: The LDM checkpoint key of the weight, e.g. ``model.diffusion_model.input_blocks.1.1.proj_in.weight``.
        chunk: Which of ``chunks`` equal blocks of rows (dim 0) of that weight the module is.
        chunks: 3 for q/k/v inside OpenCLIP's fused ``attn.in_proj_weight``, else 1.
    """

    key: str
    chunk: int = 0
    chunks: int = 1


def _kohya(path: str) -> str:
    """Flatten a module path the way kohya does (``.`` → ``_``)."""
    return path.replace(".", "_")


def _blocks_per_level(unet_paths: Iterable[str]) -> int:
    """Return how many LDM input blocks one UNet level spans (its layers plus the downsampler)."""
    paths = list(unet_paths)
    downsamplers = [int(m.group(1)) for p in paths if (m := DOWNSAMPLER.fullmatch(p))]
    if downsamplers:  # level 0 is input_blocks 1..n, its downsampler is input_blocks n+1
        return min(downsamplers)
    inputs = [int(m.group(1)) for p in paths if (m := INPUT_BLOCK.match(p))]
    return max(inputs, default=0) + 1  # a single level: no downsampler at all


def _block_layer(rest: str) -> tuple[str, str] | None:
    """Classify a path inside an LDM block as (diffusers group, diffusers sub-path); None for norms and the like."""
    if rest in RESNET_LAYERS:
        return "resnets", RESNET_LAYERS[rest]
    if rest == "op":
        return "downsamplers", "conv"
    if rest == "conv":
        return "upsamplers", "conv"
    if ATTENTION_LAYER.fullmatch(rest):
        return "attentions", rest
    return None


def _diffusers_unet_path(path: str, per_level: int) -> str | None:
    """Return the diffusers module path of an LDM UNet layer path, or None if it is no Linear/Conv layer."""
    if path in UNET_TOP_LAYERS:
        return UNET_TOP_LAYERS[path]
    if m := MIDDLE_BLOCK.fullmatch(path):  # middle_block.0/1/2 = resnets.0, attentions.0, resnets.1
        layer = _block_layer(m.group(2))
        if layer is None or layer[0] not in ("resnets", "attentions"):
            return None
        return f"mid_block.{layer[0]}.{int(m.group(1)) // 2}.{layer[1]}"
    m = SIDE_BLOCK.fullmatch(path)
    layer = _block_layer(m.group(3)) if m else None
    if m is None or layer is None:
        return None
    group, leaf = layer
    if m.group(1) == "input":  # input_blocks.0 is conv_in, so levels start at 1
        level, index = divmod(int(m.group(2)) - 1, per_level)
        side, resampler = "down_blocks", "downsamplers"
    else:  # up blocks have one layer more than down blocks: exactly per_level output blocks per level
        level, index = divmod(int(m.group(2)), per_level)
        side, resampler = "up_blocks", "upsamplers"
    if group == resampler:
        return f"{side}.{level}.{group}.0.{leaf}"
    if group in ("downsamplers", "upsamplers"):  # a downsampler among the output blocks or vice versa
        return None
    return f"{side}.{level}.{group}.{index}.{leaf}"


def _unet_names(keys: list[str]) -> Iterator[tuple[str, LoraTarget]]:
    """Yield (kohya name, target) for each UNet Linear/Conv weight, in the diffusers and the LDM style."""
    unet = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith(WEIGHT_SUFFIX)]
    paths = {k[len(UNET_PREFIX) : -len(WEIGHT_SUFFIX)]: k for k in unet}
    per_level = _blocks_per_level(paths)
    for path, key in paths.items():
        diffusers_path = _diffusers_unet_path(path, per_level)
        if diffusers_path is not None:
            yield "lora_unet_" + _kohya(diffusers_path), LoraTarget(key)
            yield "lora_unet_" + _kohya(path), LoraTarget(key)


def _text_prefix(owner: str, layout: str) -> str:
    """Return the kohya prefix of a text encoder: te for LDM's single one, te1/te2 for sgm's CLIP-L/OpenCLIP."""
    if owner == "cond_stage_model":
        return "lora_te_"
    return "lora_te1_" if layout == "transformer" else "lora_te2_"


def _text_names(keys: list[str]) -> Iterator[tuple[str, LoraTarget]]:
    """Yield (kohya name, target) for the attention and MLP projections of every text encoder."""
    for key in keys:
        m = TEXT_ENCODER.fullmatch(key)
        if m is None:
            continue
        owner, layout, rest = m.groups()
        prefix = _text_prefix(owner, layout) + "text_model_"
        if layout == "transformer":
            if hf := HF_LAYER.fullmatch(rest):  # old files lack the "text_model." level
                yield prefix + _kohya(hf.group(1)), LoraTarget(key)
        elif clip := OPENCLIP_LAYER.fullmatch(rest):
            layer, part = clip.groups()
            base = f"{prefix}encoder_layers_{layer}_"
            if part is None:  # attn.in_proj_weight: q, k and v stacked in rows
                for chunk, projection in enumerate(QKV_PROJECTIONS):
                    yield base + _kohya(projection), LoraTarget(key, chunk, len(QKV_PROJECTIONS))
            else:
                yield base + _kohya(OPENCLIP_TO_HF[part]), LoraTarget(key)


def lora_targets(checkpoint_keys: Iterable[str]) -> dict[str, LoraTarget]:
    """Map every kohya LoRA module name that can apply to a checkpoint with these keys to its target.

    Args:
        checkpoint_keys: The full LDM keys of the checkpoint (SD1, SD2, SD1 inpainting, SDXL base or refiner);
            only ``.weight`` keys of Linear/Conv layers (and OpenCLIP's ``attn.in_proj_weight``) are used.

    Returns:
        ``{kohya module name (no ".lora_down.weight" suffix): target}``; names of layers the checkpoint lacks are
        absent, so a LoRA made for another model type matches nothing.

    Raises:
        WeightPatchError: Two keys of the checkpoint claim the same kohya name (a layer saved twice, e.g. under
            both ``cond_stage_model.transformer.encoder`` and ``….transformer.text_model.encoder``).
    """
    keys = [k for k in checkpoint_keys if k.endswith(WEIGHT_SUFFIX) or k.endswith(".in_proj_weight")]
    targets: dict[str, LoraTarget] = {}
    for name, target in (*_unet_names(keys), *_text_names(keys)):
        known = targets.setdefault(name, target)
        if known != target:
            raise WeightPatchError(
                f"LoRA module {name} would change both {known.key} and {target.key}: the checkpoint holds this "
                "layer twice under different keys; re-save it with one copy"
            )
    logger.debug("%d kohya LoRA module names for %d checkpoint keys", len(targets), len(keys))
    return targets
