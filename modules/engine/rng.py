"""Seeds (-1 → random), per-image generators, variation seeds (slerp), resized seeds → initial noise.

A1111's rules (a1111-compat.md §7): image i of a job uses ``seed + i`` unless a variation strength is set, in which
case every image uses ``seed`` and ``subseed + i``. Noise is drawn per image with its own generator, so image i of a
batch equals a single-image job with that seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modules.engine.rng_philox import PhiloxGenerator
from modules.errors import InvalidRequestError

SEED_RANGE = 4294967294
RANDN_SOURCES = ("GPU", "CPU", "NV")
Generator = torch.Generator | PhiloxGenerator


def fix_seed(seed: int | float | str | None) -> int:
    """Return ``seed`` as an int, or a random one in A1111's range for -1/None/empty/non-numeric.

    >>> fix_seed(1234)
    1234
    >>> 0 <= fix_seed(-1) < 4294967294
    True
    """
    try:
        value = int(float(seed)) if seed not in (None, "") else -1
    except (TypeError, ValueError):
        value = -1
    return random.randrange(SEED_RANGE) if value == -1 else value


def job_seeds(seed: int, subseed: int, subseed_strength: float, count: int) -> tuple[list[int], list[int]]:
    """Return (seeds, subseeds) for ``count`` images of a job with already-fixed seed and subseed.

    >>> job_seeds(10, 20, 0.0, 3)
    ([10, 11, 12], [20, 21, 22])
    >>> job_seeds(10, 20, 0.5, 2)
    ([10, 10], [20, 21])
    """
    seeds = [seed] * count if subseed_strength > 0 else [seed + i for i in range(count)]
    return seeds, [subseed + i for i in range(count)]


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``low`` (val=0) to ``high`` (val=1); linear when nearly parallel."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - val) + high * val
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """What the initial noise of one batch depends on.

    Attributes:
        shape: Latent shape of ONE image, (C, H/8, W/8).
        device: Device the noise ends up on.
        source: ``"GPU"`` (a generator on the model's device; CPU when the model runs there) or ``"CPU"``.
    """

    shape: tuple[int, int, int]
    device: torch.device
    source: str = "GPU"


def make_generator(seed: int, spec: NoiseSpec) -> Generator:
    """Return a generator seeded with ``seed`` on the device the source prescribes (NV: a Philox emulation)."""
    if spec.source not in RANDN_SOURCES:
        raise InvalidRequestError(f"randn_source must be one of {', '.join(RANDN_SOURCES)}, not {spec.source!r}")
    if spec.source == "NV":
        return PhiloxGenerator(seed)
    dev = spec.device if spec.source == "GPU" and spec.device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=dev).manual_seed(int(seed))


def draw(generator: Generator, shape: Sequence[int]) -> torch.Tensor:
    """The next standard-normal float32 draw of ``shape`` from ``generator`` (on the generator's device)."""
    if isinstance(generator, PhiloxGenerator):
        return generator.randn(shape)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


def _randn(seed: int, shape: Sequence[int], spec: NoiseSpec) -> torch.Tensor:
    return draw(make_generator(seed, spec), shape).to(spec.device)


def batch_noise(
    seeds: Sequence[int],
    spec: NoiseSpec,
    *,
    subseeds: Sequence[int] = (),
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Draw the initial latent noise of a batch, one generator per image.

    Args:
        seeds: Seed of each image.
        spec: Shape per image, device and source.
        subseeds: Variation seed of each image (used when ``subseed_strength`` > 0).
        subseed_strength: 0 keeps the seed's noise, 1 gives the variation seed's noise.
        seed_resize_from: (width, height) in pixels to draw the seed noise at, pasted centred ("Resize seed from").

    Returns:
        The noise (B, C, H, W) in fp32 on ``spec.device``, and the per-image generators, positioned after the
        initial draw so samplers can continue drawing from them (ancestral noise).
    """
    images: list[torch.Tensor] = []
    generators: list[torch.Generator] = []
    _, h, w = spec.shape
    for i, seed in enumerate(seeds):
        sub = None
        if subseed_strength > 0 and subseeds:
            sub = _randn(subseeds[i], spec.shape, spec)
        if seed_resize_from is not None and seed_resize_from != (w * 8, h * 8):
            noise = _resized_noise(seed, spec, seed_resize_from)
        else:
            noise = _randn(seed, spec.shape, spec)
        if sub is not None:
            noise = slerp(subseed_strength, noise.reshape(1, -1), sub.reshape(1, -1)).reshape(spec.shape)
        images.append(noise)
        generators.append(make_generator(seed, spec))
        draw(generators[-1], spec.shape)
    return torch.stack(images), generators


def _resized_noise(seed: int, spec: NoiseSpec, size_from: tuple[int, int]) -> torch.Tensor:
    """Noise drawn at another resolution, pasted centred into fresh noise of the target shape (same seed)."""
    c, h, w = spec.shape
    src_w, src_h = max(size_from[0] // 8, 1), max(size_from[1] // 8, 1)
    small = _randn(seed, (c, src_h, src_w), spec)
    noise = _randn(seed, spec.shape, spec)
    dx, dy = (w - src_w) // 2, (h - src_h) // 2
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    cw, ch = min(w, src_w), min(h, src_h)
    noise[:, ty : ty + ch, tx : tx + cw] = small[:, sy : sy + ch, sx : sx + cw]
    return noise
