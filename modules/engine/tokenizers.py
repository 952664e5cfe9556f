"""The CLIP BPE tokenizer, built offline from the files shipped in configs/tokenizer (49,408 tokens).

Built directly on the ``tokenizers`` library (Rust, imported in milliseconds) with the pipeline of CLIP's tokenizer:
NFC, whitespace runs → one space, lower case; CLIP's split pattern; byte-level BPE with ``</w>`` word ends. This is
what transformers' ``CLIPTokenizer`` builds too (tests/engine/test_tokenizers.py compares them on many prompts), without
importing transformers (about a second of every start).

One deliberate difference: OpenCLIP's pad token ``!`` (SD2, SDXL's second encoder) is only a pad *id* here (0, filled
in after the end token by the prompt encoder), never a special token of the text. transformers registers it as one,
so a ``!`` in a prompt became id 0 and ``!!!`` three of them; A1111 (open_clip's tokenizer) reads ``!`` and ``!!!``
as the ordinary tokens 256 and 995, as this tokenizer does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CLIP_PAD = EOS
OPENCLIP_PAD = "!"
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text (a list) or of several (a list of lists), as ``tokenizer(...)`` returns them."""

    input_ids: list[Any]

    def __getitem__(self, key: str) -> list[Any]:
        if key != "input_ids":
            raise KeyError(key)
        return self.input_ids


@dataclass(frozen=True)
class ClipTokenizer:
    """CLIP's BPE tokenizer (see the module docstring) with the attributes the prompt code reads.

    Attributes:
        pad_token: ``<|endoftext|>`` (CLIP-L) or ``!`` (OpenCLIP).
        backend: The ``tokenizers.Tokenizer``.
    """

    pad_token: str
    backend: Tokenizer = field(repr=False)
    model_max_length: int = MAX_LENGTH

    @property
    def bos_token_id(self) -> int:
        """``<|startoftext|>`` (49406)."""
        return self.backend.token_to_id(BOS)

    @property
    def eos_token_id(self) -> int:
        """``<|endoftext|>`` (49407)."""
        return self.backend.token_to_id(EOS)

    @property
    def pad_token_id(self) -> int:
        """The id that fills a chunk after its end token (49407 for CLIP-L, 0 for OpenCLIP)."""
        return self.backend.token_to_id(self.pad_token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The id of one vocabulary entry (e.g. ``",</w>"``), or None."""
        return self.backend.token_to_id(token)

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **_: Any) -> Encoded:
        """Token ids of ``text`` (with BOS/EOS around each when ``add_special_tokens``), no truncation."""
        if isinstance(text, str):
            return Encoded(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        encodings = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return Encoded([e.ids for e in encodings])


@functools.cache
def _backend() -> Tokenizer:
    """The tokenizer pipeline over the shipped vocabulary and merges (built once per process)."""
    vocab, merges = TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise RuntimeError(f"CLIP tokenizer files missing from {TOKENIZER_DIR} (vocab.json, merges.txt)")
    model = BPE.from_file(
        str(vocab),
        str(merges),
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=EOS,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    tok.post_processor = processors.RobertaProcessing(
        (EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)), trim_offsets=False, add_prefix_space=False
    )
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        size = tok.get_vocab_size(with_added_tokens=True)
        raise RuntimeError(f"CLIP tokenizer in {TOKENIZER_DIR} has {size} tokens, expected {VOCAB_SIZE}")
    return tok


@functools.lru_cache(maxsize=2)
def clip_tokenizer(pad_token: str = CLIP_PAD) -> ClipTokenizer:
    """The CLIP tokenizer (CLIP-L pads with ``<|endoftext|>``, OpenCLIP encoders with ``!``); shared, read-only."""
    if pad_token not in (CLIP_PAD, OPENCLIP_PAD):
        raise ValueError(f"unknown pad token {pad_token!r}; expected {CLIP_PAD!r} or {OPENCLIP_PAD!r}")
    return ClipTokenizer(pad_token, _backend())
