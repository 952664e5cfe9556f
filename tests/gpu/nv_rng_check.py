"""On a CUDA machine: the NV source (our numpy Philox) against torch.randn on the GPU, same seed, several draws.

``python -m tests.gpu.nv_rng_check`` prints the max absolute difference per draw and shape.
"""

from __future__ import annotations

import json

import torch

from modules.engine.rng_philox import PhiloxGenerator


def main() -> None:
    results = {}
    for seed in (0, 1234, 3_000_000_000):
        for shape in ((4, 64, 64), (4, 128, 128), (3, 5)):
            cuda = torch.Generator(device="cuda").manual_seed(seed)
            nv = PhiloxGenerator(seed)
            diffs = []
            for _ in range(3):
                ref = torch.randn(shape, generator=cuda, device="cuda").cpu()
                diffs.append(float((nv.randn(shape) - ref).abs().max()))
            results[f"seed {seed} shape {shape}"] = diffs
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
