"""What a LoRA costs: merging it into the weights, taking it out, switching, and the job with it (GPU machine).

    python -m tests.gpu.lora_probe CHECKPOINT… [--rank 32] [--runs 5] [--out FILE]

For each checkpoint (loaded through the app's ModelManager: fp16 and CUDA graphs on a GPU) two random LoRAs of rank
``--rank`` are written for the layers a trainer's default covers (every attention projection and feed-forward layer
of the UNet, the text encoders' attention and MLP: tests/support/tiny_loras.py). Timed: a job at the native size
(20 Euler steps) without a LoRA; the same job's first run with ``<lora:a:1>`` (the merge included), the job with it
merged (steady state), with ``<lora:b:1>`` instead (a switch: restore, then merge), and without again (a restore);
and ``lora.activate`` alone for merge and restore. Records whether any UNet graph was captured again (it must not be:
the weights change in place) and the image difference the LoRA makes (it must make one).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.engine import lora
from modules.engine.loader import LoadOptions, ModelManager, select_device
from modules.engine.networks import Networks
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from tests.gpu import probe_cli
from tests.support.tiny_loras import TRAINED, write_lora


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def probe(path: Path, *, rank: int, runs: int, size: int | None = None, steps: int = 20) -> dict[str, Any]:
    """The figures of one checkpoint (see the module's docstring); ``size``/``steps`` shrink it for tests."""
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    model = ModelManager().get(CheckpointInfo(path, path.name), options)
    side = size or (1024 if model.model_type.is_sdxl else 512)
    folder = Path(tempfile.mkdtemp(prefix="loras-"))
    files = {name: write_lora(path, folder / f"{name}.safetensors", select=TRAINED, rank=rank, alpha=rank / 2)
             for name in ("a", "b")}  # fmt: skip
    library = lora.LoraLibrary(folder)

    def job(tag: str) -> tuple[float, np.ndarray]:
        request = GenerationRequest(
            prompt=f"a photo of a cat{tag}", steps=steps, width=side, height=side, seed=1, sampler_name="Euler"
        )
        _sync(device)
        start = time.perf_counter()
        image = generate(model, request, networks=Networks(loras=library)).images[0]
        _sync(device)
        return time.perf_counter() - start, np.asarray(image, dtype=np.int16)

    def median(tag: str) -> float:
        return statistics.median(job(tag)[0] for _ in range(runs))

    def activate(tags: list[lora.LoraTag]) -> float:
        _sync(device)
        start = time.perf_counter()
        lora.activate(model, tags, library)
        _sync(device)
        return time.perf_counter() - start

    job("")  # the size's graph and kernels
    plain_s = median("")
    graphs = getattr(model.components.unet.forward, "captured", None)
    _, plain_image = job("")
    first_s, lora_image = job("<lora:a:1>")
    merged_s = median("<lora:a:1>")
    switch_s = job("<lora:b:1>")[0]
    restore_job_s = job("")[0]
    merges, restores = [], []
    for _ in range(runs):  # from the original weights each time
        merges.append(activate([lora.LoraTag("a")]))
        restores.append(activate([]))
    return {
        "checkpoint": path.name,
        "device": device,
        "size": side,
        "rank": rank,
        "layers": len(lora.read_layers(files["a"])),
        "file_mb": round(files["a"].stat().st_size / 1e6, 1),
        "job_s": plain_s,
        "first_job_with_lora_s": first_s,
        "job_with_lora_s": merged_s,
        "switch_job_s": switch_s,
        "restore_job_s": restore_job_s,
        "merge_s": statistics.median(merges),
        "restore_s": statistics.median(restores),
        "graphs_before": graphs,
        "graphs_after": getattr(model.components.unet.forward, "captured", None),
        "lora_max_abs_pixel_diff": int(np.abs(lora_image - plain_image).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parse = probe_cli.parser(__doc__.splitlines()[0])
    parse.add_argument("--rank", type=int, default=32)
    args = parse.parse_args(argv)
    return probe_cli.report([probe(path, rank=args.rank, runs=args.runs) for path in args.checkpoints], args.out)


if __name__ == "__main__":
    raise SystemExit(main())
