"""Base64 image transport: bare base64, data URIs, wrapped lines, and clear errors for everything else."""

import base64
import io

import pytest
from PIL import Image

from modules.api.images import decode_base64_image, encode_base64
from modules.errors import InvalidRequestError


def _png_bytes(size=(16, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_bare_base64():
    image = decode_base64_image(encode_base64(_png_bytes()), "image")
    assert image.size == (16, 8) and image.getpixel((0, 0)) == (1, 2, 3)


def test_data_uri_and_wrapped_lines_and_missing_padding():
    b64 = encode_base64(_png_bytes())
    assert decode_base64_image(f"data:image/png;base64,{b64}", "image").size == (16, 8)
    wrapped = "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))
    assert decode_base64_image(wrapped, "image").size == (16, 8)
    assert decode_base64_image(b64.rstrip("="), "image").size == (16, 8)


def test_jpeg_input():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    assert decode_base64_image(base64.b64encode(buf.getvalue()).decode(), "x").format == "JPEG"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "must be a base64-encoded image"),
        (None, "must be a base64-encoded image"),
        (123, "must be a base64-encoded image"),
        ("@@@@", "is not valid base64"),
        (base64.b64encode(b"not an image").decode(), "not an image that can be read"),
        ("http://example.com/a.png", "URLs are not accepted"),
        ("data:image/png,abc", "data URI must be of the form"),
        (encode_base64(_png_bytes())[:40], "not an image that can be read"),  # truncated file
    ],
)
def test_bad_values_raise_with_the_field_named(value, needle):
    with pytest.raises(InvalidRequestError) as info:
        decode_base64_image(value, "init_images[0]")
    assert str(info.value).startswith("init_images[0]") and needle in str(info.value)
    assert info.value.status_code == 422
