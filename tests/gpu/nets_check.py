"""Our networks against diffusers/transformers on CUDA, full size, fp16: same file, same inputs, max differences.

Run on the GPU machine: ``python -m tests.gpu.nets_check CHECKPOINT [CHECKPOINT…] --out results.json``. For each
file: the app's load (own UNet/VAE/CLIP) and the reference models of the same file, then one UNet call (batch 2,
CFG-sized), a VAE decode and encode, and each text encoder on a real prompt, in fp16; and the UNet step time of both
under the same conditions (eager, no CUDA graphs) so the networks themselves are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from modules.engine.accel import disable_cuda_graphs
from modules.engine.loader import LoadOptions, load_checkpoint
from modules.engine.types import CheckpointInfo
from tests.support.diffusers_reference import reference_pipeline

PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 593, 320, 1901, 3720, 267, 3105, 49407]


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.float(), b.float()
    return {
        "max_abs": float((a - b).abs().max()),
        "mean_abs": float((a - b).abs().mean()),
        "ref_max_abs": float(b.abs().max()),
        "finite": bool(torch.isfinite(a).all()),
    }


def _time(fn: Any, runs: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check(path: Path) -> dict[str, Any]:
    """Compare one checkpoint's networks (see the module docstring)."""
    options = LoadOptions(device="cuda", dtype="float16", vae_dtype="float16", cuda_graphs=False)
    model = load_checkpoint(CheckpointInfo(path, path.name), options)
    disable_cuda_graphs(model.components.unet)
    ref = reference_pipeline(path, device="cuda", dtype=torch.float16, vae_dtype=torch.float16)
    parts, sdxl = model.components, model.model_type.is_sdxl
    size = 128 if sdxl else 64
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, parts.unet.config.in_channels, size, size, generator=gen, device="cuda", dtype=torch.float16)
    ctx_dim = parts.unet.config.cross_attention_dim
    ctx = torch.randn(2, 77, ctx_dim, generator=gen, device="cuda", dtype=torch.float16)
    t = torch.tensor([800.0, 800.0], device="cuda")
    added = None
    if sdxl:
        pooled = torch.randn(2, 1280, generator=gen, device="cuda", dtype=torch.float16)
        ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2, device="cuda", dtype=torch.float16)
        added = {"text_embeds": pooled, "time_ids": ids}
    out: dict[str, Any] = {"model_type": model.model_type.value}
    with torch.inference_mode():
        ours = parts.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        theirs = ref.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        out["unet"] = _diff(ours, theirs)
        out["unet_eager_step_s"] = {
            "ours": _time(lambda: parts.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added)),
            "diffusers": _time(lambda: ref.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added)),
        }
        z = torch.randn(1, 4, size, size, generator=gen, device="cuda", dtype=torch.float16)
        out["vae_decode"] = _diff(parts.vae.decode(z).sample, ref.vae.decode(z).sample)
        pixels = parts.vae.decode(z).sample.clamp(-1, 1)
        out["vae_encode_mean"] = _diff(
            parts.vae.encode(pixels).latent_dist.mean, ref.vae.encode(pixels).latent_dist.mean
        )
        out["vae_decode_s"] = {
            "ours": _time(lambda: parts.vae.decode(z), 3),
            "diffusers": _time(lambda: ref.vae.decode(z), 3),
        }
        ids = torch.tensor([PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS))], device="cuda")
        for name in ("text_encoder", "text_encoder_2"):
            mine, other = getattr(parts, name), getattr(ref, name, None)
            if mine is None or other is None:
                continue
            a = mine(ids, output_hidden_states=True)
            b = other(input_ids=ids, output_hidden_states=True)
            out[name] = {
                "penultimate": _diff(a.hidden_states[-2], b.hidden_states[-2]),
                "last": _diff(a.last_hidden_state, b.last_hidden_state),
            }
            if a.text_embeds is not None:
                out[name]["text_embeds"] = _diff(a.text_embeds, b.text_embeds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for path in args.checkpoints:
        results[path.name] = check(path)
        print(json.dumps({path.name: results[path.name]}, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
