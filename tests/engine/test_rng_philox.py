"""The NV random source (Philox4x32-10 + Box–Muller): statistics, offsets, and generation with it.

That it equals ``torch.randn`` on a CUDA device is checked on the GPU machine (tests/gpu/nv_rng_check.py).
"""

import numpy as np
import torch

from modules.engine.pipeline import generate
from modules.engine.rng import NoiseSpec, batch_noise
from modules.engine.rng_philox import PhiloxGenerator, philox4x32
from modules.engine.types import GenerationOptions, GenerationRequest


def test_philox_is_a_deterministic_bijection_of_counter_and_key():
    counter = [np.arange(4, dtype=np.uint32), np.zeros(4, np.uint32), np.zeros(4, np.uint32), np.zeros(4, np.uint32)]
    key = [np.full(4, 7, np.uint32), np.zeros(4, np.uint32)]
    a, b = philox4x32(counter, key), philox4x32(counter, key)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({int(v) for v in a[0]}) == 4  # different counters, different outputs
    other = philox4x32(counter, [np.full(4, 8, np.uint32), np.zeros(4, np.uint32)])
    assert not np.array_equal(a[0], other[0])


def test_normal_statistics_and_offsets():
    gen = PhiloxGenerator(1234)
    first = gen.randn((4, 64, 64))
    second = gen.randn((4, 64, 64))
    assert first.dtype == torch.float32 and gen.offset == 2
    assert abs(float(first.mean())) < 0.02 and abs(float(first.std()) - 1) < 0.02
    assert not torch.equal(first, second)
    assert torch.equal(PhiloxGenerator(1234).randn((4, 64, 64)), first)
    assert not torch.equal(PhiloxGenerator(1235).randn((4, 64, 64)), first)


def test_batch_noise_with_nv_is_per_seed():
    spec = NoiseSpec((4, 8, 8), torch.device("cpu"), "NV")
    noise, gens = batch_noise([5, 6], spec)
    assert torch.equal(noise[1], PhiloxGenerator(6).randn((4, 8, 8)))
    assert [g.offset for g in gens] == [1, 1]


def test_generation_with_the_nv_source(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    base = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler a"}
    nv = GenerationOptions(randn_source="NV")
    batch = generate(model, GenerationRequest(**base, seed=10, batch_size=2), nv)
    single = generate(model, GenerationRequest(**base, seed=11), nv)
    gpu = generate(model, GenerationRequest(**base, seed=11))
    a, b = np.asarray(batch.images[1], dtype=int), np.asarray(single.images[0], dtype=int)
    assert np.abs(a - b).max() <= 1 and "RNG: NV" in single.infotexts[0]
    assert not np.array_equal(b, np.asarray(gpu.images[0], dtype=int))
