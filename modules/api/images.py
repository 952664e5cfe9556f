"""Base64 image transport for the API: decode request images (bare base64 or data URI), encode response bytes."""

from __future__ import annotations

import base64
import binascii
import io
import logging

from PIL import Image, UnidentifiedImageError

from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# Decoded images larger than this many pixels are refused (PIL's own bomb limit is about 179 Mpx).
MAX_PIXELS = 64 * 1024 * 1024


def decode_base64_image(data: object, field: str) -> Image.Image:
    """Decode an image sent as bare base64 or a ``data:image/...;base64,`` URI.

    Args:
        data: The value of the request field.
        field: Field name for the error message (e.g. ``init_images[0]``).

    Returns:
        The decoded, fully loaded image.

    Raises:
        InvalidRequestError: The value is not a string, is a URL, is not base64, or is not an image PIL can read.
    """
    if not isinstance(data, str) or not data.strip():
        raise InvalidRequestError(f"{field} must be a base64-encoded image (bare or data URI)")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidRequestError(f"{field}: image URLs are not accepted by this server; send the image as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequestError(f"{field}: a data URI must be of the form data:image/<type>;base64,<data>")
    text = "".join(text.split())  # some clients wrap base64 lines
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{field} is not valid base64: {exc}") from exc
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_PIXELS:
            raise InvalidRequestError(f"{field}: image of {image.width}x{image.height} is too large")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise InvalidRequestError(f"{field} is base64 but not an image that can be read: {exc}") from exc
    return image


def encode_base64(data: bytes) -> str:
    """Return ``data`` as bare base64 text (what A1111 sends in ``images``).

    >>> encode_base64(b"abc")
    'YWJj'
    """
    return base64.b64encode(data).decode("ascii")
