"""Build a checkpoint's networks (UNet, VAE, text encoders) and tokenizers from its one LDM state dict.

The networks are our own (:mod:`modules.engine.nets`) and keep the file's key layout, so each is built empty on the
meta device (no random init, no memory) and filled by name with ``load_state_dict(assign=True)``: the tensors the
file holds become the model's parameters as they are (already in the target dtype and, when it fits, already on the
GPU; see ``loader.read_state_dict``). Missing or misshapen weights are reported exactly; unexpected ones are logged.
Nothing here imports diffusers or transformers' models (importing them cost seconds per process start).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from modules.engine.architecture import UNET, VAE, ModelArchitecture, TextEncoderSpec
from modules.engine.nets.clip import MissingWeightsError, TextEncoder, convert_weights
from modules.engine.nets.unet import UNet
from modules.engine.nets.vae import AutoencoderKL
from modules.engine.tokenizers import CLIP_PAD, OPENCLIP_PAD, clip_tokenizer
from modules.errors import CheckpointLoadError

logger = logging.getLogger(__name__)

MAX_LISTED = 10
# File keys that are never weights of the built networks (schedule buffers and the like live outside the prefixes).
IGNORED_KEYS = re.compile(r"(^|\.)position_ids$|(^|\.)logit_scale$|(^|\.)attn_mask$")


@dataclass
class ModelComponents:
    """The networks and tokenizers of one loaded checkpoint (what a diffusers pipeline would hold, and no more).

    SDXL keeps the base model's names: ``text_encoder`` is CLIP-L, ``text_encoder_2`` OpenCLIP bigG; the refiner
    has only ``text_encoder_2``.

    Attributes:
        unet: The denoising UNet.
        vae: The autoencoder.
        offload_hooks: The hooks of the memory mode, when it offloads (set by ``offload.apply_mode``).
        embeddings: The textual-inversion embeddings its prompts may name (set for each job by the pipeline).
        schedule: The noise schedule (``num_train_timesteps``, ``beta_start``/``beta_end``, ``beta_schedule``,
            ``prediction_type``), read by ``sampling.DiscreteModel.from_config``.
    """

    unet: UNet
    vae: AutoencoderKL
    schedule: dict[str, Any]
    text_encoder: TextEncoder | None = None
    text_encoder_2: TextEncoder | None = None
    tokenizer: Any = field(default=None, repr=False)
    tokenizer_2: Any = field(default=None, repr=False)
    offload_hooks: Any = field(default=None, repr=False)  # engine/offload.py's ModelOffload / SequentialOffload
    embeddings: Any = field(default=None, repr=False)  # engine/embeddings.py's EmbeddingIndex, set per job

    def models(self) -> dict[str, torch.nn.Module]:
        """The networks by name, in the order a job uses them (text encoders, UNet, VAE)."""
        named = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2, "unet": self.unet}
        return {name: m for name, m in {**named, "vae": self.vae}.items() if m is not None}

    def to(self, device: torch.device | str) -> ModelComponents:
        """Move every network to ``device`` (dtypes unchanged)."""
        for model in self.models().values():
            model.to(device)
        return self

    def __iter__(self) -> Iterator[torch.nn.Module]:
        return iter(self.models().values())


def _examples(keys: list[str]) -> str:
    """Return up to MAX_LISTED keys, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def fill_model(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    what: str,
    source: str,
    dtype: torch.dtype,
    prefix: str = "",
) -> None:
    """Assign ``weights`` (cast to ``dtype`` where they are not yet) to an empty model.

    Messages name the file's keys (``prefix`` + the model's key).

    Raises:
        CheckpointLoadError: A weight is missing or has the wrong shape.
    """
    weights = {
        k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v
        for k, v in weights.items()
        if not IGNORED_KEYS.search(k)
    }
    unexpected = _assign(model, weights)
    if unexpected is None:  # a shape differs: torch's loader applies the modules' own load hooks, or names it
        try:
            unexpected = model.load_state_dict(weights, strict=False, assign=True).unexpected_keys
        except RuntimeError as error:
            reason = " ".join(str(error).split())[:400]
            raise CheckpointLoadError(f"{source}: {what} weights do not fit the architecture: {reason}") from error
    named = [*model.named_parameters(), *model.named_buffers()]
    missing = sorted(prefix + n for n, t in named if t.device.type == "meta")
    if missing:
        raise CheckpointLoadError(
            f"{source}: {len(missing)} {what} weights missing from the file: {_examples(missing)}"
        )
    if unexpected:
        logger.warning(
            "%s: %d unexpected %s keys ignored, e.g. %s",
            source, len(unexpected), what, _examples(sorted(prefix + k for k in unexpected)),
        )  # fmt: skip
    model.requires_grad_(False)
    model.eval()


def _assign(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> list[str] | None:
    """Make each tensor of ``weights`` the model's parameter/buffer of that name, as it is (no copy).

    What ``load_state_dict(assign=True)`` does, minus its per-module hook machinery (a few times faster on thousands
    of tensors). Returns the keys the model has no slot for, or None, assigning nothing, when a shape differs (then
    the caller uses torch's loader, which runs modules' own load hooks such as the VAE's 2-D attention weights).
    """
    slots: dict[str, tuple[torch.nn.Module, str, bool]] = {}
    for module_name, module in model.named_modules():
        head = module_name + "." if module_name else ""
        for name, param in module._parameters.items():
            if param is not None:
                slots[head + name] = (module, name, True)
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                slots[head + name] = (module, name, False)
    for key, (module, name, is_param) in slots.items():
        if key in weights:
            current = module._parameters[name] if is_param else module._buffers[name]
            if current.shape != weights[key].shape:
                return None
    for key, (module, name, is_param) in slots.items():
        tensor = weights.get(key)
        if tensor is None:
            continue
        if is_param:
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[name] = tensor
    return [key for key in weights if key not in slots]


def _under(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


@dataclass
class EmptyNetworks:
    """A checkpoint's networks built on the meta device, before their weights are read (:func:`empty_networks`)."""

    unet: UNet
    vae: AutoencoderKL
    text_encoders: list[TextEncoder]


def empty_networks(arch: ModelArchitecture) -> EmptyNetworks:
    """Build ``arch``'s networks without weights (meta device: no memory, no init).

    Needs only the architecture, so the loader builds them while a safetensors file is being read (pure Python:
    ≈0.1 s for SD1.5 on the GPU machine's host, tests/gpu/results/load_profile_switch_sdxl-h200.txt).
    """
    with torch.device("meta"):  # a thread-local default: safe beside a reader in another thread
        return EmptyNetworks(
            unet=UNet(arch.unet),
            vae=AutoencoderKL(arch.vae),
            text_encoders=[TextEncoder.from_spec(spec) for spec in arch.text_encoders],
        )


def fill_unet(unet: UNet, state_dict: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype) -> UNet:
    """The empty ``unet`` filled from the file's ``model.diffusion_model.*`` tensors."""
    fill_model(unet, _under(state_dict, UNET), "UNet", source, dtype, UNET)
    return unet


def fill_vae(
    vae: AutoencoderKL, state_dict: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype
) -> AutoencoderKL:
    """The empty ``vae`` filled from the file's ``first_stage_model.*`` tensors."""
    fill_model(vae, _under(state_dict, VAE), "VAE", source, dtype, VAE)
    return vae


def fill_text_encoder(
    model: TextEncoder,
    state_dict: Mapping[str, torch.Tensor],
    spec: TextEncoderSpec,
    source: str,
    dtype: torch.dtype,
) -> TextEncoder:
    """One empty CLIP text encoder filled from its tensors in the file (CLIP-L's transformers layout or OpenCLIP's)."""
    try:
        weights = convert_weights(_under(state_dict, spec.prefix), spec)
    except MissingWeightsError as error:
        what = f"{len(error.missing)} text encoder ({spec.family}) weights missing from the file"
        raise CheckpointLoadError(f"{source}: {what}: {_examples(list(error.missing))}") from error
    fill_model(model, weights, f"text encoder ({spec.family})", source, dtype, spec.prefix)
    return model


def build_components(
    state_dict: Mapping[str, torch.Tensor],
    arch: ModelArchitecture,
    *,
    source: str,
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
    empty: EmptyNetworks | None = None,
) -> ModelComponents:
    """Build every network of ``arch`` from the whole checkpoint (LDM key layout) and attach the tokenizers.

    Args:
        state_dict: The checkpoint's tensors.
        arch: Its architecture (already checked against the shapes).
        source: File name for messages.
        dtype: Dtype of the UNet and text encoders.
        vae_dtype: Dtype of the VAE.
        empty: ``empty_networks(arch)``, built beforehand (else built here).

    Raises:
        CheckpointLoadError: A network's weights are missing or misshapen.
    """
    empty = empty or empty_networks(arch)
    parts = ModelComponents(
        unet=fill_unet(empty.unet, state_dict, source, dtype),
        vae=fill_vae(empty.vae, state_dict, source, vae_dtype),
        schedule=dict(arch.scheduler),
    )
    specs = list(arch.text_encoders)
    names = ["text_encoder_2"] if arch.model_type.is_sdxl and len(specs) == 1 else ["text_encoder", "text_encoder_2"]
    for name, spec, encoder in zip(names, specs, empty.text_encoders, strict=False):
        setattr(parts, name, fill_text_encoder(encoder, state_dict, spec, source, dtype))
        pad = OPENCLIP_PAD if spec.pad_token == OPENCLIP_PAD else CLIP_PAD
        setattr(parts, name.replace("text_encoder", "tokenizer"), clip_tokenizer(pad))
    return parts
