import torch

from modules.engine.rng import NoiseSpec, batch_noise, fix_seed, job_seeds

SPEC = NoiseSpec((4, 8, 8), torch.device("cpu"))


def test_same_seed_same_noise():
    a, _ = batch_noise([5], SPEC)
    b, _ = batch_noise([5], SPEC)
    assert torch.equal(a, b)


def test_batch_equals_single_images():
    batch, _ = batch_noise([7, 8, 9], SPEC)
    for i, seed in enumerate([7, 8, 9]):
        single, _ = batch_noise([seed], SPEC)
        assert torch.equal(batch[i], single[0])


def test_noise_is_torch_randn_of_the_seed():
    noise, _ = batch_noise([1234], SPEC)
    expected = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(1234))
    assert torch.equal(noise[0], expected)


def test_generators_continue_after_initial_draw():
    _, gens = batch_noise([3], SPEC)
    g = torch.Generator().manual_seed(3)
    torch.randn((4, 8, 8), generator=g)
    assert torch.equal(torch.randn(5, generator=gens[0]), torch.randn(5, generator=g))


def test_variation_strength_interpolates():
    base, _ = batch_noise([1], SPEC)
    sub, _ = batch_noise([2], SPEC)
    v0, _ = batch_noise([1], SPEC, subseeds=[2], subseed_strength=0.0)
    v1, _ = batch_noise([1], SPEC, subseeds=[2], subseed_strength=1.0)
    half, _ = batch_noise([1], SPEC, subseeds=[2], subseed_strength=0.5)
    assert torch.equal(v0, base)
    assert torch.allclose(v1, sub, atol=1e-5)
    assert not torch.allclose(half, base) and not torch.allclose(half, sub)


def test_resize_seed_keeps_centre():
    spec = NoiseSpec((4, 16, 16), torch.device("cpu"))
    noise, _ = batch_noise([11], spec, seed_resize_from=(64, 64))
    small = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(11))
    assert torch.equal(noise[0, :, 4:12, 4:12], small)


def test_job_seeds_rules():
    assert job_seeds(100, 7, 0.0, 4) == ([100, 101, 102, 103], [7, 8, 9, 10])
    assert job_seeds(100, 7, 0.3, 2) == ([100, 100], [7, 8])


def test_fix_seed():
    assert fix_seed("12") == 12
    assert fix_seed(None) >= 0 and fix_seed("abc") >= 0 and fix_seed(-1) >= 0
