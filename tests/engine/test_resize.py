"""A1111's four resize modes: geometry on PIL images and the latent resize of mode 3."""

import numpy as np
import pytest
import torch
from PIL import Image

from modules.engine.resize import prepare_for_latent, resize_image, resize_latent
from modules.errors import InvalidRequestError


def px(image):
    return np.asarray(image.convert("RGB")).astype(int)


def striped(w, h):
    """Red left third, blue middle third, green right third."""
    img = Image.new("RGB", (w, h), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, w // 3, h))
    img.paste((0, 255, 0), (w - w // 3, 0, w, h))
    return img


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("source", [(100, 40), (40, 100), (64, 48)])
def test_every_mode_gives_the_target_size(mode, source):
    assert resize_image(striped(*source), 64, 48, mode).size == (64, 48)


def test_just_resize_stretches_everything_in():
    out = px(resize_image(striped(300, 60), 60, 60, 0))
    assert out[30, 5, 0] > 200 and out[30, 30, 2] > 200 and out[30, 55, 1] > 200  # all three stripes kept


def test_crop_and_resize_keeps_the_centre_only():
    out = px(resize_image(striped(300, 100), 64, 64, 1))  # scaled to 192x64, the middle 64 columns kept: all blue
    assert (out[:, 2:-2, 2] > 200).all() and (out[:, 2:-2, 0] < 60).all()


def test_resize_and_fill_stretches_the_edge_pixels_into_the_borders():
    img = Image.new("RGB", (100, 20), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 100, 5))  # red top rows
    img.paste((0, 0, 255), (0, 15, 100, 20))  # blue bottom rows
    out = px(resize_image(img, 64, 64, 2))  # fits as 64x13, 25/26 rows of border above/below
    assert (out[:20, :, 0] > 200).all() and (out[:20, :, 1] < 60).all()  # top border repeats the red row
    assert (out[-20:, :, 2] > 200).all() and (out[-20:, :, 1] < 60).all()  # bottom border repeats the blue row
    assert (out[32, :, 1] > 200).all()  # picture in the middle, full width


def test_resize_and_fill_masks_stay_single_channel():
    out = resize_image(Image.new("L", (40, 20), 255), 32, 32, 2)
    assert out.mode == "L" and out.size == (32, 32) and out.getextrema() == (255, 255)


def test_latent_upscale_keeps_pixels_and_resizes_the_latent():
    assert prepare_for_latent(striped(100, 44)).size == (96, 40)
    assert prepare_for_latent(striped(5, 5)).size == (8, 8)
    latent = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = resize_latent(latent, 64, 32)
    assert out.shape == (1, 1, 4, 8)
    assert resize_latent(latent, 32, 32) is latent


def test_bad_resize_mode():
    with pytest.raises(InvalidRequestError, match="resize_mode"):
        resize_image(striped(10, 10), 64, 64, 7)
