"""Time scaled_dot_product_attention per backend on the UNets' attention shapes (fp16, CUDA).

Run on the GPU machine: ``python -m tests.gpu.attn_probe --out results.json``. SD1.5's heads are 40/80/160 wide
(8 heads); flash attention pads 40 to 64. SDXL's are 64 wide. Self-attention over the latent pixels, cross-attention
over 77 text tokens, batch 2 (CFG). A whole UNet step per backend priority: ``tests.gpu.unet_profile --variants``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
# (name, heads, query tokens, key tokens, head dim)
SHAPES = [
    ("sd1 64x64 self", 8, 4096, 4096, 40),
    ("sd1 64x64 cross", 8, 4096, 77, 40),
    ("sd1 32x32 self", 8, 1024, 1024, 80),
    ("sd1 16x16 self", 8, 256, 256, 160),
    ("sd1 8x8 self", 8, 64, 64, 160),
    ("sdxl 64x64 self", 10, 4096, 4096, 64),
    ("sdxl 64x64 cross", 10, 4096, 77, 64),
    ("sdxl 32x32 self", 20, 1024, 1024, 64),
    ("sdxl 32x32 cross", 20, 1024, 77, 64),
]


def _time(fn: Any, runs: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def probe_shapes() -> dict[str, dict[str, float | str]]:
    """Microseconds per call for each shape and backend (or the error a backend gave)."""
    out: dict[str, dict[str, float | str]] = {}
    for name, heads, nq, nk, dim in SHAPES:
        q = torch.randn(2, heads, nq, dim, device="cuda", dtype=torch.float16)
        k = torch.randn(2, heads, nk, dim, device="cuda", dtype=torch.float16)
        v = torch.randn(2, heads, nk, dim, device="cuda", dtype=torch.float16)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        row: dict[str, float | str] = {}
        for label, backend in BACKENDS.items():
            try:
                with sdpa_kernel([backend]):
                    got = F.scaled_dot_product_attention(q, k, v)
                    row[label + "_us"] = _time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                row[label + "_max_err"] = float((got.float() - ref).abs().max())
            except RuntimeError as error:
                row[label + "_us"] = str(error).splitlines()[0][:120]
        out[name] = row
        print(name, row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["sdpa"] = probe_shapes()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
