"""A1111 prompt syntax (emphasis, [from:to:when], [a|b], BREAK, AND) → weighted chunks → prompt embeddings.

Implemented now: emphasis ``(x)``, ``[x]``, ``(x:w)``, escapes, BREAK, 75-token chunking with comma back-off, and
the conditioning builder (``encode_prompt_pair``). Prompt editing ``[a:b:when]``, alternation ``[a|b]`` and ``AND``
are not parsed yet: they belong *before* ``parse_prompt_attention`` (a schedule parser turns one prompt into the
texts in force at each step, and each text goes through the functions below unchanged), so they can be added
without touching this code.

Conditioning rules (a1111-compat.md §6): chunks are encoded one at a time and concatenated on the sequence axis;
token weights are applied after the text encoder; cond and uncond are padded to the same chunk count with
encodings of empty chunks.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from modules.engine.prompt_encoding import EMPHASIS_MODES, PromptEmbeddings, encode_chunks, encode_one_side
from modules.engine.types import ModelType
from modules.errors import InvalidRequestError

if TYPE_CHECKING:
    from modules.engine.embeddings import Embedding, EmbeddingIndex

logger = logging.getLogger(__name__)

CHUNK_LENGTH = 75
EMBEDDING_PLACEHOLDER = 0  # the id at an embedding's positions (A1111's); the encoder puts its vectors there
BREAK_MARKER = ("BREAK", -1.0)
"""The ``(text, weight)`` item ``parse_prompt_attention`` emits for BREAK (weight −1, as A1111)."""

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1
_RE_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.MULTILINE)

__all__ = [
    "BREAK_MARKER",
    "CHUNK_LENGTH",
    "EMPHASIS_MODES",
    "PromptChunk",
    "PromptEmbeddings",
    "TokenizedPrompt",
    "count_tokens",
    "encode_prompt_pair",
    "parse_prompt_attention",
    "tokenize_prompt",
]


def _append_text(res: list[list[Any]], text: str) -> None:
    """Append plain text at weight 1, turning each ``BREAK`` word into a BREAK marker."""
    for i, part in enumerate(_RE_BREAK.split(text)):
        if i > 0:
            res.append(list(BREAK_MARKER))
        res.append([part, 1.0])


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    r"""Split a prompt into ``(text, weight)`` runs following A1111's emphasis syntax.

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by ``w``; nesting multiplies. Unclosed brackets apply to
    the end of the prompt; stray closing brackets and ``:w)`` without an open ``(`` are literal. ``\(``, ``\)``,
    ``\[``, ``\]`` and ``\\`` are literal characters. ``BREAK`` yields ``BREAK_MARKER``. Adjacent runs with equal
    weight are merged.

    >>> parse_prompt_attention('normal text')
    [('normal text', 1.0)]
    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    >>> parse_prompt_attention('(unbalanced')
    [('unbalanced', 1.1)]
    >>> parse_prompt_attention('\\(literal\\]')
    [('(literal]', 1.0)]
    >>> parse_prompt_attention('(unnecessary)(parens)')
    [('unnecessaryparens', 1.1)]
    >>> [(t, round(w, 3)) for t, w in parse_prompt_attention('((red:1.5) car) on [a [wet]] road')]
    [('red', 1.65), (' car', 1.1), (' on ', 1.0), ('a ', 0.909), ('wet', 0.826), (' road', 1.0)]
    >>> parse_prompt_attention('((open) end')
    [('open', 1.2100000000000002), (' end', 1.1)]
    >>> parse_prompt_attention('[[x]] y) z:2)')
    [('x', 0.8264462809917354), (' y) z:2)', 1.0)]
    >>> parse_prompt_attention('a BREAK b')
    [('a', 1.0), ('BREAK', -1.0), ('b', 1.0)]
    >>> parse_prompt_attention('')
    [('', 1.0)]
    """
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _RE_ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), _SQUARE_MULTIPLIER)
        else:
            _append_text(res, token)
    for start in round_open:
        multiply(start, _ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, _SQUARE_MULTIPLIER)
    return _merge_runs(res)


def _merge_runs(res: list[list[Any]]) -> list[tuple[str, float]]:
    """Merge adjacent runs of equal weight (never BREAK markers); an empty result becomes ``[("", 1.0)]``."""
    merged: list[list[Any]] = []
    for text, weight in res:
        is_break = (text, weight) == BREAK_MARKER
        if merged and merged[-1][1] == weight and not is_break and tuple(merged[-1]) != BREAK_MARKER:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(str(t), float(w)) for t, w in merged] or [("", 1.0)]


@dataclass(frozen=True, slots=True)
class PromptChunk:
    """One 77-token window: BOS + 75 tokens (padded with EOS) + EOS, and a weight per position.

    ``fixes``: textual-inversion embeddings as (offset after BOS, embedding); their positions hold placeholder ids
    whose vectors the encoder replaces (engine/embeddings.py).
    """

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[tuple[int, Embedding], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    """A prompt cut into chunks; ``token_count`` is what the UI's ``N/75`` counter shows."""

    chunks: tuple[PromptChunk, ...]
    token_count: int


class _ChunkBuilder:
    """Accumulate weighted tokens into 75-token chunks (comma back-off, BREAK)."""

    def __init__(self, bos: int, eos: int, comma: int | None, backtrack: int) -> None:
        self.bos, self.eos, self.comma, self.backtrack = bos, eos, comma, backtrack
        self.chunks: list[PromptChunk] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.fixes: list[tuple[int, Embedding]] = []
        self.last_comma = -1
        self.token_count = 0

    def close(self, *, is_last: bool = False) -> None:
        """Pad the current chunk to 75 with EOS, wrap it in BOS/EOS and start a new one."""
        self.token_count += len(self.tokens) if is_last else CHUNK_LENGTH
        pad = CHUNK_LENGTH - len(self.tokens)
        tokens = [self.bos, *self.tokens, *([self.eos] * pad), self.eos]
        weights = [1.0, *self.weights, *([1.0] * pad), 1.0]
        self.chunks.append(PromptChunk(tuple(tokens), tuple(weights), tuple(self.fixes)))
        self.tokens, self.weights, self.fixes, self.last_comma = [], [], [], -1

    def _make_room(self, token: int | None) -> None:
        """Before a token (None: an embedding): note a comma, and close a full chunk.

        The words after a recent comma move along to the next chunk, embeddings among them with their vectors.
        """
        if token is not None and token == self.comma:
            self.last_comma = len(self.tokens)
        elif (
            self.backtrack
            and len(self.tokens) == CHUNK_LENGTH
            and self.last_comma != -1
            and len(self.tokens) - self.last_comma <= self.backtrack
        ):
            cut = self.last_comma + 1
            moved_tokens, moved_weights = self.tokens[cut:], self.weights[cut:]
            moved_fixes = [(offset - cut, e) for offset, e in self.fixes if offset >= cut]
            self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
            self.fixes = [(offset, e) for offset, e in self.fixes if offset < cut]
            self.close()
            self.tokens, self.weights, self.fixes = moved_tokens, moved_weights, moved_fixes
        if len(self.tokens) == CHUNK_LENGTH:
            self.close()

    def add(self, token: int, weight: float) -> None:
        """Append one token."""
        self._make_room(token)
        self.tokens.append(token)
        self.weights.append(weight)

    def add_embedding(self, embedding: Embedding, weight: float) -> None:
        """Append an embedding's vectors; one that does not fit in the rest of the chunk starts the next (A1111)."""
        self._make_room(None)
        if len(self.tokens) + embedding.count > CHUNK_LENGTH:
            self.close()
        self.fixes.append((len(self.tokens), embedding))
        self.tokens += [EMBEDDING_PLACEHOLDER] * embedding.count
        self.weights += [weight] * embedding.count


def tokenize_prompt(
    tokenizer: Any,
    text: str,
    *,
    emphasis: str = "Original",
    comma_padding_backtrack: int = 20,
    embeddings: EmbeddingIndex | None = None,
) -> TokenizedPrompt:
    """Cut a prompt into weighted 77-token chunks as A1111 does (``tokenize_line`` in sd_hijack_clip).

    Args:
        tokenizer: The CLIP tokenizer (engine/tokenizers.py).
        text: The prompt (extra-network tags and comments already removed).
        emphasis: ``"None"`` keeps brackets (and BREAK) as literal text; other modes parse them.
        comma_padding_backtrack: When a chunk fills up, the tokens after a comma within this many last tokens move
            to the next chunk; 0 disables.
        embeddings: Textual-inversion embeddings whose names become their vectors.

    Returns:
        At least one chunk; ``token_count`` counts earlier chunks as 75 each plus the tokens of the last one.
    """
    parsed = parse_prompt_attention(text) if emphasis != "None" else [(text, 1.0)]
    texts = [t for t, w in parsed if (t, w) != BREAK_MARKER]
    ids = iter(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else [])
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    builder = _ChunkBuilder(tokenizer.bos_token_id, tokenizer.eos_token_id, comma, comma_padding_backtrack)
    for run in parsed:
        if run == BREAK_MARKER:
            builder.close()
            continue
        tokens = next(ids)
        position = 0
        while position < len(tokens):
            found = embeddings.match(tokens, position) if embeddings is not None else None
            if found is None:
                builder.add(tokens[position], run[1])
                position += 1
            else:
                builder.add_embedding(found[1], run[1])
                position += found[0]
    if builder.tokens or not builder.chunks:
        builder.close(is_last=True)
    return TokenizedPrompt(tuple(builder.chunks), builder.token_count)


def count_tokens(
    tokenizer: Any, text: str, *, comma_padding_backtrack: int = 20, embeddings: EmbeddingIndex | None = None
) -> tuple[int, int]:
    """Return ``(tokens, next multiple of 75)`` for the UI's ``N/75`` counter (``0/75`` for an empty prompt)."""
    options = {"comma_padding_backtrack": comma_padding_backtrack, "embeddings": embeddings}
    count = tokenize_prompt(tokenizer, text, **options).token_count
    return count, math.ceil(max(count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def encode_prompt_pair(
    parts: Any,
    model_type: ModelType,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    clip_skip: int = 1,
    emphasis: str = "Original",
    comma_padding_backtrack: int = 20,
) -> PromptEmbeddings:
    """Encode prompts and negative prompts into the SD1/SD2/SDXL UNet's conditioning.

    Args:
        parts: Anything with the pipeline's ``tokenizer``/``text_encoder`` (and ``_2`` for SDXL) attributes; an SDXL
            ``config.force_zeros_for_empty_prompt`` (default True) zeroes an all-empty negative batch.
        model_type: Which conditioning recipe to follow.
        prompts: One prompt per image of the batch.
        negative_prompts: One negative prompt per image, same length as ``prompts``.
        clip_skip: SD1 only: 1 = last layer, N = hidden state −N followed by the final layer norm.
        emphasis: ``"Original"``, ``"No norm"``, ``"Ignore"`` or ``"None"``.
        comma_padding_backtrack: See ``tokenize_prompt``.

    Returns:
        Embeddings of shape ``(B, 77·k, C)`` for both sides (same ``k``), plus pooled embeddings for SDXL.

    Raises:
        InvalidRequestError: Mismatched batch lengths, an unknown emphasis mode or an out-of-range clip skip.
    """
    # 1. Validate the arguments.
    if len(prompts) != len(negative_prompts) or not prompts:
        raise InvalidRequestError(
            f"prompts ({len(prompts)}) and negative_prompts ({len(negative_prompts)}) must be non-empty and equal"
        )
    if emphasis not in EMPHASIS_MODES:
        raise InvalidRequestError(f"Unknown emphasis {emphasis!r}; use one of: {', '.join(EMPHASIS_MODES)}")
    tokenizer = parts.tokenizer if getattr(parts, "tokenizer", None) is not None else parts.tokenizer_2
    # 2. Cut every prompt into chunks, with one tokenizer (SDXL's two share the CLIP vocabulary).
    options = {
        "emphasis": emphasis,
        "comma_padding_backtrack": comma_padding_backtrack,
        "embeddings": getattr(parts, "embeddings", None),
    }
    cond = [tokenize_prompt(tokenizer, p, **options) for p in prompts]
    uncond = [tokenize_prompt(tokenizer, p, **options) for p in negative_prompts]
    # 3. Encode both sides with the same chunk count; SDXL zeroes an all-empty negative side (as A1111 and sgm).
    n_chunks = max(len(t.chunks) for t in (*cond, *uncond))
    zero_uncond = (
        model_type.is_sdxl
        and all(p == "" for p in negative_prompts)
        and bool(getattr(getattr(parts, "config", None), "force_zeros_for_empty_prompt", True))
    )
    return encode_chunks(
        parts, model_type, cond, uncond, n_chunks, clip_skip=clip_skip, emphasis=emphasis, zero_uncond=zero_uncond
    )


def encode_group(
    parts: Any,
    model_type: ModelType,
    texts: Sequence[str],
    *,
    negative: bool = False,
    clip_skip: int = 1,
    emphasis: str = "Original",
    comma_padding_backtrack: int = 20,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Encode texts as one batch, as A1111 encodes one prompt's schedule: (context ``(77·k, C)``, pooled) each.

    All texts get the batch's largest chunk count, and "Original" emphasis restores each chunk's mean over the
    whole batch. An all-empty negative batch of an SDXL model gives zeros, as in ``encode_prompt_pair``.
    """
    tokenizer = parts.tokenizer if getattr(parts, "tokenizer", None) is not None else parts.tokenizer_2
    options = {
        "emphasis": emphasis,
        "comma_padding_backtrack": comma_padding_backtrack,
        "embeddings": getattr(parts, "embeddings", None),
    }
    tokens = [tokenize_prompt(tokenizer, t, **options) for t in texts]
    n_chunks = max(len(t.chunks) for t in tokens)
    context, pooled = encode_one_side(parts, model_type, tokens, n_chunks, clip_skip=clip_skip, emphasis=emphasis)
    zero = negative and model_type.is_sdxl and all(t == "" for t in texts)
    if zero and bool(getattr(getattr(parts, "config", None), "force_zeros_for_empty_prompt", True)):
        context = torch.zeros_like(context)
        pooled = torch.zeros_like(pooled) if pooled is not None else None
    return [(context[k], pooled[k] if pooled is not None else None) for k in range(len(texts))]
