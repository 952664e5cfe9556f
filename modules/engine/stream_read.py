"""Read a safetensors file's tensors straight into GPU memory, overlapping the disk read and host → device copies.

Reading with safetensors to a CUDA device copies each tensor from the page cache into ordinary (pageable) memory and
then, synchronously, to the GPU: the copies add to the read (SD1.5: 0.48 s for a 0.35 s read on the H200). Here the
file's bytes are read (``readinto``) into a few pinned host buffers in turn and each buffer is sent to its tensor's
device memory asynchronously while the next one is read, so the GPU copies hide behind the read. Each tensor is then
cast on the GPU when its target dtype differs from the file's.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SLOT_BYTES = 16 * 2**20
SLOTS = 4
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


def read_tensors(
    path: Path,
    device: torch.device | str,
    wanted: Callable[[str], bool],
    target_dtype: Callable[[str, torch.dtype], torch.dtype],
    *,
    slot_bytes: int = SLOT_BYTES,
) -> dict[str, torch.Tensor]:
    """Read the tensors whose key ``wanted`` accepts onto ``device``, each cast to ``target_dtype(key, file_dtype)``.

    On CUDA the host buffers are pinned and the copies asynchronous (see the module docstring); on other devices the
    same code runs with plain buffers and synchronous copies.

    Raises:
        UnsupportedFileError: The header names an unknown dtype.
        ValueError / OSError: The file is truncated or unreadable.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    slots = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=cuda) for _ in range(SLOTS)]
    views = [slot.numpy() for slot in slots]
    events: list[torch.cuda.Event | None] = [None] * SLOTS
    turn = 0
    out: dict[str, torch.Tensor] = {}
    with path.open("rb", buffering=0) as file:
        for entry in (e for e in entries(path) if wanted(e.key)):
            raw = torch.empty(entry.shape, dtype=entry.dtype, device=device)
            flat = raw.view(-1).view(torch.uint8) if raw.numel() else raw.view(torch.uint8)
            if flat.numel() != entry.end - entry.start:
                raise ValueError(f"{entry.key}: {entry.end - entry.start} bytes in the file for shape {entry.shape}")
            file.seek(entry.start)
            done = 0
            while done < flat.numel():
                n = min(slot_bytes, flat.numel() - done)
                if events[turn] is not None:
                    events[turn].synchronize()  # the copy out of this buffer has finished: it may be refilled
                if file.readinto(memoryview(views[turn])[:n]) != n:
                    raise ValueError(f"{path.name}: truncated inside {entry.key}")
                flat[done : done + n].copy_(slots[turn][:n], non_blocking=cuda)
                if cuda:
                    events[turn] = torch.cuda.Event()
                    events[turn].record()
                done += n
                turn = (turn + 1) % SLOTS
            target = target_dtype(entry.key, entry.dtype)
            out[entry.key] = raw.to(target) if raw.is_floating_point() and target != raw.dtype else raw
    if cuda:
        torch.cuda.current_stream(device).synchronize()
    return out
