"""VAE decoding: A1111's rounding, and the tiled retry when decoding runs out of memory (injected on the CPU)."""

import numpy as np
import torch

from modules.engine.vae import decode_latents


class OomOnce:
    """Wraps a VAE's decode to raise torch.OutOfMemoryError while tiling is off (what a too-large image does)."""

    def __init__(self, vae):
        self.vae, self.original, self.calls = vae, vae.decode, []

    def __call__(self, z, *args, **kwargs):
        self.calls.append(bool(getattr(self.vae, "use_tiling", False)))
        if not self.vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.original(z, *args, **kwargs)


def test_out_of_memory_switches_to_tiled_decoding(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    vae = model.components.vae
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = decode_latents(vae, latents)
    hook = OomOnce(vae)
    vae.decode = hook
    try:
        tiled = decode_latents(vae, latents)
    finally:
        del vae.decode
        vae.disable_tiling()
    assert hook.calls == [False, True, True]  # failed once, then tiled for the rest of the batch
    assert [im.size for im in tiled] == [(128, 128), (128, 128)]
    a, b = np.asarray(tiled[0], dtype=float).ravel(), np.asarray(plain[0], dtype=float).ravel()
    # random weights normalise each tile on its own, so only a clear likeness to the one-pass decode is expected
    assert a.std() > 0 and np.corrcoef(a, b)[0, 1] > 0.5
