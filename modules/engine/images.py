"""Encode images with embedded infotext (PNG text chunk, JPEG/WebP EXIF), filename patterns, grids."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# Extension → PIL format name.
FORMATS: Mapping[str, str] = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "avif": "AVIF"}
_EXIF_FORMATS = ("JPEG", "WEBP", "AVIF")

# EXIF UserComment character-code prefixes (EXIF 2.3, §4.6.5); piexif writes "unicode" as UTF-16 big-endian.
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_EXIF_IFD_POINTER = 0x8769
_USER_COMMENT = 0x9286

# Keys of ``Image.info`` that are not text metadata (A1111's PNG Info hides the same).
_IGNORED_INFO_KEYS = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
        "aspect",
        "gamma",
        "transparency",
        "xmp",
        "parameters",
        "comment",
    }
)
_RE_LEADING_INT = re.compile(r"^(\d+)")
_RE_TAG = re.compile(r"\[(\w+)\]")
_INVALID_FILENAME_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')
_MAX_BASENAME = 128
_MAX_ATTEMPTS = 1000

_Writer = Callable[[Image.Image, BinaryIO], None]


def user_comment_exif(text: str) -> bytes:
    """Return an EXIF block (the ``Exif`` marker + a big-endian TIFF) holding ``text`` as a "unicode" UserComment.

    The layout is what piexif writes: IFD0 with one Exif-IFD pointer, the Exif IFD with one UNDEFINED UserComment.
    """
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    exif_ifd_offset = 8 + 2 + 12 + 4
    data_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">HHHII", 1, _EXIF_IFD_POINTER, 4, 1, exif_ifd_offset) + struct.pack(">I", 0)
    tiff += struct.pack(">HHHII", 1, _USER_COMMENT, 7, len(comment), data_offset) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff + comment


def decode_user_comment(raw: bytes) -> str:
    r"""Decode an EXIF UserComment: ``UNICODE`` (UTF-16, big-endian unless the bytes say otherwise), ASCII or UTF-8.

    >>> decode_user_comment(b"UNICODE\0" + "a: é".encode("utf-16-be"))
    'a: é'
    >>> decode_user_comment(b"UNICODE\0" + "abc".encode("utf-16-le"))
    'abc'
    """
    body = raw[8:]
    if raw.startswith(_UNICODE_PREFIX):
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace")
        # Latin text in UTF-16-LE has its zero bytes at odd offsets; big-endian at even ones.
        le = sum(1 for b in body[1::2] if b == 0) > sum(1 for b in body[0::2] if b == 0)
        return body.decode("utf-16-le" if le else "utf-16-be", errors="replace")
    if raw.startswith(_ASCII_PREFIX):
        return body.decode("ascii", errors="replace")
    return raw.decode("utf-8", errors="ignore")


def _pil_format(fmt: str) -> str:
    """Return PIL's format name for an extension or format name.

    Raises:
        InvalidRequestError: The format is not supported.
    """
    key = fmt.lower().lstrip(".")
    if key not in FORMATS:
        raise InvalidRequestError(f"Unsupported image format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return FORMATS[key]


def _write(
    image: Image.Image,
    fp: BinaryIO,
    fmt: str,
    infotext: str | None,
    jpeg_quality: int,
    text_chunks: Mapping[str, str] | None = None,
) -> None:
    """Encode ``image`` into ``fp`` in ``fmt`` with ``infotext`` embedded where the format allows.

    ``text_chunks`` are further PNG text chunks (e.g. Extras' ``extras``); other formats carry only ``infotext``.
    """
    pil_format = _pil_format(fmt)
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        if infotext:
            info.add_text("parameters", infotext)
        for key, value in (text_chunks or {}).items():
            info.add_text(key, value)
        image.save(fp, "PNG", pnginfo=info)
        return
    if pil_format in ("JPEG", "GIF") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    kwargs: dict[str, object] = {}
    if pil_format in _EXIF_FORMATS:
        kwargs["quality"] = jpeg_quality
        if infotext:
            kwargs["exif"] = user_comment_exif(infotext)
    elif pil_format == "GIF" and infotext:
        kwargs["comment"] = infotext.encode("utf-8")
    image.save(fp, pil_format, **kwargs)


def encode_image(image: Image.Image, fmt: str, infotext: str | None, jpeg_quality: int = 80) -> bytes:
    """Encode an image to bytes (for the API's base64 output) with the infotext embedded.

    Args:
        image: The image.
        fmt: ``png``, ``jpeg``/``jpg``, ``webp``, ``gif`` or ``avif`` (any case).
        infotext: Text stored as PNG ``parameters`` / EXIF UserComment / GIF comment; None stores nothing.
        jpeg_quality: Quality for the lossy formats (1–100).

    Returns:
        The encoded file's bytes.

    Raises:
        InvalidRequestError: The format is not supported.
    """
    buffer = io.BytesIO()
    _write(image, buffer, fmt, infotext, jpeg_quality)
    return buffer.getvalue()


def _leading_numbers(directory: Path, prefix: str) -> list[int]:
    """Return the leading integers of the names in ``directory`` that start with ``prefix``."""
    if not directory.is_dir():
        return []
    numbers = []
    for entry in os.scandir(directory):
        if entry.name.startswith(prefix):
            match = _RE_LEADING_INT.match(entry.name[len(prefix) :])
            if match:
                numbers.append(int(match.group(1)))
    return numbers


def next_sequence_number(directory: Path, prefix: str = "") -> int:
    """Return 1 + the largest leading integer among the names in ``directory`` that start with ``prefix``.

    An empty folder starts at 0, as A1111 does (``00000-<seed>.png``, ``grid-0000.png``).
    """
    return max(_leading_numbers(directory, prefix), default=-1) + 1


def apply_filename_pattern(pattern: str, tags: Mapping[str, object]) -> str:
    """Replace ``[tag]`` placeholders with their values and make the result safe as a file name.

    Unknown tags stay as written (as A1111). ``[none]`` becomes an empty string.

    >>> apply_filename_pattern("[seed]-[steps]-[unknown]", {"seed": 12, "steps": 20})
    '12-20-[unknown]'
    >>> apply_filename_pattern('a/b:c', {})
    'a_b_c'
    """
    values = {"none": "", **{k: v for k, v in tags.items() if v is not None}}

    def replace(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        return str(values[key]) if key in values else match.group(0)

    text = _RE_TAG.sub(replace, pattern)
    return _INVALID_FILENAME_CHARS.sub("_", text).strip().rstrip(".")[:_MAX_BASENAME]


def _claim(tmp: Path, final: Path) -> bool:
    """Move ``tmp`` to ``final`` unless ``final`` exists; return whether it was moved. Never overwrites."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError:
        # No hard links on this filesystem: reserve the name exclusively, then replace the empty placeholder.
        try:
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        tmp.replace(final)
        return True
    tmp.unlink()
    return True


def _save_numbered(
    image: Image.Image, directory: Path, name_of: Callable[[int], str], write: _Writer, prefix: str = ""
) -> Path:
    """Write ``image`` to a temporary file, then claim the next free number in ``directory``.

    A number is held by an exclusive ``.<prefix><n>.lock`` marker while it is checked and claimed, so two savers
    (threads or processes) never end up with the same number, even with different name decorations.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("wb") as fp:
            write(image, fp)
        number = next_sequence_number(directory, prefix)
        for _ in range(_MAX_ATTEMPTS):
            marker = directory / f".{prefix}{number}.lock"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                number += 1
                continue
            try:
                final = directory / name_of(number)
                if number not in _leading_numbers(directory, prefix) and _claim(tmp, final):
                    logger.debug("Saved %s", final)
                    return final
            finally:
                marker.unlink(missing_ok=True)
            number += 1
    finally:
        tmp.unlink(missing_ok=True)
    raise FileExistsError(f"No free file name in {directory} after {_MAX_ATTEMPTS} attempts")


def save_image(
    image: Image.Image,
    directory: Path,
    *,
    seed: int | None,
    extension: str = "png",
    infotext: str | None,
    jpeg_quality: int = 80,
    basename_pattern: str = "[seed]",
    counter_digits: int = 5,
    suffix: str = "",
    tags: Mapping[str, object] | None = None,
    text_chunks: Mapping[str, str] | None = None,
) -> Path:
    """Save a sample as ``NNNNN-<pattern><suffix>.<ext>`` (e.g. ``00012-1234567890.png``), never overwriting.

    The counter is 1 + the largest leading integer among the names in ``directory``; if another saver takes that
    name first, the next number is used.

    Args:
        image: The image.
        directory: Target folder, created if missing.
        seed: Value of the ``[seed]`` tag.
        extension: ``png``, ``jpg``, ``webp``, ``gif`` or ``avif``.
        infotext: Embedded generation parameters, or None.
        jpeg_quality: Quality of lossy formats.
        basename_pattern: File-name pattern after the counter (A1111 tags such as ``[seed]``, ``[steps]``).
        counter_digits: Zero-padded width of the counter.
        suffix: Appended to the name, e.g. ``-before-highres-fix``.
        tags: Values of further pattern tags (lower-case names without brackets).
        text_chunks: Further PNG text chunks.

    Returns:
        The path written.

    Raises:
        InvalidRequestError: The extension is not supported.
    """
    ext = extension.lower().lstrip(".")
    _pil_format(ext)
    basename = apply_filename_pattern(basename_pattern, {**(tags or {}), "seed": seed})
    decoration = f"-{basename}" if basename else ""

    def name_of(number: int) -> str:
        return f"{number:0{counter_digits}d}{decoration}{suffix}.{ext}"

    def write(img: Image.Image, fp: BinaryIO) -> None:
        _write(img, fp, ext, infotext, jpeg_quality, text_chunks)

    return _save_numbered(image, directory, name_of, write)


def save_grid(
    grid: Image.Image, directory: Path, *, extension: str = "png", infotext: str | None = None, jpeg_quality: int = 80
) -> Path:
    """Save a grid as ``grid-NNNN.<ext>`` with its own counter (grids only), never overwriting.

    Raises:
        InvalidRequestError: The extension is not supported.
    """
    ext = extension.lower().lstrip(".")
    _pil_format(ext)

    def write(img: Image.Image, fp: BinaryIO) -> None:
        _write(img, fp, ext, infotext, jpeg_quality)

    return _save_numbered(grid, directory, lambda n: f"grid-{n:04d}.{ext}", write, prefix="grid-")


def grid_rows(count: int, rows: int | None = None) -> int:
    """Return A1111's default row count: ``round(sqrt(count))``, capped at ``count``; ``rows`` wins when > 0.

    >>> [grid_rows(n) for n in (1, 2, 3, 4, 5, 6, 8, 9)]
    [1, 1, 2, 2, 2, 2, 3, 3]
    """
    chosen = rows if rows and rows > 0 else round(math.sqrt(count))
    return max(1, min(chosen, count))


def image_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Paste images row by row into one RGB grid (black background), cell size = the first image's size.

    Args:
        images: At least one image.
        rows: Number of rows; None or 0 uses A1111's default (see ``grid_rows``).

    Returns:
        The grid image, ``ceil(n / rows)`` columns wide.

    Raises:
        InvalidRequestError: ``images`` is empty.
    """
    if not images:
        raise InvalidRequestError("Cannot make a grid of zero images")
    n_rows = grid_rows(len(images), rows)
    cols = math.ceil(len(images) / n_rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, n_rows * height), color="black")
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * width, i // cols * height))
    return grid


def read_infotext(image: Image.Image) -> tuple[str | None, dict[str, object]]:
    """Read the generation parameters of an image (PNG Info tab).

    Looks at the PNG ``parameters`` text chunk, then the EXIF UserComment, then a GIF comment.

    Returns:
        ``(infotext or None, other text metadata)``; binary entries (EXIF, ICC profile, dpi…) are left out.
    """
    info = dict(image.info)
    infotext = info.get("parameters")
    if not isinstance(infotext, str):
        infotext = None
    if infotext is None:
        raw = image.getexif().get_ifd(_EXIF_IFD_POINTER).get(_USER_COMMENT)
        if isinstance(raw, bytes) and raw:
            infotext = decode_user_comment(raw)
    if infotext is None and isinstance(info.get("comment"), bytes):
        infotext = info["comment"].decode("utf-8", errors="replace")
    others = {k: v for k, v in info.items() if k not in _IGNORED_INFO_KEYS and isinstance(v, (str, int, float))}
    return infotext, others


def date_dir(root: Path, now: datetime | None = None) -> Path:
    """Return ``root/YYYY-MM-DD`` for ``now`` (default: the current local time); nothing is created.

    >>> date_dir(Path("out"), datetime(2024, 7, 27, 13, 5)).as_posix()
    'out/2024-07-27'
    """
    return root / (now or datetime.now()).strftime("%Y-%m-%d")
