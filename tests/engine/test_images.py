import io
import struct
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from modules.engine import images
from modules.engine.images import (
    date_dir,
    decode_user_comment,
    encode_image,
    image_grid,
    next_sequence_number,
    read_infotext,
    save_grid,
    save_image,
    user_comment_exif,
)
from modules.errors import InvalidRequestError

INFOTEXT = 'a cat, (fluffy:1.2)\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 42, Lora hashes: "x: 1"'
UNICODE_INFOTEXT = "猫と犬 — café\nSteps: 4, Sampler: Euler, Seed: 1"


def _img(color="red", size=(16, 16), mode="RGB"):
    return Image.new(mode, size, color)


def test_first_file_names_and_counter(tmp_path):
    p1 = save_image(_img(), tmp_path, seed=1234567890, infotext=INFOTEXT)
    p2 = save_image(_img(), tmp_path, seed=7, infotext=None)
    assert p1.name == "00000-1234567890.png"
    assert p2.name == "00001-7.png"


def test_counter_continues_from_largest_leading_integer(tmp_path):
    (tmp_path / "00041-99.png").write_bytes(b"x")
    (tmp_path / "7-notes.txt").write_bytes(b"x")
    (tmp_path / "grid-0100.png").write_bytes(b"x")
    (tmp_path / "readme").write_bytes(b"x")
    assert next_sequence_number(tmp_path) == 42
    assert save_image(_img(), tmp_path, seed=5, infotext=None).name == "00042-5.png"


def test_suffix_pattern_digits_and_empty_basename(tmp_path):
    p = save_image(_img(), tmp_path, seed=3, infotext=None, suffix="-before-highres-fix")
    assert p.name == "00000-3-before-highres-fix.png"
    p = save_image(
        _img(), tmp_path, seed=3, infotext=None, basename_pattern="[seed]-[steps]", tags={"steps": 20}, counter_digits=3
    )
    assert p.name == "001-3-20.png"
    p = save_image(_img(), tmp_path, seed=None, infotext=None, basename_pattern="[none]")
    assert p.name == "00002.png"


def test_never_overwrites_when_name_taken(tmp_path, monkeypatch):
    taken = tmp_path / "00000-5.png"
    taken.write_bytes(b"precious")
    monkeypatch.setattr(images, "_leading_numbers", lambda directory, prefix: [])  # as if a racer wrote it just now
    p = save_image(_img(), tmp_path, seed=5, infotext=None)
    assert p.name == "00001-5.png"
    assert taken.read_bytes() == b"precious"
    assert not [f for f in tmp_path.iterdir() if f.suffix == ".tmp"]


def test_concurrent_savers_get_distinct_files(tmp_path):
    paths: list[Path] = []
    lock = threading.Lock()

    def worker(seed):
        p = save_image(_img(size=(8, 8)), tmp_path, seed=seed, infotext=None)
        with lock:
            paths.append(p)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(p.name[:5]) for p in paths) == list(range(0, 8))
    assert len(list(tmp_path.iterdir())) == 8  # no .tmp or .lock left behind


def test_png_parameters_chunk_round_trip(tmp_path):
    p = save_image(_img(), tmp_path, seed=42, infotext=INFOTEXT)
    with Image.open(p) as im:
        assert im.info["parameters"] == INFOTEXT
        text, other = read_infotext(im)
    assert text == INFOTEXT
    assert "parameters" not in other
    data = p.read_bytes()
    assert b"tEXtparameters\x00" in data


def test_png_unicode_infotext(tmp_path):
    p = save_image(_img(), tmp_path, seed=1, infotext=UNICODE_INFOTEXT)
    with Image.open(p) as im:
        assert read_infotext(im)[0] == UNICODE_INFOTEXT


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "webp"])
def test_exif_user_comment_round_trip(tmp_path, ext):
    p = save_image(_img(mode="RGBA"), tmp_path, seed=9, extension=ext, infotext=UNICODE_INFOTEXT, jpeg_quality=90)
    assert p.suffix == f".{ext}"
    with Image.open(p) as im:
        raw = im.getexif().get_ifd(0x8769)[0x9286]
        assert raw.startswith(b"UNICODE\x00")
        assert raw[8:].decode("utf-16-be") == UNICODE_INFOTEXT
        text, other = read_infotext(im)
    assert text == UNICODE_INFOTEXT
    assert "exif" not in other and "jfif" not in other and "dpi" not in other


def test_exif_block_layout_is_big_endian_tiff():
    block = user_comment_exif("ab")
    assert block.startswith(b"Exif\x00\x00MM\x00\x2a")
    tiff = block[6:]
    (ifd0,) = struct.unpack(">I", tiff[4:8])
    count, tag, typ, _, exif_ifd = struct.unpack(">HHHII", tiff[ifd0 : ifd0 + 14])
    assert (count, tag, typ) == (1, 0x8769, 4)
    _, tag, typ, length, offset = struct.unpack(">HHHII", tiff[exif_ifd : exif_ifd + 14])
    assert (tag, typ, length) == (0x9286, 7, 12)
    assert tiff[offset : offset + length] == b"UNICODE\x00\x00a\x00b"


def test_decode_user_comment_variants():
    assert decode_user_comment(b"ASCII\x00\x00\x00hello") == "hello"
    assert decode_user_comment("plain utf8 é".encode()) == "plain utf8 é"
    assert decode_user_comment(b"UNICODE\x00\xff\xfe" + "bom".encode("utf-16-le")) == "bom"


def test_read_infotext_other_chunks_and_none(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("extras", "Postprocess upscale by: 2")
    path = tmp_path / "x.png"
    _img().save(path, pnginfo=info, dpi=(72, 72))
    with Image.open(path) as im:
        text, other = read_infotext(im)
    assert text is None
    assert other == {"extras": "Postprocess upscale by: 2"}


def test_encode_image_formats():
    png = encode_image(_img(), "PNG", INFOTEXT)
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).info["parameters"] == INFOTEXT
    jpg = encode_image(_img(), "jpeg", INFOTEXT, jpeg_quality=50)
    assert jpg.startswith(b"\xff\xd8")
    assert read_infotext(Image.open(io.BytesIO(jpg)))[0] == INFOTEXT
    webp = encode_image(_img(), "webp", None)
    assert webp[8:12] == b"WEBP"
    assert read_infotext(Image.open(io.BytesIO(webp)))[0] is None
    with pytest.raises(InvalidRequestError, match="Unsupported image format 'bmp'"):
        encode_image(_img(), "bmp", None)


def test_save_grid_names_and_own_counter(tmp_path):
    (tmp_path / "00050-1.png").write_bytes(b"x")
    g1 = save_grid(_img(), tmp_path, extension="png", infotext=INFOTEXT)
    g2 = save_grid(_img(), tmp_path, extension="png", infotext=None)
    assert (g1.name, g2.name) == ("grid-0000.png", "grid-0001.png")
    with Image.open(g1) as im:
        assert im.info["parameters"] == INFOTEXT
    assert save_image(_img(), tmp_path, seed=1, infotext=None).name == "00051-1.png"


@pytest.mark.parametrize(
    "n,rows,size",
    [
        (1, None, (16, 16)),
        (2, None, (32, 16)),
        (3, None, (32, 32)),
        (4, None, (32, 32)),
        (5, None, (48, 32)),
        (9, None, (48, 48)),
        (4, 1, (64, 16)),
        (3, 5, (16, 48)),
    ],
)
def test_image_grid_layout(n, rows, size):
    grid = image_grid([_img() for _ in range(n)], rows=rows)
    assert grid.size == size
    assert grid.mode == "RGB"


def test_image_grid_pastes_in_row_order_on_black():
    colors = ["red", "lime", "blue"]
    grid = image_grid([_img(c, (4, 4)) for c in colors])  # 2 rows x 2 cols
    assert grid.getpixel((1, 1)) == (255, 0, 0)
    assert grid.getpixel((5, 1)) == (0, 255, 0)
    assert grid.getpixel((1, 5)) == (0, 0, 255)
    assert grid.getpixel((5, 5)) == (0, 0, 0)
    with pytest.raises(InvalidRequestError):
        image_grid([])


def test_date_dir():
    assert date_dir(Path("/o"), datetime(2026, 1, 2, 3, 4)) == Path("/o/2026-01-02")
    assert date_dir(Path("/o")).name == datetime.now().strftime("%Y-%m-%d")
