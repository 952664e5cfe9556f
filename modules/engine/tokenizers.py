"""The CLIP BPE tokenizer, built offline from the files shipped in configs/tokenizer (49,408 tokens)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
CLIP_PAD = "<|endoftext|>"
OPENCLIP_PAD = "!"


@functools.lru_cache(maxsize=2)
def clip_tokenizer(pad_token: str = CLIP_PAD) -> CLIPTokenizer:
    """Return the CLIP tokenizer (CLIP-L pads with ``<|endoftext|>``, OpenCLIP encoders with ``!``).

    The result is cached per pad token and must be treated as read-only.
    """
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line]
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token=pad_token,
    )
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP tokenizer in {TOKENIZER_DIR} has {len(tok)} tokens, expected {VOCAB_SIZE}")
    return tok
