"""Where the peak VRAM of an SD1.5 512² job goes: ours (graphs, eager) and plain diffusers (B), first and next job.

Run on the GPU machine: ``python -m tests.gpu.mem_probe CHECKPOINT [--out FILE]``. For each case: the peak reserved and
allocated bytes of the first job (it captures the graph) and of the next one, and after it the reserved bytes per
memory pool (the graphs' private pool apart from the general one). Ours runs with the allocator settings the engine
chooses (expandable segments on CUDA/Linux); B with PyTorch's defaults (as plain diffusers runs), then with ours;
then ours again after its weights went to RAM and back (``ours_after_ram_*``, the benchmark's order).

``--compile``: the ``--compile`` path instead (a new process, no B): the first job (eager graph, queues the compile),
what the background compile leaves allocated, then the job that captures the compiled graph and the next one, with
the pools after each (the compiled graph's private pool against the eager graph's).
"""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modules.engine import offload
from modules.engine.accel import disable_cuda_graphs, enable_cuda_graphs
from modules.engine.loader import LoadOptions, ModelManager, select_device, set_allocator_settings
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
from tests.gpu.bench import pools_gb, source_image
from tests.support.diffusers_reference import reference_pipeline

GB = 1e9


def peaks(job: Callable[[], object], runs: tuple[str, ...] = ("first", "second")) -> dict[str, object]:
    """Peak reserved / allocated GB of a first and a second run of ``job`` (cache emptied before each)."""
    out: dict[str, object] = {}
    for name in runs:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        job()
        torch.cuda.synchronize()
        out[name] = {
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / GB,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / GB,
        }
    out["pools_after_gb"] = pools_gb()
    out["allocated_after_gb"] = torch.cuda.memory_allocated() / GB
    return out


def baseline_peaks(name: str, pipe: Any, image: Any) -> dict[str, object]:
    """B's weights and the peaks of its txt2img and img2img jobs."""
    import diffusers

    i2i_pipe = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
    return {
        f"{name}_weights_gb": torch.cuda.memory_allocated() / GB,
        f"{name}_txt2img": peaks(lambda: pipe("a photo of a cat", num_inference_steps=20, guidance_scale=7)),
        f"{name}_img2img": peaks(
            lambda: i2i_pipe("a photo of a cat", image=image, strength=0.75, num_inference_steps=20, guidance_scale=7)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compile", action="store_true", help="the --compile path (eager graph, then compiled)")
    args = parser.parse_args()
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    path = args.checkpoint
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype, compile=args.compile)
    model = ModelManager().get(CheckpointInfo(path, path.name), options)
    image = source_image(512)
    t2i = GenerationRequest(prompt="a photo of a cat", steps=20, width=512, height=512, seed=1, sampler_name="Euler")
    i2i = GenerationRequest(
        prompt="a photo of a cat", steps=20, width=512, height=512, seed=1, sampler_name="Euler",
        init_images=(image,), denoising_strength=0.75,
    )  # fmt: skip
    results: dict[str, object] = {"weights_gb": torch.cuda.memory_allocated() / GB}
    if args.compile:
        results.update(compiled_peaks(model, t2i))
        write(results, args.out)
        return
    results["ours_graphs_txt2img"] = peaks(lambda: generate(model, t2i))
    results["ours_graphs_img2img"] = peaks(lambda: generate(model, i2i))
    disable_cuda_graphs(model.components.unet)
    results["ours_eager_txt2img"] = peaks(lambda: generate(model, t2i))
    results["ours_eager_img2img"] = peaks(lambda: generate(model, i2i))
    enable_cuda_graphs(model.components.unet)
    offload.release(model.components)
    torch.cuda.empty_cache()
    dtype, vae = model.components.unet.dtype, model.components.vae.dtype
    for settings, name in (("expandable_segments:False", "b"), ("expandable_segments:True", "b_expandable")):
        set_allocator_settings(settings)  # B as plain diffusers runs (default allocator), then with our setting
        results.update(baseline_peaks(name, reference_pipeline(path, device=device, dtype=dtype, vae_dtype=vae), image))
        gc.collect()
        torch.cuda.empty_cache()
    # Ours again after a round trip through RAM (what the benchmark does around B, and a RAM-cache switch back)
    offload.apply_mode(model.components, device, "full", cuda_graphs=True)
    results["ours_after_ram_weights_gb"] = torch.cuda.memory_allocated() / GB
    results["ours_after_ram_txt2img"] = peaks(lambda: generate(model, t2i))
    results["ours_after_ram_img2img"] = peaks(lambda: generate(model, i2i))
    write(results, args.out)


def compiled_peaks(model: Any, request: GenerationRequest) -> dict[str, object]:
    """The ``--compile`` path: eager-graph job, the background compile, then the compiled graph's jobs."""
    forward = model.components.unet.forward
    # one job: it queues the compile, which starts when the job ends (a second job would run beside it)
    out: dict[str, object] = {"compile_eager_graph_job": peaks(lambda: generate(model, request), ("first",))}
    out["compile_eager_graph_job"]["graphs"] = forward.captured
    finished = forward.compiler.wait(900)
    torch.cuda.synchronize()
    out["compile_finished"] = finished
    out["compile_s"] = max(forward.compiler.seconds.values(), default=None)
    out["after_compile_allocated_gb"] = torch.cuda.memory_allocated() / GB
    out["after_compile_pools_gb"] = pools_gb()
    torch.cuda.empty_cache()
    out["after_compile_empty_cache_pools_gb"] = pools_gb()
    out["compile_compiled_graph_jobs"] = peaks(lambda: generate(model, request))
    out["compile_compiled_graph_jobs"]["graphs"] = forward.captured
    return out


def write(results: dict[str, object], path: Path | None) -> None:
    text = json.dumps(results, indent=1)
    print(text)
    if path:
        path.write_text(text)


if __name__ == "__main__":
    main()
