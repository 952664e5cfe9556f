"""Rebuild configs/tokenizer/{vocab.json,merges.txt} from the CLIP BPE file shipped in the open_clip_torch wheel.

Usage: ``pip download --no-deps open_clip_torch==3.3.0 -d DIR`` then
``python tests/support/make_clip_tokenizer.py DIR/open_clip_torch-3.3.0-py3-none-any.whl configs/tokenizer``.
The output is byte-identical to the shipped files (tests/engine/test_tokenizer_files.py checks their sha256).
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 48894


def byte_symbols() -> list[str]:
    """Return GPT-2's 256 byte-to-unicode symbols in their canonical order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build(bpe_gz: bytes, out_dir: Path) -> None:
    """Write vocab.json and merges.txt for the 49,408-token CLIP vocabulary into ``out_dir``."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408, len(tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(tokens)}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")


if __name__ == "__main__":
    with zipfile.ZipFile(sys.argv[1]) as wheel:
        data = wheel.read(BPE_MEMBER)
    build(data, Path(sys.argv[2]))
