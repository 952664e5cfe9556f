import pytest
from PIL import Image

from modules.engine.masking import crop_region, expand_to_ratio


def test_crop_region_clamps_padding_to_the_image():
    m = Image.new("L", (50, 40))
    m.paste(255, (0, 30, 10, 40))
    assert crop_region(m, 16) == (0, 14, 26, 40)
    assert crop_region(Image.new("L", (8, 8)), 4) is None


@pytest.mark.parametrize(
    ("box", "size", "image", "expected"),
    [
        ((40, 40, 60, 80), (64, 64), (200, 200), (30, 40, 70, 80)),  # widened around the centre
        ((0, 0, 20, 10), (64, 64), (200, 200), (0, 0, 20, 20)),  # heightened, kept inside
        ((190, 0, 200, 40), (64, 64), (200, 200), (160, 0, 200, 40)),  # pushed back from the right edge
        ((0, 0, 100, 10), (64, 64), (100, 30), (0, 0, 100, 30)),  # cannot reach the ratio: whole height
    ],
)
def test_expand_to_ratio(box, size, image, expected):
    assert expand_to_ratio(box, *size, *image) == expected
