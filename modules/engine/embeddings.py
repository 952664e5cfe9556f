"""Textual-inversion embeddings (A1111's ``embeddings/`` folder): a file's name used as a word in a prompt.

A1111's rules: the name (the file name without extension) is found in a prompt by its CLIP tokens, anywhere a word
can be, in any case; its N vectors take N token positions of the chunk, with the emphasis of the text around it; an
embedding that does not fit in what is left of a chunk starts the next one. Formats: ``.safetensors`` with
``emb_params`` (SD1/SD2) or ``clip_l`` + ``clip_g`` (SDXL), and ``.pt``/``.bin`` pickles (A1111's
``string_to_param``, or diffusers' ``{token: vector}``), read with the weights-only unpickler. An embedding whose
width fits none of the model's text encoders is listed as skipped (``/sdapi/v1/embeddings``) and stays plain text.
The infotext gets ``TI hashes: "name: hash, …"`` (the first 12 hex digits of the file's SHA-256, as A1111).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.engine.hashes import FileDigests
from modules.engine.safe_load import load_pickle_checkpoint
from modules.errors import WebuiError

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")
HASH_LENGTH = 12


@dataclass(frozen=True)
class Embedding:
    """One embedding: its name, file, vectors ``(N, width)`` per text-encoder width, and A1111's training info."""

    name: str
    path: Path
    vectors: Mapping[int, torch.Tensor]  # width (768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG) → (N, width)
    info: Mapping[str, Any] = field(default_factory=dict)  # step, sd_checkpoint, sd_checkpoint_name

    @property
    def count(self) -> int:
        """How many token positions it takes."""
        return next(iter(self.vectors.values())).shape[0]


def _as_matrix(tensor: Any, path: Path) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (1, 2) or not tensor.is_floating_point():
        raise WebuiError(f"{path.name}: not an embedding (no vector matrix in it)")
    return tensor.detach().float().reshape(-1, tensor.shape[-1])


def read_embedding(path: Path) -> Embedding:
    """Read one embedding file (see the module's docstring).

    Raises:
        WebuiError: Not an embedding in a known format (the message names the file).
    """
    info: dict[str, Any] = {}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: Mapping[str, Any] = load_file(str(path))
    else:
        data = load_pickle_checkpoint(path)
        if not isinstance(data, Mapping):
            raise WebuiError(f"{path.name}: not an embedding")
        info = {k: data[k] for k in ("step", "sd_checkpoint", "sd_checkpoint_name") if k in data}
    if "clip_l" in data and "clip_g" in data:  # SDXL: one matrix per encoder
        matrices = [_as_matrix(data["clip_l"], path), _as_matrix(data["clip_g"], path)]
    elif "emb_params" in data:
        matrices = [_as_matrix(data["emb_params"], path)]
    elif isinstance(data.get("string_to_param"), Mapping) and data["string_to_param"]:
        matrices = [_as_matrix(next(iter(data["string_to_param"].values())), path)]
    elif len(data) == 1:  # diffusers' learned_embeds.bin: {token: vector}
        matrices = [_as_matrix(next(iter(data.values())), path)]
    else:
        raise WebuiError(f"{path.name}: not an embedding (keys: {', '.join(sorted(map(str, data))[:5])})")
    if len({m.shape[0] for m in matrices}) != 1:
        raise WebuiError(f"{path.name}: its encoders' vector counts differ")
    return Embedding(path.stem, path, {m.shape[1]: m for m in matrices}, info)


@dataclass(frozen=True)
class EmbeddingIndex:
    """The embeddings usable with one model, found in token ids (what ``prompts.tokenize_prompt`` consults).

    ``by_first_token`` maps the first token id of a name to ``(name's ids, embedding)`` pairs, longest first.
    """

    embeddings: Mapping[str, Embedding]
    by_first_token: Mapping[int, tuple[tuple[tuple[int, ...], Embedding], ...]]

    @classmethod
    def build(cls, embeddings: Iterable[Embedding], tokenizer: Any) -> EmbeddingIndex:
        """Index ``embeddings`` by the ids ``tokenizer`` gives their names."""
        table: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        kept = {}
        for embedding in embeddings:
            ids = tuple(tokenizer(embedding.name, add_special_tokens=False, verbose=False)["input_ids"])
            if ids:
                table.setdefault(ids[0], []).append((ids, embedding))
                kept[embedding.name] = embedding
        ordered = {first: tuple(sorted(found, key=lambda e: -len(e[0]))) for first, found in table.items()}
        return cls(kept, ordered)

    def match(self, tokens: list[int], start: int) -> tuple[int, Embedding] | None:
        """The embedding whose name's ids begin at ``tokens[start]``, with that many ids, or None."""
        for ids, embedding in self.by_first_token.get(tokens[start], ()):
            if tuple(tokens[start : start + len(ids)]) == ids:
                return len(ids), embedding
        return None


def model_widths(text_encoders: Iterable[Any]) -> tuple[int, ...]:
    """The token-embedding widths of a model's text encoders, in order (one, or two for SDXL)."""
    return tuple(int(te.token_embedding.weight.shape[1]) for te in text_encoders if te is not None)


class EmbeddingLibrary:
    """The embedding files of one folder (sub-folders too), read once per file state; hashes cached the same way."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._read: dict[tuple[str, int, int], Embedding | str] = {}  # file state → embedding, or why not
        self._hashes = FileDigests()

    @staticmethod
    def _stamp(path: Path) -> tuple[str, int, int]:
        stat = path.stat()
        return str(path), stat.st_size, stat.st_mtime_ns

    def scan(self) -> tuple[dict[str, Embedding], dict[str, str]]:
        """Every embedding by name (the first file of a name wins), and the files that are not embeddings: why."""
        paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        found: dict[str, Embedding] = {}
        failed: dict[str, str] = {}
        for path in paths:
            stamp = self._stamp(path)
            with self._lock:
                entry = self._read.get(stamp)
            if entry is None:
                try:
                    entry = read_embedding(path)
                except Exception as exc:  # a file that cannot be read is skipped, whatever the reader raised
                    entry = str(exc)
                    logger.warning("Embedding %s skipped: %s", path, exc)
                with self._lock:
                    self._read[stamp] = entry
            if isinstance(entry, Embedding):
                found.setdefault(entry.name, entry)
            else:
                failed[path.stem] = entry
        return found, failed

    def for_model(self, widths: tuple[int, ...]) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """(usable, skipped): usable embeddings have a matrix for exactly the widths of the model's encoders.

        (An SDXL embedding is not used by an SD1 model, though both have a CLIP-L: A1111 skips it too.)
        """
        found, _ = self.scan()
        usable = {n: e for n, e in found.items() if widths and set(e.vectors) == set(widths)}
        return usable, {n: e for n, e in found.items() if n not in usable}

    def listing(self, widths: tuple[int, ...]) -> dict[str, dict[str, dict[str, object]]]:
        """A1111's ``/sdapi/v1/embeddings``: ``loaded`` (usable with encoders of ``widths``) and ``skipped``."""
        usable, skipped = self.for_model(widths)

        def item(embedding: Embedding) -> dict[str, object]:
            info = embedding.info
            names = ("step", "sd_checkpoint", "sd_checkpoint_name")
            return {**{k: info.get(k) for k in names}, "shape": max(embedding.vectors), "vectors": embedding.count}

        return {"loaded": {n: item(e) for n, e in usable.items()}, "skipped": {n: item(e) for n, e in skipped.items()}}

    def short_hash(self, embedding: Embedding) -> str:
        """A1111's TI hash: the first 12 hex digits of the file's SHA-256."""
        return self._hashes.get(embedding.path)[:HASH_LENGTH]


def used(index: EmbeddingIndex, tokenizer: Any, texts: Iterable[str]) -> list[Embedding]:
    """The embeddings that ``texts`` name, in order of first use."""
    found: dict[str, Embedding] = {}
    for text in texts:
        if not text:
            continue
        tokens = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for position in range(len(tokens)):
            match = index.match(tokens, position)
            if match is not None:
                found.setdefault(match[1].name, match[1])
    return list(found.values())


def activate(components: Any, library: EmbeddingLibrary | None, texts: Iterable[str]) -> dict[str, str]:
    """Give ``components``' prompt encoding the library's embeddings that fit it; return the infotext's TI hashes.

    ``components`` is a loaded model's ``ModelComponents``; ``texts`` the job's prompts (for ``TI hashes``).
    """
    tokenizer = components.tokenizer if components.tokenizer is not None else components.tokenizer_2
    if library is None or tokenizer is None:
        components.embeddings = None
        return {}
    usable, _ = library.for_model(model_widths((components.text_encoder, components.text_encoder_2)))
    index = EmbeddingIndex.build(usable.values(), tokenizer) if usable else None
    components.embeddings = index
    named = used(index, tokenizer, texts) if index is not None else []
    hashes = ", ".join(f"{e.name}: {library.short_hash(e)}" for e in named)
    return {"TI hashes": hashes} if hashes else {}
