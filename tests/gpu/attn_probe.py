"""Time scaled_dot_product_attention per backend on the UNets' attention shapes (fp16, CUDA).

Run on the GPU machine: ``python -m tests.gpu.attn_probe --out results.json``. SD1.5's heads are 40/80/160 wide
(8 heads); flash attention pads 40 to 64. SDXL's are 64 wide. Self-attention over the latent pixels, cross-attention
over 77 text tokens, batch 2 (CFG). Also one whole UNet step of SD1.5/SDXL-sized random UNets per backend order when
checkpoints are given (``--sd1``, ``--sdxl``).
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


def probe_unet(path: Path) -> dict[str, float]:
    """Milliseconds per CFG step (graph replay) of the loaded UNet with each backend order first."""
    from modules.engine.loader import LoadOptions, load_checkpoint
    from modules.engine.types import CheckpointInfo

    model = load_checkpoint(CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16"))
    unet, sdxl = model.components.unet, model.model_type.is_sdxl
    size = 128 if sdxl else 64
    x = torch.randn(2, 4, size, size, device="cuda", dtype=torch.float16)
    if not sdxl:
        x = x.to(memory_format=torch.channels_last)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device="cuda", dtype=torch.float16)
    t = torch.tensor([500.0, 500.0], device="cuda")
    added = None
    if sdxl:
        ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2, device="cuda", dtype=torch.float16)
        added = {"text_embeds": torch.randn(2, 1280, device="cuda", dtype=torch.float16), "time_ids": ids}
    out = {}
    for label, backend in BACKENDS.items():
        order = [backend, *[b for b in BACKENDS.values() if b is not backend]]
        with torch.inference_mode(), sdpa_kernel(order, set_priority=True):
            unet.forward.clear()  # a fresh graph captured with this priority
            out[label + "_first_ms"] = (
                _time(lambda: unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added), 30) / 1000
            )
    print(path.name, out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sd1", type=Path)
    parser.add_argument("--sdxl", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["sdpa"] = probe_shapes()
    for name in ("sd1", "sdxl"):
        path = getattr(args, name)
        if path is not None:
            results[name + "_unet_step"] = probe_unet(path)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
