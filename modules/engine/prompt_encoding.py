"""Run tokenized prompt chunks through the CLIP text encoders and apply A1111's emphasis maths."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from modules.engine.types import ModelType
from modules.errors import InvalidRequestError

if TYPE_CHECKING:
    from modules.engine.embeddings import Embedding
    from modules.engine.prompts import PromptChunk, TokenizedPrompt

    Fixes = tuple[tuple[int, Embedding], ...]  # a chunk's embeddings: (offset after BOS, embedding)

logger = logging.getLogger(__name__)

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
"""A1111's ``emphasis`` setting values (modules/sd_emphasis.py)."""


@dataclass(frozen=True, slots=True)
class PromptEmbeddings:
    """Text conditioning for one batch, ready for the UNet.

    Attributes:
        prompt_embeds: ``(B, 77·k, C)``.
        negative_prompt_embeds: ``(B, 77·k, C)``, the same ``k``.
        pooled_prompt_embeds: SDXL only: ``(B, P)`` from the second encoder's first chunk; None otherwise.
        negative_pooled_prompt_embeds: SDXL only, as above for the negative prompts.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def as_pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """Return the keyword arguments for ``parts(...)``; the pooled ones only when present."""
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None and self.negative_pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


@dataclass(frozen=True, slots=True)
class _Encoder:
    """One text encoder and how to read its output.

    ``layer`` indexes ``hidden_states`` (None = ``last_hidden_state``); ``final_norm`` applies the final layer norm
    to that hidden state; ``pooled`` reads ``text_embeds``; ``pad_id`` replaces every token after the first EOS.
    """

    text_encoder: Any
    layer: int | None
    final_norm: bool
    pooled: bool
    pad_id: int
    eos_id: int


def _pad_id(tokenizer: Any) -> int:
    """Return the id that fills a chunk after its first EOS (EOS for CLIP-L, 0 for OpenCLIP's ``!``)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _num_layers(text_encoder: Any) -> int:
    """Return the number of transformer layers of a CLIP text encoder."""
    return int(text_encoder.config.num_hidden_layers)


def _encoders(parts: Any, model_type: ModelType, clip_skip: int) -> list[_Encoder]:
    """Describe the encoders of ``parts`` for ``model_type`` (a1111-compat.md §6, clip skip)."""
    if model_type.is_sdxl:
        # Both encoders: penultimate hidden state, no final norm; pooled from the second. Clip skip is ignored.
        out = []
        if getattr(parts, "text_encoder", None) is not None:
            tok = parts.tokenizer
            out.append(_Encoder(parts.text_encoder, -2, False, False, _pad_id(tok), tok.eos_token_id))
        tok2 = parts.tokenizer_2
        out.append(_Encoder(parts.text_encoder_2, -2, False, True, _pad_id(tok2), tok2.eos_token_id))
        return out
    tok = parts.tokenizer
    if model_type in (ModelType.SD2, ModelType.SD2_INPAINT):
        # SD2's encoder is built with 23 layers (the saved 24th is unused): last_hidden_state is A1111's
        # penultimate layer + ln_final.
        return [_Encoder(parts.text_encoder, None, False, False, _pad_id(tok), tok.eos_token_id)]
    layers = _num_layers(parts.text_encoder)
    if not 1 <= clip_skip <= layers:
        raise InvalidRequestError(f"Clip skip must be between 1 and {layers}, got {clip_skip}")
    layer = None if clip_skip == 1 else -clip_skip
    return [_Encoder(parts.text_encoder, layer, clip_skip > 1, False, _pad_id(tok), tok.eos_token_id)]


def _pad_after_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Replace every id after the first EOS of each row with ``pad_id`` (OpenCLIP's padding)."""
    if pad_id == eos_id:
        return tokens
    first_eos = (tokens == eos_id).int().argmax(dim=1, keepdim=True)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0)
    return torch.where(positions > first_eos, torch.full_like(tokens, pad_id), tokens)


def _inputs_embeds(te: Any, ids: torch.Tensor, fixes: Sequence[Fixes]) -> torch.Tensor | None:
    """The token vectors of ``ids`` with each row's textual-inversion embeddings put in (None when there are none)."""
    if not any(fixes):
        return None
    vectors = te.token_embedding(ids)
    width = vectors.shape[-1]
    for row, row_fixes in enumerate(fixes):
        for offset, embedding in row_fixes:  # offset counts from after BOS
            matrix = embedding.vectors[width].to(device=vectors.device, dtype=vectors.dtype)
            vectors[row, 1 + offset : 1 + offset + matrix.shape[0]] = matrix
    return vectors


def _run(
    encoder: _Encoder, tokens: torch.Tensor, fixes: Sequence[Fixes] = ()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode one chunk batch ``(B, 77)``; return the hidden state ``(B, 77, C)`` and pooled ``(B, P)`` or None."""
    te = encoder.text_encoder
    ids = _pad_after_eos(tokens, encoder.eos_id, encoder.pad_id).to(te.device)
    embeds = _inputs_embeds(te, ids, fixes)
    extra = {"inputs_embeds": embeds} if embeds is not None else {}
    out = te(input_ids=ids, output_hidden_states=encoder.layer is not None, **extra)
    hidden = out.last_hidden_state if encoder.layer is None else out.hidden_states[encoder.layer]
    if encoder.final_norm:
        hidden = te.final_layer_norm(hidden)
    return hidden, (out.text_embeds if encoder.pooled else None)


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """Weight each token vector of ``z`` ``(B, T, C)`` by ``multipliers`` ``(B, T)`` as A1111's emphasis mode does.

    ``Original`` rescales the whole tensor afterwards so its mean equals the mean before weighting; ``No norm``
    does not; ``Ignore`` and ``None`` leave ``z`` unchanged. Where all weights are 1, ``z`` is returned as is (what
    the rescale gives anyway); a weighted mean of exactly 0 skips the rescale instead of dividing by zero.
    """
    if mode in ("Ignore", "None") or bool((multipliers == 1.0).all()):
        return z
    mean_before = z.mean()
    z = z * multipliers.to(device=z.device, dtype=z.dtype).unsqueeze(-1)
    mean_after = z.mean()
    if mode == "Original" and bool(mean_after != 0):
        z = z * (mean_before / mean_after)
    return z


def _empty_chunk(bos: int, eos: int) -> tuple[tuple[int, ...], tuple[float, ...], Fixes]:
    """Return the tokens, weights and (no) embeddings of an empty chunk: BOS followed by 76 EOS."""
    return (bos, *([eos] * 76)), (1.0,) * 77, ()


def _encode_side(
    encoders: Sequence[_Encoder], prompts: Sequence[TokenizedPrompt], n_chunks: int, emphasis: str, bos: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode one side (cond or uncond) chunk by chunk; concatenate chunks on dim 1 and encoders on dim 2."""
    per_encoder: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for encoder in encoders:
        empty = _empty_chunk(bos, encoder.eos_id)
        outputs = []
        for i in range(n_chunks):
            rows = [_chunk_row(p.chunks[i]) if i < len(p.chunks) else empty for p in prompts]
            tokens = torch.tensor([r[0] for r in rows], dtype=torch.long)
            weights = torch.tensor([r[1] for r in rows], dtype=torch.float32)
            hidden, chunk_pooled = _run(encoder, tokens, [r[2] for r in rows])
            outputs.append(apply_emphasis(hidden, weights, emphasis))
            if i == 0 and chunk_pooled is not None:
                pooled = chunk_pooled
        per_encoder.append(torch.cat(outputs, dim=1))
    return torch.cat(per_encoder, dim=2), pooled


def _chunk_row(chunk: PromptChunk) -> tuple[tuple[int, ...], tuple[float, ...], Fixes]:
    """Return a chunk's tokens, multipliers and embeddings."""
    return chunk.tokens, chunk.multipliers, chunk.fixes


def encode_chunks(
    parts: Any,
    model_type: ModelType,
    cond: Sequence[TokenizedPrompt],
    uncond: Sequence[TokenizedPrompt],
    n_chunks: int,
    *,
    clip_skip: int,
    emphasis: str,
    zero_uncond: bool,
) -> PromptEmbeddings:
    """Encode tokenized prompts and negative prompts, each padded to ``n_chunks`` with empty chunks.

    Args:
        parts: Holder of ``tokenizer``/``text_encoder`` (and ``tokenizer_2``/``text_encoder_2`` for SDXL).
        model_type: Selects the layer recipe.
        cond: Tokenized prompts.
        uncond: Tokenized negative prompts (same count).
        n_chunks: Chunks per prompt after padding (at least the longest prompt's count).
        clip_skip: SD1's clip skip.
        emphasis: One of ``EMPHASIS_MODES``.
        zero_uncond: Return zeros for the negative side (SDXL with an empty negative prompt).

    Returns:
        The embeddings, on the text encoder's device and in its dtype.

    Raises:
        InvalidRequestError: Clip skip out of range.
    """
    encoders = _encoders(parts, model_type, clip_skip)
    bos = (parts.tokenizer if getattr(parts, "tokenizer", None) is not None else parts.tokenizer_2).bos_token_id
    with torch.no_grad():
        embeds, pooled = _encode_side(encoders, cond, n_chunks, emphasis, bos)
        if zero_uncond:
            neg_embeds = torch.zeros_like(embeds)
            neg_pooled = torch.zeros_like(pooled) if pooled is not None else None
        else:
            neg_embeds, neg_pooled = _encode_side(encoders, uncond, n_chunks, emphasis, bos)
    logger.debug("Encoded %d prompt(s) into %d chunk(s): %s", len(cond), n_chunks, tuple(embeds.shape))
    return PromptEmbeddings(embeds, neg_embeds, pooled, neg_pooled)


def encode_one_side(
    parts: Any,
    model_type: ModelType,
    prompts: Sequence[TokenizedPrompt],
    n_chunks: int,
    *,
    clip_skip: int,
    emphasis: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode tokenized prompts (one side only), padded to ``n_chunks``: (embeddings, SDXL pooled or None)."""
    encoders = _encoders(parts, model_type, clip_skip)
    bos = (parts.tokenizer if getattr(parts, "tokenizer", None) is not None else parts.tokenizer_2).bos_token_id
    with torch.no_grad():
        return _encode_side(encoders, prompts, n_chunks, emphasis, bos)
