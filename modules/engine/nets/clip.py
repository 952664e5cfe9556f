"""The CLIP text encoder (text tower only) of SD1, SD2 and SDXL checkpoints, with no transformers dependency.

One module, :class:`TextEncoder`, serves the three families of :data:`modules.engine.architecture.ENCODER_FAMILIES`.
It matches transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (pre-norm residual blocks, causal
self-attention, final layer norm, pooled output at the first EOS token, optional projection of it).

Its state dict uses the OpenCLIP key layout, q/k/v fused in one ``in_proj`` (one matmul instead of three):
``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final`` and, with a projection,
``text_projection`` (a ``[width, projection_dim]`` matrix applied as ``pooled @ text_projection``). OpenCLIP files
(SD2, SDXL's second encoder) therefore load with only their prefix removed; :func:`convert_weights` renames the
transformers-layout CLIP-L keys and concatenates their q/k/v.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from modules.engine.architecture import ENCODER_FAMILIES, TextEncoderSpec
from modules.engine.nets.layers import Embedding, LayerNorm, Linear

logger = logging.getLogger(__name__)

PROJECTION_CLASS = "CLIPTextModelWithProjection"
LAYOUTS = ("hf", "openclip")
MAX_LISTED = 10
# File keys that are never weights of the model: transformers' position ids, OpenCLIP's logit scale / causal mask.
IGNORED_KEY = re.compile(r"(^|\.)(position_ids|logit_scale|attn_mask)$")
LAYER_KEY = re.compile(r"(?:encoder\.layers|transformer\.resblocks)\.(\d+)\.")
# transformers (hf) layout → ours, per layer and at the top level (q/k/v are handled apart).
HF_LAYER_NAMES = (
    ("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
)  # fmt: skip
HF_TOP_NAMES = (
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.weight", "ln_final.weight"), ("final_layer_norm.bias", "ln_final.bias"),
)  # fmt: skip


class MissingWeightsError(KeyError):
    """Tensors a text encoder needs are absent from the file.

    ``args[0]`` and ``str()`` are the message (``N weights missing from the file: <full keys>``); ``missing`` holds
    the full file keys (component prefix included).
    """

    def __init__(self, missing: list[str]) -> None:
        more = f" (+{len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        super().__init__(f"{len(missing)} weights missing from the file: {', '.join(missing[:MAX_LISTED])}{more}")
        self.missing = tuple(missing)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class TextEncoderConfig:
    """The sizes and conventions of one CLIP text encoder (the fields of transformers' ``CLIPTextConfig`` we use)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TextEncoderConfig:
        """Build from a ``CLIPTextConfig``-style dict; keys this module does not use are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation ``x · sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    """Return the activation module for a ``hidden_act`` name (``quick_gelu`` or exact-erf ``gelu``)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unsupported CLIP hidden_act {name!r}; expected 'quick_gelu' or 'gelu'")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused q/k/v (OpenCLIP's ``attn``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"hidden_size {width} is not divisible by num_attention_heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` ``(B, T, C)``, each position seeing itself and the ones before it."""
        b, t, c = x.shape
        qkv = functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class ResidualBlock(nn.Module):
    """One pre-norm transformer layer: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(·))``."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = CausalSelfAttention(width, config.num_attention_heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        inner = config.intermediate_size
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=Linear(width, inner), act=_activation(config.hidden_act), c_proj=Linear(inner, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The stack of residual blocks (a holder, so that keys read ``transformer.resblocks.N``)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(config) for _ in range(config.num_hidden_layers))


@dataclass(frozen=True, slots=True)
class TextEncoderOutput:
    """What :meth:`TextEncoder.forward` returns (named as transformers' outputs).

    Attributes:
        last_hidden_state: ``(B, T, C)``, after the final layer norm.
        pooler_output: ``(B, C)``: ``last_hidden_state`` at each row's first EOS token (position 0 if none).
        hidden_states: When requested: the embeddings, then each layer's output (no final norm); else None.
        text_embeds: ``pooler_output @ text_projection`` ``(B, P)`` for encoders with a projection; else None.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_embeds: torch.Tensor | None = None


class TextEncoder(nn.Module):
    """A CLIP text encoder; build it on the meta device and fill it with ``load_state_dict(..., assign=True)``.

    Args:
        config: ``CLIPTextConfig``-style sizes (e.g. ``TextEncoderSpec.config``) or a :class:`TextEncoderConfig`.
        layout: The file's layout, ``"hf"`` or ``"openclip"``; informative only, the module's own layout is always
            OpenCLIP's (:func:`convert_weights` translates).
        projection: Add ``text_projection`` and return ``text_embeds`` (``CLIPTextModelWithProjection``).
    """

    def __init__(
        self, config: Mapping[str, Any] | TextEncoderConfig, *, layout: str = "openclip", projection: bool = False
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown text-encoder layout {layout!r}; expected one of {LAYOUTS}")
        cfg = config if isinstance(config, TextEncoderConfig) else TextEncoderConfig.from_mapping(config)
        self.config = cfg
        self.layout = layout
        width = cfg.hidden_size
        self.token_embedding = Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_position_embeddings, width))
        self.transformer = Transformer(cfg)
        self.ln_final = LayerNorm(width, eps=cfg.layer_norm_eps)
        self.text_projection: nn.Parameter | None = None
        self.spec: TextEncoderSpec | None = None  # where its weights are in the checkpoint (set by from_spec)
        if projection:
            self.text_projection = nn.Parameter(torch.empty(width, cfg.projection_dim or width))

    @classmethod
    def from_spec(cls, spec: TextEncoderSpec) -> TextEncoder:
        """Build the (empty) encoder a :class:`TextEncoderSpec` describes."""
        encoder = cls(spec.config, layout=ENCODER_FAMILIES[spec.family].layout, projection=has_projection(spec))
        encoder.spec = spec
        return encoder

    @property
    def final_layer_norm(self) -> nn.LayerNorm:
        """The final layer norm (transformers' name for ``ln_final``)."""
        return self.ln_final

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return self.token_embedding.weight.device

    def forward(
        self, input_ids: torch.Tensor, output_hidden_states: bool = False, inputs_embeds: torch.Tensor | None = None
    ) -> TextEncoderOutput:
        """Encode token ids ``(B, T)`` (T ≤ ``max_position_embeddings``); no host synchronisation.

        ``inputs_embeds`` (B, T, C) replaces the token vectors of ``input_ids`` (textual inversion), which still
        locate the EOS token for the pooled output. Only the causal mask is applied: padding tokens are attended to,
        as by transformers without a mask.
        """
        tokens = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        x = tokens + self.positional_embedding[: input_ids.shape[-1]]
        states = [x] if output_hidden_states else None
        for block in self.transformer.resblocks:
            x = block(x)
            if states is not None:
                states.append(x)
        last = self.ln_final(x)
        eos = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos]
        embeds = pooled @ self.text_projection if self.text_projection is not None else None
        return TextEncoderOutput(last, pooled, tuple(states) if states is not None else None, embeds)


def has_projection(spec: TextEncoderSpec) -> bool:
    """Whether the spec's encoder has a projection (``CLIPTextModelWithProjection`` semantics: OpenCLIP-bigG)."""
    return ENCODER_FAMILIES[spec.family].model_class == PROJECTION_CLASS


def key_plan(spec: TextEncoderSpec) -> dict[str, tuple[str, ...]]:
    """Map each of the module's state-dict keys to the file keys (prefix removed) it is made of (3 = concat)."""
    layout = ENCODER_FAMILIES[spec.family].layout
    projection = has_projection(spec)
    if layout not in LAYOUTS or (layout == "hf" and projection):
        raise ValueError(f"unsupported text-encoder layout {layout!r} (projection: {projection})")
    hf = layout == "hf"
    top = dict(HF_TOP_NAMES) if hf else {v: v for _, v in HF_TOP_NAMES}
    plan = {ours: (theirs,) for theirs, ours in top.items()}
    if projection:
        plan["text_projection"] = ("text_projection",)
    for i in range(int(spec.config["num_hidden_layers"])):
        dst = f"transformer.resblocks.{i}."
        src = f"encoder.layers.{i}." if hf else dst
        for kind in ("weight", "bias"):
            qkv = tuple(f"{src}self_attn.{p}_proj.{kind}" for p in "qkv") if hf else (f"{dst}attn.in_proj_{kind}",)
            plan[f"{dst}attn.in_proj_{kind}"] = qkv
            for theirs, ours in HF_LAYER_NAMES:
                plan[f"{dst}{ours}.{kind}"] = (f"{src}{theirs if hf else ours}.{kind}",)
    return plan


def _ignored(key: str, layers: int) -> bool:
    """Whether a file key (prefix removed) is a known non-weight or a layer beyond the encoder's depth."""
    m = LAYER_KEY.match(key)
    return bool(IGNORED_KEY.search(key) or key == "text_projection" or (m and int(m.group(1)) >= layers))


def convert_weights(
    file_tensors: Mapping[str, torch.Tensor], spec: TextEncoderSpec, *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Return the :class:`TextEncoder` state dict of one encoder, from its tensors in the file.

    ``file_tensors`` are the encoder's own tensors with ``spec.prefix`` already removed (e.g.
    ``embeddings.token_embedding.weight`` for CLIP-L, ``token_embedding.weight`` for OpenCLIP). Transformers-layout
    q/k/v are concatenated; OpenCLIP tensors are passed through (the same objects unless ``dtype`` casts them).
    Saved layers at or beyond ``num_hidden_layers`` (SD2's unused last layer), ``position_ids``, ``logit_scale``,
    ``attn_mask`` and the ``text_projection`` of encoders without one are ignored; other unknown keys are logged.

    Args:
        file_tensors: ``{file key without spec.prefix: tensor}``.
        spec: The encoder (family, key prefix, config).
        dtype: Cast floating-point tensors to it (None: keep the file's dtype).

    Raises:
        MissingWeightsError: (a ``KeyError``) naming the missing file keys, ``spec.prefix`` included.
        ValueError: The family's layout is unknown.
    """
    plan = key_plan(spec)
    missing = sorted({spec.prefix + k for parts in plan.values() for k in parts if k not in file_tensors})
    if missing:
        raise MissingWeightsError(missing)

    def get(key: str) -> torch.Tensor:
        tensor = file_tensors[key]
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    out = {name: get(src[0]) if len(src) == 1 else torch.cat([get(k) for k in src]) for name, src in plan.items()}
    used = {k for parts in plan.values() for k in parts}
    layers = int(spec.config["num_hidden_layers"])
    extra = [k for k in file_tensors if k not in used and not _ignored(k, layers)]
    if extra:
        logger.warning("%d unexpected %s keys ignored, e.g. %s", len(extra), spec.family, ", ".join(extra[:MAX_LISTED]))
    return out


def load_text_encoder(
    file_tensors: Mapping[str, torch.Tensor], spec: TextEncoderSpec, *, dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """Build a :class:`TextEncoder` on the meta device and fill it with its weights (eval, no grad).

    ``file_tensors`` are keyed as for :func:`convert_weights` (``spec.prefix`` removed).

    Raises:
        MissingWeightsError: A weight is missing.
        RuntimeError: A weight has the wrong shape (from ``load_state_dict``).
    """
    weights = convert_weights(file_tensors, spec, dtype=dtype)
    with torch.device("meta"):
        model = TextEncoder.from_spec(spec)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.requires_grad_(False).eval()
