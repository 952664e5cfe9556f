"""File hashes for checkpoints: SHA-256 with a persistent on-disk cache, and A1111's legacy 8-hex hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from modules.engine.files import write_text_atomic

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
"""Bytes read per step while hashing (1 MiB)."""

LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000

CACHE_FORMAT_VERSION = 1

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path, on_block: Callable[[int], None] | None = None) -> str:
    """Hash a whole file with SHA-256, reading it in 1 MiB blocks.

    Args:
        path: The file to hash.
        on_block: Called with the size of each block read (for progress reports).

    Returns:
        The lower-case hex digest.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while block := file.read(BLOCK_SIZE):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


def legacy_hash(path: Path) -> str:
    """Return A1111's old model hash: the SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits.

    It identifies checkpoints in old infotexts (``Model hash: 8 hex``); files shorter than 1 MiB hash the
    empty string, as upstream does.

    Raises:
        OSError: The file cannot be read.
    """
    with Path(path).open("rb") as file:
        file.seek(LEGACY_HASH_OFFSET)
        return hashlib.sha256(file.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]


def absolute_path(path: Path) -> Path:
    """Return ``path`` made absolute and normalised (``..`` collapsed) without resolving symlinks.

    Symlinks are kept so that a linked checkpoint keeps its own name and cache entry.
    """
    return Path(os.path.normpath(Path(path).absolute()))


def _cache_key(path: Path) -> str:
    return str(absolute_path(path))


def _valid_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and bool(_SHA256_HEX.match(entry["sha256"]))
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("mtime_ns"), int)
    )


class HashCache:
    """SHA-256 digests of files, kept in a JSON file and trusted only while size and mtime are unchanged.

    The file maps absolute paths to ``{"sha256", "size", "mtime_ns"}``. It is read on first use and rewritten
    atomically (temporary file + ``os.replace``) after each new digest. All methods are thread-safe; hashing
    itself runs outside the lock, so one slow file does not block lookups of others.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None

    @property
    def path(self) -> Path:
        """The JSON file backing this cache."""
        return self._path

    def get(self, path: Path) -> str | None:
        """Return the cached SHA-256 of ``path``, or None when unknown, stale, or the file is missing."""
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        with self._lock:
            entry = self._load_locked().get(_cache_key(path))
        if entry is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            return None
        return str(entry["sha256"])

    def sha256(self, path: Path) -> str:
        """Return the SHA-256 of ``path``, hashing and caching it when the cache has no valid entry.

        Raises:
            OSError: The file cannot be read.
        """
        cached = self.get(path)
        if cached is not None:
            return cached
        # Stat before reading: if the file changes while it is hashed, the stored mtime is already stale.
        stat = Path(path).stat()
        logger.info("Calculating sha256 for %s", path)
        digest = sha256_file(path)
        entry: dict[str, object] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        with self._lock:
            self._load_locked()[_cache_key(path)] = entry
            self._save_locked()
        return digest

    def _load_locked(self) -> dict[str, dict[str, object]]:
        """Read the cache file once; a missing file is empty, a corrupt one is replaced with a warning."""
        if self._entries is not None:
            return self._entries
        self._entries = {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._entries
        except (OSError, ValueError) as error:
            logger.warning("Hash cache %s is unreadable (%s); starting with an empty cache.", self._path, error)
            return self._entries
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            logger.warning("Hash cache %s has an unexpected layout; starting with an empty cache.", self._path)
            return self._entries
        self._entries = {key: entry for key, entry in files.items() if _valid_entry(entry)}
        return self._entries

    def _save_locked(self) -> None:
        """Write the cache atomically; a failure is logged and the digests stay in memory."""
        payload = {"version": CACHE_FORMAT_VERSION, "files": self._entries or {}}
        try:
            write_text_atomic(self._path, json.dumps(payload, indent=1, sort_keys=True))
        except OSError as error:
            logger.warning("Cannot write hash cache %s: %s", self._path, error)


class FileDigests:
    """Digests of small user files (LoRAs, embeddings, VAEs), computed once per file state (path, size, mtime).

    Held in memory by the library that owns the files; ``digest`` defaults to the whole file's SHA-256.
    """

    def __init__(self, digest: Callable[[Path], str] = sha256_file) -> None:
        self._digest = digest
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int, int], str] = {}

    def get(self, path: Path) -> str:
        """The digest of ``path`` as it is now (computed outside the lock, so one large file blocks no other)."""
        stat = Path(path).stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._known.get(stamp)
        if known is None:
            known = self._digest(Path(path))
            with self._lock:
                self._known[stamp] = known
        return known
