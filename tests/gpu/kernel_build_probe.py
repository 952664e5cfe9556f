"""How long Triton takes to build our kernels with an empty cache, one after another or on several threads (GPU).

    python -m tests.gpu.kernel_build_probe [--threads 1 4 8 16] [--out FILE]

Each mode runs in a new process against a new, empty ``TRITON_CACHE_DIR`` and launches every GroupNorm/GEGLU
kernel variant an SD1.5 job at 512² needs (the list of tests/gpu/results/kernel_cache_probe-h200.json: the UNet's
and the VAE's channel-per-group widths, split and whole, with and without the time embedding and SiLU) on small
tensors: with ``--threads 1`` one after another, else from a thread pool. The wall time is what a first job would
wait for its kernels (compile, launcher build, module load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# (channels, add, silu, splits): the GroupNorm calls of an SD1.5 512² job, by the kernel variant they need
UNET_CHANNELS = (320, 640, 1280, 2560)  # channels per group 10, 20, 40, 80 (60 and 30 share 40's and 20's variants)
VAE_CHANNELS = (128, 256, 512)


def specs() -> list[tuple[int, bool, bool, int]]:
    out = []
    for c in UNET_CHANNELS:
        out += [(c, False, True, 2), (c, True, True, 2), (c, False, False, 2)]
    out += [(1280, False, True, 1), (1280, True, True, 1), (1280, False, False, 1)]
    for c in VAE_CHANNELS:
        out += [(c, False, True, 2), (c, False, False, 2)]
    return out


def _child(threads: int) -> dict:
    t0 = time.perf_counter()
    import torch

    from modules.engine.geglu import geglu_gate
    from modules.engine.group_norm import group_norm_nhwc

    torch.cuda.init()
    t_import = time.perf_counter() - t0

    def one(spec: tuple[int, bool, bool, int]) -> None:
        c, add, silu, splits = spec
        torch.cuda.set_device(0)
        module = torch.nn.GroupNorm(32, c).cuda().half()
        x = torch.randn(2, c, 16, 16, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
        emb = torch.randn(2, c, device="cuda", dtype=torch.float16) if add else None
        group_norm_nhwc(x, module, emb, silu=silu, splits=splits)

    def gate() -> None:
        torch.cuda.set_device(0)
        geglu_gate(torch.randn(2, 64, 2 * 1280, device="cuda", dtype=torch.float16))

    t1 = time.perf_counter()
    if threads == 1:
        for spec in specs():
            one(spec)
        gate()
    else:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(one, spec) for spec in specs()] + [pool.submit(gate)]
            for f in futures:
                f.result()
    torch.cuda.synchronize()
    return {"threads": threads, "variants": len(specs()) + 1, "import_s": t_import, "build_s": time.perf_counter() - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    results = []
    for threads in args.threads:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, TRITON_CACHE_DIR=tmp)
            out = subprocess.run([sys.executable, "-m", "tests.gpu.kernel_build_probe", "--child", str(threads)],
                                 capture_output=True, text=True, env=env)  # fmt: skip
            if out.returncode:
                raise RuntimeError(out.stderr[-3000:])
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
