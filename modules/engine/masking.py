"""Inpainting masks as A1111 prepares them.

Binarise, Gaussian blur per axis, "Only masked" crop regions (padding, then the job's aspect ratio), the overlay
mask used to paste results back, and the "fill" masked content.

Masks are "L" images where white (255) means "repaint".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Blur radii of the "fill" masked content, narrow first: near the mask's edge the local colours win, deeper inside
# wider blurs take over, and the widest reaches the middle of big holes.
_FILL_RADII = (2, 4, 16, 64, 256)
_FILL_CONFIDENT_WEIGHT = 0.2  # share of unmasked pixels under the blur at which its colour is fully trusted

Box = tuple[int, int, int, int]


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """Bounding box of the painted (non-zero) mask pixels grown by ``padding`` and clamped; None if nothing is painted.

    >>> m = Image.new("L", (100, 100)); m.paste(255, (40, 40, 50, 60))
    >>> crop_region(m, 5)
    (35, 35, 55, 65)
    """
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_to_ratio(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """Grow ``box`` so its aspect ratio equals width/height, staying inside the image where possible.

    >>> expand_to_ratio((40, 40, 60, 80), 64, 64, 200, 200)
    (30, 40, 70, 80)
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if w * height < h * width:  # too narrow: widen
        target = min(round(h * width / height), image_w)
        x1, x2 = _grow(x1, x2, target, image_w)
    elif w * height > h * width:  # too flat: heighten
        target = min(round(w * height / width), image_h)
        y1, y2 = _grow(y1, y2, target, image_h)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, target: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length ``target`` around its centre, shifted back inside [0, limit)."""
    extra = target - (hi - lo)
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = max(lo - (hi - limit), 0), limit
    return lo, hi


def binary_mask(mask: Image.Image, round_mask: bool = True) -> Image.Image:
    """The "L" mask of an uploaded mask image, thresholded at 128 when ``round_mask`` (A1111's ``mask_round``).

    An RGBA mask that is not fully opaque is read from its alpha channel (what a painted layer gives).

    >>> [binary_mask(Image.new("L", (1, 1), v)).getpixel((0, 0)) for v in (128, 129)]
    [0, 255]
    """
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    return mask.point(lambda v: 255 if v > 128 else 0) if round_mask else mask


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian truncated at 2.5 sigma (A1111's kernel size ``2 * int(2.5 * sigma + 0.5) + 1``)."""
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _blur_axis(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Convolve ``arr`` with a Gaussian along ``axis``, mirroring the border without repeating the edge pixel."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    radius_fit = min(radius, arr.shape[axis] - 1)
    pads = [(0, 0), (0, 0)]
    pads[axis] = (radius_fit, radius_fit)
    padded = np.pad(arr, pads, mode="reflect") if radius_fit > 0 else arr
    if radius_fit < radius:  # a mask thinner than the kernel: pad the rest with the edge value
        extra = [(0, 0), (0, 0)]
        extra[axis] = (radius - radius_fit, radius - radius_fit)
        padded = np.pad(padded, extra, mode="edge")
    out = np.zeros_like(arr, dtype=np.float64)
    n = arr.shape[axis]
    for i, weight in enumerate(kernel):
        out += weight * np.take(padded, range(i, i + n), axis=axis)
    return out


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Gaussian-blur an "L" mask with sigma ``blur_x`` horizontally and ``blur_y`` vertically (0 = no blur).

    >>> m = Image.new("L", (9, 1)); m.putpixel((4, 0), 255)
    >>> [blur_mask(m, 1, 0).getpixel((x, 0)) for x in range(2, 7)]
    [14, 62, 102, 62, 14]
    """
    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        arr = _blur_axis(arr, blur_x, axis=1)
    if blur_y > 0:
        arr = _blur_axis(arr, blur_y, axis=0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def overlay_mask(blurred: Image.Image) -> Image.Image:
    """Whole-picture inpainting's paste-back mask: the blurred mask doubled and clipped (A1111).

    The generated pixels fully cover where the blurred mask is at least half on and fade out only at its outer edge.

    >>> overlay_mask(Image.new("L", (1, 1), 100)).getpixel((0, 0))
    200
    """
    arr = np.asarray(blurred.convert("L"), dtype=np.int32)
    return Image.fromarray(np.clip(arr * 2, 0, 255).astype(np.uint8), "L")


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: replace the masked area by the blurred colours of its surroundings.

    Each pass blurs the unmasked pixels and their coverage (normalised convolution), from narrow to wide radii; a
    masked pixel takes each pass's average colour in proportion to how much unmasked area that blur saw around it,
    for whatever share earlier (narrower) passes left. Unmasked pixels keep their values.

    >>> img = Image.new("RGB", (8, 8), (200, 10, 10)); m = Image.new("L", (8, 8)); m.paste(255, (0, 0, 4, 8))
    >>> fill_masked(img, m).getpixel((0, 0))
    (200, 10, 10)
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    keep = 1.0 - np.asarray(mask.convert("L").resize(image.size), dtype=np.float64) / 255.0
    result = rgb * keep[..., None]
    coverage = keep.copy()
    for radius in _FILL_RADII:
        weight = _smooth(keep, radius)
        colour = np.stack([_smooth(rgb[..., c] * keep, radius) for c in range(3)], axis=-1)
        average = colour / np.maximum(weight, 1e-6)[..., None]
        trust = 1.0 if radius == _FILL_RADII[-1] else np.clip(weight / _FILL_CONFIDENT_WEIGHT, 0.0, 1.0)
        take = np.where(weight > 1e-6, (1.0 - coverage) * trust, 0.0)
        result += average * take[..., None]
        coverage += take
    return Image.fromarray(np.clip(np.rint(result), 0, 255).astype(np.uint8), "RGB")


def _smooth(channel: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float 2-D array with zeros outside it (FFT per axis, so wide radii stay cheap)."""
    out = channel
    for axis in (0, 1):
        n = out.shape[axis]
        pad = min(int(3 * sigma) + 1, n)
        size = n + 2 * pad
        x = np.fft.fftfreq(size) * size  # signed distances 0, 1, …, -1 for a circular kernel
        kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
        kernel /= kernel.sum()
        pads = [(0, 0), (0, 0)]
        pads[axis] = (pad, pad)
        spectrum = np.fft.rfft(np.pad(out, pads), axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        full = np.fft.irfft(spectrum * np.fft.rfft(kernel).reshape(shape), n=size, axis=axis)
        out = np.take(full, range(pad, pad + n), axis=axis)
    return out
