"""Scan checkpoint dirs → list[CheckpointInfo] (title, name, path, short hash); find by any A1111 alias.

Scanning never hashes whole files: the SHA-256 comes from a ``HashCache`` when it holds a valid entry, and is
computed lazily (``hash_checkpoint``) when a model is loaded. Lookup accepts every name A1111 accepts for the
``sd_model_checkpoint`` setting, so saved configs, infotexts and API clients keep working.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from modules.engine.hashes import HashCache, absolute_path, legacy_hash
from modules.engine.types import CheckpointInfo
from modules.errors import CheckpointNotFoundError

logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS: tuple[str, ...] = (".safetensors", ".ckpt")
"""File extensions listed as checkpoints (compared case-insensitively)."""

SKIPPED_SUFFIXES: tuple[str, ...] = (".vae.safetensors", ".vae.ckpt")
"""Standalone VAE files that share the checkpoint extensions but are not checkpoints."""

DEFAULT_CHECKPOINT_DIR = "models/Stable-diffusion"
"""Where users are told to put checkpoints, relative to the install (or ``--data-dir``)."""

MAX_LISTED_TITLES = 10
"""How many available titles a not-found error names."""

_BRACKETED_HASH = re.compile(r"^(?P<base>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]\s*$")
_BARE_HASH = re.compile(r"^[0-9a-fA-F]{8,64}$")
_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Return a sort key that orders digit runs by value and the rest case-insensitively.

    Args:
        text: The string to order, e.g. a checkpoint name.

    Returns:
        A tuple comparable with the keys of other strings.

    >>> sorted(["a10", "B1", "a2"], key=natural_sort_key)
    ['a2', 'a10', 'B1']
    """
    parts = _DIGITS.split(text)
    return tuple((1, int(part)) if index % 2 else (0, part.lower()) for index, part in enumerate(parts))


def is_checkpoint_filename(filename: str) -> bool:
    """Tell whether a file name has a checkpoint extension and is not a standalone VAE.

    >>> [is_checkpoint_filename(n) for n in ("a.safetensors", "B.CKPT", "a.vae.ckpt", "a.yaml")]
    [True, True, False, False]
    """
    lowered = filename.lower()
    return lowered.endswith(CHECKPOINT_EXTENSIONS) and not lowered.endswith(SKIPPED_SUFFIXES)


def _walk_files(root: Path, list_hidden: bool) -> Iterator[Path]:
    """Yield every regular file below ``root``, following symlinks but never entering a directory twice."""
    visited: set[tuple[int, int]] = set()
    for current, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            stat = Path(current).stat()
        except OSError:
            dirnames.clear()
            continue
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a second link to a walked folder
            dirnames.clear()
            continue
        visited.add((stat.st_dev, stat.st_ino))
        if not list_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        for filename in filenames:
            path = Path(current) / filename
            if is_checkpoint_filename(filename) and path.is_file():
                yield path


def _dedupe_key(path: Path) -> str:
    return os.path.normcase(absolute_path(path))


def _relative_name(path: Path, dirs: Sequence[Path]) -> str:
    """Name a file relative to the first checkpoint dir that contains it, else by its base name."""
    absolute = absolute_path(path)
    for directory in dirs:
        try:
            return absolute.relative_to(absolute_path(directory)).as_posix()
        except ValueError:
            continue
    return absolute.name


def _make_info(path: Path, name: str, hash_cache: HashCache | None) -> CheckpointInfo:
    absolute = absolute_path(path)
    config = absolute.with_suffix(".yaml")
    return CheckpointInfo(
        filename=absolute,
        name=name,
        sha256=hash_cache.get(absolute) if hash_cache is not None else None,
        config=config if config.is_file() else None,
    )


def scan_checkpoints(
    dirs: Sequence[Path],
    extra_files: Sequence[Path] = (),
    hash_cache: HashCache | None = None,
    *,
    list_hidden: bool = True,
) -> list[CheckpointInfo]:
    """List the checkpoints in ``dirs`` (recursively) plus ``extra_files``, without hashing any file.

    Args:
        dirs: Checkpoint folders in priority order (``--ckpt-dir`` first, then ``models/Stable-diffusion``);
            missing folders are skipped.
        extra_files: Single files such as ``--ckpt``; listed first, named relative to the folder of ``dirs``
            that holds them, else by their base name. Missing files are skipped with a warning.
        hash_cache: Source of already-known SHA-256 digests; entries for changed files are ignored.
        list_hidden: Whether files and folders whose names start with ``.`` are listed (A1111's
            ``list_hidden_files``).

    Returns:
        One ``CheckpointInfo`` per distinct path: extra files first, then each folder's files in natural order.
    """
    seen: set[str] = set()
    found: list[CheckpointInfo] = []

    def add(path: Path, name: str) -> None:
        key = _dedupe_key(path)
        if key not in seen:
            seen.add(key)
            found.append(_make_info(path, name, hash_cache))

    # 1. Explicit files (--ckpt) come first, as A1111 registers them first.
    for path in extra_files:
        if Path(path).is_file():
            add(Path(path), _relative_name(Path(path), dirs))
        else:
            logger.warning("Checkpoint file %s does not exist; it is not listed.", path)

    # 2. Each folder in turn, its files in natural order of their relative names.
    for directory in dirs:
        if not Path(directory).is_dir():
            logger.debug("Checkpoint folder %s does not exist; skipped.", directory)
            continue
        named = [(path.relative_to(directory).as_posix(), path) for path in _walk_files(Path(directory), list_hidden)]
        for name, path in sorted(named, key=lambda item: natural_sort_key(item[0])):
            add(path, name)
    logger.debug("Found %d checkpoints in %s", len(found), [str(d) for d in dirs])
    return found


def hash_checkpoint(info: CheckpointInfo, hash_cache: HashCache) -> CheckpointInfo:
    """Return ``info`` with its SHA-256 filled in, hashing the file (and caching the digest) if needed.

    Raises:
        OSError: The file cannot be read.
    """
    if info.sha256:
        return info
    return dataclasses.replace(info, sha256=hash_cache.sha256(info.filename))


# ---------------------------------------------------------------------------------------------------------------
# Lookup by alias
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Query:
    """A lookup string split into the part before an optional ``[hash]`` and the hash itself (lower case)."""

    text: str
    base: str
    hash: str | None

    @classmethod
    def parse(cls, query: str) -> _Query:
        text = query.strip().replace("\\", "/")
        bracketed = _BRACKETED_HASH.match(text)
        if bracketed:
            return cls(text, bracketed["base"], bracketed["hash"].lower())
        return cls(text, text, text.lower() if _BARE_HASH.match(text) else None)


def _names(info: CheckpointInfo) -> tuple[str, ...]:
    return (info.name, info.model_name, info.name_for_extra, info.filename.name)


def _hash_matches(info: CheckpointInfo, digest: str | None) -> bool:
    return digest is not None and info.sha256 is not None and digest in (info.sha256.lower(), info.shorthash)


def _exact_tiers(query: _Query) -> list[Callable[[CheckpointInfo], bool]]:
    """Predicates from the most to the least specific; the first one any checkpoint satisfies decides."""
    return [
        # A1111's primary ids: title, name and model_name.
        lambda c: query.text in (c.title, c.name, c.model_name),
        # "name [hash]" with any name form and a matching short or full hash.
        lambda c: query.base in _names(c) and _hash_matches(c, query.hash),
        # name_for_extra / base name, or a name whose bracketed hash is stale or not computed yet.
        lambda c: query.base in _names(c),
        # A bare hash or "[hash]": the file may have been renamed.
        lambda c: _hash_matches(c, query.hash),
        lambda c: query.base.lower() in (name.lower() for name in _names(c)),
    ]


def _match_legacy_hash(checkpoints: Sequence[CheckpointInfo], digest: str | None) -> CheckpointInfo | None:
    """Match A1111's old 8-hex hash; it is cheap (64 KiB per file) so it is computed on demand."""
    if digest is None or len(digest) != 8:
        return None
    for info in checkpoints:
        try:
            if legacy_hash(info.filename) == digest:
                return info
        except OSError as error:
            logger.debug("Cannot read %s for its legacy hash: %s", info.filename, error)
    return None


def _closest_match(checkpoints: Sequence[CheckpointInfo], query: _Query) -> CheckpointInfo | None:
    """A1111's last resort: the shortest title containing the query (then the query without its hash)."""
    for needle, fold in ((query.text, False), (query.base, False), (query.base.lower(), True)):
        if not needle:
            continue
        hits = [c for c in checkpoints if needle in (c.title.lower() if fold else c.title)]
        if hits:
            return min(hits, key=lambda c: len(c.title))
    return None


def _not_found_message(checkpoints: Sequence[CheckpointInfo], query: str, search_dirs: Sequence[Path]) -> str:
    if not checkpoints:
        where = ", ".join(str(d) for d in search_dirs) or DEFAULT_CHECKPOINT_DIR
        subject = f"Checkpoint {query!r} not found: no" if query else "No"
        return (
            f"{subject} checkpoints are installed. Put a Stable Diffusion checkpoint (.safetensors or .ckpt) into "
            f"{DEFAULT_CHECKPOINT_DIR} (searched: {where}) or pass --ckpt-dir / --ckpt, then refresh the list."
        )
    titles = [c.title for c in checkpoints[:MAX_LISTED_TITLES]]
    more = len(checkpoints) - len(titles)
    listed = ", ".join(titles) + (f" and {more} more" if more > 0 else "")
    return f"Checkpoint {query!r} not found. Available: {listed}."


def find_checkpoint(
    checkpoints: Sequence[CheckpointInfo], query: str, *, search_dirs: Sequence[Path] = ()
) -> CheckpointInfo:
    """Find a checkpoint by any name A1111 accepts.

    Accepted: title (``name [shorthash]``), ``name``, ``model_name``, ``name_for_extra``, the file's base name,
    the 10-hex short hash, the full SHA-256, ``[hash]`` and ``<any name> [hash]`` forms, the legacy 8-hex hash,
    and finally the shortest title that contains the query. Backslashes are read as ``/``.

    Args:
        checkpoints: The scanned list, in priority order (earlier entries win ties).
        query: What the user, the API or an infotext gave.
        search_dirs: Folders that were scanned, named in the error when nothing is installed.

    Returns:
        The matching checkpoint.

    Raises:
        CheckpointNotFoundError: Nothing matches; the message names the query and what is available.
    """
    parsed = _Query.parse(query)
    if parsed.text:
        for predicate in _exact_tiers(parsed):
            for info in checkpoints:
                if predicate(info):
                    return info
        match = _match_legacy_hash(checkpoints, parsed.hash) or _closest_match(checkpoints, parsed)
        if match is not None:
            return match
    raise CheckpointNotFoundError(_not_found_message(checkpoints, query, search_dirs))


def select_checkpoint(
    checkpoints: Sequence[CheckpointInfo], query: str, *, search_dirs: Sequence[Path] = ()
) -> CheckpointInfo:
    """Pick the checkpoint to load: ``query`` if it matches, else the first one (with a warning), as A1111 does.

    Raises:
        CheckpointNotFoundError: No checkpoint is installed at all.
    """
    if not checkpoints:
        raise CheckpointNotFoundError(_not_found_message(checkpoints, query, search_dirs))
    if not query.strip():
        return checkpoints[0]
    try:
        return find_checkpoint(checkpoints, query)
    except CheckpointNotFoundError:
        logger.warning("Checkpoint %r not found; loading %s instead.", query, checkpoints[0].title)
        return checkpoints[0]
