"""Our LDM autoencoder against diffusers' ``AutoencoderKL`` built from the same config and the same file weights.

For every tiny checkpoint kind: the LDM state dict is made as a file holds it, the config is derived the app's way
(``detect_model_type`` → ``vae_config_from_shapes``), the reference is diffusers' model filled through its own LDM
converter, and ours is built on the meta device and filled by name with ``assign=True``.
"""

import itertools

import pytest
import torch

from modules.engine.architecture import VAE, vae_config_from_shapes
from modules.engine.detection import detect_model_type
from modules.engine.nets.vae import AutoencoderKL, blend_weights, tile_spans
from tests.support.tiny_checkpoints import ALL_KINDS, ldm_state_dict

ATTN_LINEAR = ("q", "k", "v", "proj_out")


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-4 * max(1.0, reference.abs().max().item())


def _vae_file_state(kind: str, seed: int) -> tuple[dict, dict]:
    """The kind's whole LDM state dict (fp32) and the VAE config derived from its shapes."""
    state = ldm_state_dict(kind, "tiny", dtype=torch.float32, seed=seed)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    config = vae_config_from_shapes(shapes, detect_model_type(shapes, source=kind), source=kind)
    return state, config


def _ours(state: dict, config: dict) -> AutoencoderKL:
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    weights = {k.removeprefix(VAE): v for k, v in state.items() if k.startswith(VAE)}
    vae.load_state_dict(weights, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


def _reference(state: dict, config: dict):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ref = diffusers.AutoencoderKL.from_config(config)
    ref.load_state_dict(convert_ldm_vae_checkpoint(state, ref.config), strict=True)
    return ref.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sd1_vae() -> tuple[dict, dict, AutoencoderKL]:
    state, config = _vae_file_state("sd1", 0)
    return state, config, _ours(state, config)


@pytest.fixture
def small_tiles(sd1_vae):
    """The sd1 VAE with tiling on and 8-latent tiles (64 pixels), restored afterwards."""
    vae = sd1_vae[2]
    assert vae.tile_latent_size == 64 and vae.tile_overlap == 0.25  # SD1: 512-pixel tiles, as diffusers
    vae.tile_latent_size = 8
    try:
        yield vae
    finally:
        vae.tile_latent_size = 64
        vae.disable_tiling()


def _smooth(shape: tuple[int, ...], seed: int, factor: int = 4) -> torch.Tensor:
    """Random values varying slowly in space (bilinear upsampling of a coarse grid)."""
    b, c, h, w = shape
    coarse = torch.randn(b, c, h // factor + 2, w // factor + 2, generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse, scale_factor=factor, mode="bilinear", align_corners=False)
    return fine[:, :, :h, :w].contiguous()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_matches_diffusers(kind):
    state, config = _vae_file_state(kind, ALL_KINDS.index(kind))
    ref, ours = _reference(state, config), _ours(state, config)
    assert ours.config.scaling_factor == ref.config.scaling_factor
    assert ours.config.shift_factor is None and ours.config.latent_channels == 4
    assert list(ours.config.block_out_channels) == list(ref.config.block_out_channels)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 48, 64, generator=gen) * 2 - 1
    latents = torch.randn(2, 4, 6, 8, generator=gen)
    with torch.inference_mode():
        a, b = ref.encode(pixels).latent_dist, ours.encode(pixels).latent_dist
        pairs = {"mean": (a.mean, b.mean), "std": (a.std, b.std), "logvar": (a.logvar, b.logvar)}
        pairs["mode"] = (a.mode(), b.mode())
        pairs["sample"] = (a.sample(torch.Generator().manual_seed(3)), b.sample(torch.Generator().manual_seed(3)))
        pairs["decode"] = (ref.decode(latents).sample, ours.decode(latents).sample)
    assert pairs["decode"][1].shape == (2, 3, 48, 64) and pairs["mean"][1].shape == (2, 4, 6, 8)
    for name, (expected, got) in pairs.items():
        diff = (expected - got).abs().max().item()
        print(f"{kind} {name}: max|diff| {diff:.3g} (max|ref| {expected.abs().max().item():.3g})")
        assert diff <= _tolerance(expected), (kind, name, diff)


def test_state_dict_keys_are_the_ldm_ones(sd1_vae):
    state, _, vae = sd1_vae
    file_keys = {k.removeprefix(VAE) for k in state if k.startswith(VAE)}
    assert set(vae.state_dict()) == file_keys
    assert "decoder.up.3.block.2.conv1.weight" in file_keys and "decoder.up.0.upsample.conv.weight" not in file_keys
    assert not list(vae.buffers())
    assert all(p.device.type == "cpu" for p in vae.parameters())
    assert vae.dtype == torch.float32 and vae.device == torch.device("cpu")


def test_two_dimensional_attention_weights_load(sd1_vae):
    state, config, vae = sd1_vae
    flat = dict(state)
    linear = [k for k in state if any(k.endswith(f".mid.attn_1.{layer}.weight") for layer in ATTN_LINEAR)]
    for key in linear:
        flat[key] = state[key][:, :, 0, 0].clone()
    assert len(linear) == 8  # q, k, v, proj_out of the encoder and the decoder
    other = _ours(flat, config)
    assert all(other.state_dict()[k.removeprefix(VAE)].shape == state[k].shape for k in linear)
    latents = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    pixels = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(other.decode(latents).sample, vae.decode(latents).sample)
        assert torch.equal(other.encode(pixels).latent_dist.mean, vae.encode(pixels).latent_dist.mean)


def test_missing_key_fails_a_strict_load(sd1_vae):
    state, config, _ = sd1_vae
    weights = {k.removeprefix(VAE): v for k, v in state.items() if k.startswith(VAE)}
    del weights["decoder.mid.attn_1.k.weight"]
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    with pytest.raises(RuntimeError, match=r"decoder\.mid\.attn_1\.k\.weight"):
        vae.load_state_dict(weights, strict=True, assign=True)


def _diffusers_tiled(ref, tile: int):
    """Switch diffusers' model to its own tiling with ``tile``-latent tiles (what the app used before)."""
    ref.enable_tiling()
    ref.tile_latent_min_size, ref.tile_sample_min_size = tile, tile * 8
    return ref


def test_config_fields(sd1_vae):
    _, config, vae = sd1_vae
    assert vae.config.sample_size == 512 and vae.config.scaling_factor == 0.18215 and vae.config.force_upcast
    extra = {**config, "_class_name": "AutoencoderKL", "shift_factor": 0.1159, "act_fn": "silu", "unknown": 1}
    with torch.device("meta"):
        assert AutoencoderKL(extra).config.shift_factor == 0.1159
        for bad in ({"down_block_types": ["DownBlock2D"] * 4}, {"mid_block_add_attention": False}):
            with pytest.raises(ValueError, match="unsupported VAE"):
                AutoencoderKL({**config, **bad})


def test_tiled_decode_is_as_close_to_one_pass_as_diffusers(sd1_vae, small_tiles):
    state, config, _ = sd1_vae
    vae, ref = small_tiles, _reference(state, config)
    latents = _smooth((1, 4, 21, 14), seed=4)
    with torch.inference_mode():
        plain = vae.decode(latents).sample
        small_plain = vae.decode(latents[:, :, :8, :8]).sample
        theirs = _diffusers_tiled(ref, 8).decode(latents).sample
        vae.enable_tiling()
        tiled = vae.decode(latents).sample
        small = vae.decode(latents[:, :, :8, :8]).sample
    assert tiled.shape == plain.shape == (1, 3, 168, 112) and tiled.dtype == plain.dtype
    assert torch.equal(small, small_plain)  # fits in one tile: the one-pass decode
    ours_diff, their_diff = (tiled - plain).abs().mean().item(), (theirs - plain).abs().mean().item()
    print(
        f"tiled decode mean|diff|: ours {ours_diff:.3g}, diffusers {their_diff:.3g} (mean|x| {plain.abs().mean():.3g})"
    )
    # random tiny weights are far from tile-invariant (GroupNorm statistics, zero padding, attention): compare with
    # diffusers' tiling of the same model; the blending itself is checked exactly with local networks below
    assert ours_diff <= 1.1 * their_diff


def test_tiled_encode_is_as_close_to_one_pass_as_diffusers(sd1_vae, small_tiles):
    state, config, _ = sd1_vae
    vae, ref = small_tiles, _reference(state, config)
    pixels = _smooth((1, 3, 168, 112), seed=5, factor=16).clamp(-1, 1)
    odd = _smooth((1, 3, 170, 100), seed=5, factor=16).clamp(-1, 1)  # sizes not a multiple of 8: floored
    with torch.inference_mode():
        plain = vae.encode(pixels).latent_dist.mean
        small_plain = vae.encode(pixels[:, :, :64, :60]).latent_dist.mean
        theirs = _diffusers_tiled(ref, 8).encode(pixels).latent_dist.mean
        vae.enable_tiling()
        tiled = vae.encode(pixels).latent_dist
        small = vae.encode(pixels[:, :, :64, :60]).latent_dist.mean
        odd_tiled = vae.encode(odd).latent_dist.mean
    assert tiled.mean.shape == plain.shape == (1, 4, 21, 14) and odd_tiled.shape == (1, 4, 21, 12)
    assert torch.equal(small, small_plain)
    ours_diff, their_diff = (tiled.mean - plain).abs().mean().item(), (theirs - plain).abs().mean().item()
    print(
        f"tiled encode mean|diff|: ours {ours_diff:.3g}, diffusers {their_diff:.3g} (mean|x| {plain.abs().mean():.3g})"
    )
    assert ours_diff <= 1.1 * their_diff


class _Recorder(torch.nn.Module):
    """A spatially local stand-in network that records the size of each input it gets."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.sizes = fn, []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.fn(x)


def test_tiling_blends_local_networks_exactly(sd1_vae):
    """With networks that see only their own pixel block, tiles must reassemble the one-pass result exactly."""
    _, config, _ = sd1_vae
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    vae.quant_conv = vae.post_quant_conv = None  # keep the stand-ins' outputs as they are
    up = _Recorder(lambda z: torch.nn.functional.interpolate(torch.tanh(z[:, :3]), scale_factor=8) * 2 + 1)
    down = _Recorder(lambda x: torch.nn.functional.avg_pool2d(x, 8).repeat(1, 3, 1, 1)[:, :8].exp())
    vae.decoder, vae.encoder = up, down
    vae.tile_latent_size, vae.tile_overlap = 8, 0.25
    gen = torch.Generator().manual_seed(7)
    latents, pixels = torch.randn(2, 4, 29, 19, generator=gen), torch.randn(2, 3, 235, 140, generator=gen)
    plain_px, plain_lat = vae.decode(latents).sample, vae.encode(pixels).latent_dist.mean
    up.sizes.clear(), down.sizes.clear()
    vae.enable_tiling()
    tiled_px, tiled_lat = vae.decode(latents).sample, vae.encode(pixels).latent_dist.mean
    assert tiled_px.shape == plain_px.shape and tiled_lat.shape == plain_lat.shape == (2, 4, 29, 17)
    torch.testing.assert_close(tiled_px, plain_px, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiled_lat, plain_lat, rtol=1e-5, atol=1e-5)
    # one tile at a time, none larger than the tile (the last row/column of pixels takes the remainder below 8)
    assert len(up.sizes) == 5 * 3 and all(h <= 8 and w <= 8 for h, w in up.sizes)
    assert len(down.sizes) == 5 * 3 and all(h < 72 and w < 72 for h, w in down.sizes)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(8, 8, 2), (9, 8, 2), (21, 8, 2), (64, 8, 2), (30, 8, 6)])
def test_tiles_cover_and_weights_sum_to_one(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(e - s == min(tile, length) for s, e in spans)
    assert all(b[0] < a[1] and a[1] - b[0] >= min(overlap, tile) for a, b in itertools.pairwise(spans))
    for scale in (1, 8):
        total = torch.zeros(length * scale, dtype=torch.float64)
        for (s, e), w in zip(spans, blend_weights(spans, scale), strict=True):
            assert (w > 0).all()
            total[s * scale : e * scale] += w
        assert torch.allclose(total, torch.ones_like(total))


def test_half_precision_and_back(sd1_vae):
    state, config, _ = sd1_vae
    vae = _ours(state, config)
    latents = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        full = vae.decode(latents).sample
        vae.to(torch.bfloat16)
        assert vae.dtype == torch.bfloat16
        half = vae.decode(latents.bfloat16()).sample
        vae.to(torch.float32)
        again = vae.decode(latents).sample
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    bound = 0.1 * max(1.0, full.abs().max().item())
    assert (half.float() - full).abs().max().item() < bound
    assert again.dtype == torch.float32 and (again - full).abs().max().item() < bound
