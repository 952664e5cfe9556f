"""Read a safetensors file's tensors straight into GPU memory, the disk reads and host → device copies overlapping.

Reading with safetensors to a CUDA device copies each tensor from the page cache into ordinary (pageable) memory and
then, synchronously, to the GPU: the copies add to the read (SD1.5: 0.48 s for a 0.35 s read on the H200). Here the
wanted tensors are covered by reads of a few megabytes (neighbouring small tensors share one), split among a few
threads; each thread reads (``readinto``) into one of its two pinned host buffers while the other one's bytes go to
their tensors' device memory asynchronously on the thread's own stream. Several threads matter: one thread copying
from the page cache reached ~6 GB/s on the H200's host (SDXL's 6.9 GB: 1.1 s of ``readinto``). Each tensor is then
cast on the GPU when its target dtype differs from the file's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SLOT_BYTES = 8 * 2**20
DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One tensor's place in the file: absolute byte range, dtype and shape."""

    key: str
    start: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class UnsupportedFileError(ValueError):
    """The header names a dtype this reader does not know (the caller reads the file the ordinary way)."""


def entries(path: Path) -> list[Entry]:
    """Every tensor of the file, in file order.

    Raises:
        UnsupportedFileError: An unknown dtype.
        ValueError / OSError: Not a readable safetensors file.
    """
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    base = 8 + length
    out = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise UnsupportedFileError(f"unsupported dtype {info['dtype']} for {key}")
        begin, end = info["data_offsets"]
        out.append(Entry(key, base + begin, base + end, DTYPES[info["dtype"]], tuple(info["shape"])))
    return sorted(out, key=lambda e: e.start)


@dataclass(frozen=True)
class Piece:
    """Part of one chunk that belongs to one tensor: tensor index, offset in the tensor, offset in the chunk, size."""

    tensor: int
    dst: int
    src: int
    size: int


@dataclass(frozen=True)
class Chunk:
    """One read: ``size`` bytes from file offset ``start``, scattered into the tensors by ``pieces``."""

    start: int
    size: int
    pieces: tuple[Piece, ...]


def plan_chunks(wanted: list[Entry], chunk_bytes: int, max_gap: int = 2**16) -> list[Chunk]:
    """Cover the wanted tensors with reads of at most ``chunk_bytes``, in file order.

    Neighbouring small tensors share a read (a gap of unwanted bytes up to ``max_gap`` is read through); a large
    tensor takes several reads.
    """
    chunks: list[Chunk] = []
    start, end, pieces = -1, -1, []
    for index, entry in enumerate(wanted):
        done = 0
        while done < entry.end - entry.start:
            at = entry.start + done
            if pieces and (at - end > max_gap or at + 1 - start > chunk_bytes):
                chunks.append(Chunk(start, end - start, tuple(pieces)))
                pieces = []
            if not pieces:
                start = at
            size = min(entry.end - at, start + chunk_bytes - at)
            pieces.append(Piece(index, done, at - start, size))
            end = at + size
            done += size
    if pieces:
        chunks.append(Chunk(start, end - start, tuple(pieces)))
    return chunks


def split_even(chunks: list[Chunk], parts: int) -> list[list[Chunk]]:
    """Split ``chunks`` into at most ``parts`` runs of consecutive chunks with about equal byte counts."""
    total = sum(c.size for c in chunks)
    runs: list[list[Chunk]] = [[]]
    seen = 0
    for chunk in chunks:
        if runs[-1] and seen >= total * len(runs) / parts and len(runs) < parts:
            runs.append([])
        runs[-1].append(chunk)
        seen += chunk.size
    return [run for run in runs if run]


def read_tensors(
    path: Path,
    device: torch.device | str,
    wanted: Callable[[str], bool],
    target_dtype: Callable[[str, torch.dtype], torch.dtype],
    *,
    slot_bytes: int = SLOT_BYTES,
    workers: int | None = None,
) -> dict[str, torch.Tensor]:
    """Read the tensors whose key ``wanted`` accepts onto ``device``, each cast to ``target_dtype(key, file_dtype)``.

    The reads (``plan_chunks``) are shared among ``workers`` threads (default: up to 4, one per CPU core), each with
    its own file handle, two host buffers and, on CUDA, its own stream: the buffers are pinned and a buffer's copies
    to the GPU run while the thread reads into its other buffer. Elsewhere the same code copies synchronously.

    Raises:
        UnsupportedFileError: The header names an unknown dtype.
        ValueError / OSError: The file is truncated or unreadable.
    """
    device = torch.device(device)
    chosen = [e for e in entries(path) if wanted(e.key)]
    tensors = [torch.empty(e.shape, dtype=e.dtype, device=device) for e in chosen]
    flats = [t.view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8) for t in tensors]
    for entry, flat in zip(chosen, flats, strict=True):
        if flat.numel() != entry.end - entry.start:
            raise ValueError(f"{entry.key}: {entry.end - entry.start} bytes in the file for shape {entry.shape}")
    count = workers or max(1, min(4, os.cpu_count() or 1))
    runs = split_even(plan_chunks(chosen, slot_bytes), count)

    # The workers write on their own streams: memory the caller's stream freed may still be in use by its queued work.
    after = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def work(run: list[Chunk]) -> None:
        _read_run(path, run, flats, chosen, device, slot_bytes, after)

    if len(runs) == 1:
        work(runs[0])
    elif runs:
        with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="safetensors-read") as pool:
            for future in [pool.submit(work, run) for run in runs]:
                future.result()
    out: dict[str, torch.Tensor] = {}
    for entry, raw in zip(chosen, tensors, strict=True):
        target = target_dtype(entry.key, entry.dtype)
        out[entry.key] = raw.to(target) if raw.is_floating_point() and target != raw.dtype else raw
    return out


def _read_run(
    path: Path,
    run: list[Chunk],
    flats: list[torch.Tensor],
    chosen: list[Entry],
    device: torch.device,
    slot: int,
    after: torch.cuda.Stream | None,
) -> None:
    """One worker: read ``run``'s chunks into two alternating buffers and copy their pieces to the tensors.

    On CUDA its copies run on a stream of its own that first waits for ``after`` (the stream the tensors were made on).
    """
    cuda = device.type == "cuda"
    buffers = [torch.empty(slot, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
    views = [memoryview(b.numpy()) for b in buffers]
    stream = torch.cuda.Stream(device) if cuda else None
    if stream is not None and after is not None:
        stream.wait_stream(after)
    events: list[torch.cuda.Event | None] = [None, None]
    with path.open("rb", buffering=0) as file, torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
        for turn, chunk in enumerate(run):
            i = turn % 2
            if events[i] is not None:
                events[i].synchronize()  # this buffer's copies have finished: it may be refilled
            file.seek(chunk.start)
            if file.readinto(views[i][: chunk.size]) != chunk.size:
                raise ValueError(f"{path.name}: truncated inside {chosen[chunk.pieces[-1].tensor].key}")
            for p in chunk.pieces:
                flats[p.tensor][p.dst : p.dst + p.size].copy_(buffers[i][p.src : p.src + p.size], non_blocking=cuda)
            if cuda:
                events[i] = torch.cuda.Event()
                events[i].record(stream)
    if stream is not None:
        stream.synchronize()
