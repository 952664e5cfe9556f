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


def test_binary_mask_thresholds_and_reads_alpha():
    from modules.engine.masking import binary_mask

    soft = Image.new("L", (3, 1))
    for x, v in enumerate((0, 128, 200)):
        soft.putpixel((x, 0), v)
    assert list(binary_mask(soft).getdata()) == [0, 0, 255]
    assert list(binary_mask(soft, round_mask=False).getdata()) == [0, 128, 200]
    painted = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    painted.putpixel((1, 0), (0, 0, 0, 255))  # a painted stroke on a transparent layer
    assert list(binary_mask(painted).getdata()) == [0, 255]


def test_blur_mask_is_a_separable_gaussian_per_axis():
    import numpy as np

    from modules.engine.masking import blur_mask

    m = Image.new("L", (21, 21))
    m.putpixel((10, 10), 255)
    only_x = np.asarray(blur_mask(m, 3, 0)).astype(int)
    assert only_x[10, 5] > 0 and only_x[9].max() == 0  # spreads along x only
    both = np.asarray(blur_mask(m, 2, 2)).astype(int)
    assert both[10, 7] == both[7, 10] == both[13, 10] and both[10, 10] < 255  # symmetric
    assert blur_mask(m, 0, 0).tobytes() == m.tobytes()
    wide = Image.new("L", (40, 40))
    wide.paste(255, (10, 10, 30, 30))
    assert np.asarray(blur_mask(wide, 4, 4))[20, 20] > 240  # the centre of a big blob stays on


def test_overlay_mask_doubles_the_blurred_mask():
    import numpy as np

    from modules.engine.masking import overlay_mask

    m = Image.fromarray(np.array([[0, 60, 128, 255]], dtype=np.uint8), "L")
    assert list(overlay_mask(m).getdata()) == [0, 120, 255, 255]


def test_fill_masked_uses_surrounding_colours_and_keeps_the_rest():
    import numpy as np

    from modules.engine.masking import fill_masked

    img = Image.new("RGB", (64, 32), (250, 0, 0))  # red left half
    img.paste((0, 0, 250), (32, 0, 64, 32))  # blue right half
    img.paste((0, 255, 0), (24, 8, 40, 24))  # green square to be filled
    mask = Image.new("L", img.size)
    mask.paste(255, (24, 8, 40, 24))
    out = np.asarray(fill_masked(img, mask)).astype(int)
    assert np.array_equal(out[:, :20], np.asarray(img)[:, :20])  # unmasked pixels untouched
    assert out[8:24, 24:40, 1].max() < 30  # the green is gone
    assert out[16, 25, 0] > out[16, 25, 2] and out[16, 38, 2] > out[16, 38, 0]  # each side takes its neighbour
