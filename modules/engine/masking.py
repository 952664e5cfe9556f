"""Inpainting masks: "Only masked" crop regions (padding, then the job's aspect ratio) as A1111 computes them."""

from __future__ import annotations

from PIL import Image

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
