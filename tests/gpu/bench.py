"""The project benchmark (spec/performance.md §8): workloads W1–W6 through our engine and plain diffusers.

Run on the GPU machine from the repository root::

    python -m tests.gpu.bench --out tests/gpu/results/bench-h100.json [--skip-sdxl] [--runs 10]

It writes full-size random-weight single-file checkpoints in the original LDM layout (SD1.5 ≈ 2.1 GB, SDXL ≈ 6.9 GB),
loads them through the app's ModelManager (the path the UI and API use) and times generation, then times the
baseline B: a plain ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` built from the same fp16 components
(SDPA, eager, prompt strings, default Euler scheduler). Every output is checked to be finite. On a CPU-only machine
``--tiny`` runs the same code on tiny checkpoints (a smoke test of the benchmark itself).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine import offload
from modules.engine.accel import disable_cuda_graphs, enable_cuda_graphs
from modules.engine.loader import (
    ALLOCATOR_SETTINGS,
    LoadedModel,
    LoadOptions,
    ModelManager,
    select_device,
    set_allocator_settings,
)
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest
from tests.support.diffusers_reference import reference_pipeline
from tests.support.tiny_checkpoints import write_checkpoint

logger = logging.getLogger("bench")

FLOP_PER_STEP = {"sd1": 1.607e12, "sdxl": 13.52e12}  # UNet with CFG (batch 2), performance.md §1
LIMIT_IT_S = {"sd1": 498.0, "sdxl": 59.2}  # UNet steps/s at 100 % of 800 TFLOP/s (performance.md §2b)
LIMIT_IMAGES_S = {"sd1": 23.0, "sdxl": 2.85}  # end-to-end images/s, 20 steps + VAE + text (§2b)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Run ``fn`` ``warmup`` times, then return ``runs`` wall times (synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


def _peak_gb() -> float:
    return torch.cuda.max_memory_reserved() / 1e9 if torch.cuda.is_available() else 0.0


def _peak_allocated_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


def pools_gb() -> dict[str, Any]:
    """Reserved GB per memory pool (``general``; a CUDA graph's private pool by its id), with ``allocated``.

    ``held_free`` lists the general pool's segments that keep free memory reserved after ``empty_cache`` (largest
    first: total and allocated GB, expandable or not), which is what fragments what a job can use.
    """
    if not torch.cuda.is_available():
        return {}
    sizes: dict[str, Any] = defaultdict(float)
    held = []
    for segment in torch.cuda.memory_snapshot():
        pool = segment.get("segment_pool_id") or (0, 0)
        general = tuple(pool) == (0, 0)
        sizes["general" if general else str(tuple(pool))] += segment["total_size"] / 1e9
        free = segment["total_size"] - segment["allocated_size"]
        if general and free > 0:
            held.append((free, segment["total_size"], segment["allocated_size"], segment.get("is_expandable")))
    sizes["allocated"] = torch.cuda.memory_allocated() / 1e9
    held.sort(reverse=True)
    sizes["held_free"] = [
        {"free": f / 1e9, "total": t / 1e9, "allocated": a / 1e9, "expandable": e} for f, t, a, e in held[:8]
    ]
    return dict(sizes)


def _reset_peak() -> float:
    """Start a peak measurement: what earlier workloads left is collected and given back first.

    Returns what is still reserved then (GB): a peak reserved above it was reserved by the workload itself, the rest
    was held from before (that is how W4's 0.46 GB held in B's segments showed up, ``_reference``).
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_reserved() / 1e9
    return 0.0


def engine_workload(model: LoadedModel, size: int, batch: int, warmup: int, runs: int) -> dict[str, float]:
    """Our engine: e2e s/image for 20 steps, UNet it/s from the 20- vs 2-step difference."""

    def job(steps: int) -> Callable[[], None]:
        req = GenerationRequest(
            prompt="a photo of a cat",
            steps=steps,
            width=size,
            height=size,
            batch_size=batch,
            seed=1,
            sampler_name="Euler",
            cfg_scale=7.0,
        )

        def run() -> None:
            res = generate(model, req, GenerationOptions())
            assert all(np.isfinite(np.asarray(im, dtype=np.float32)).all() for im in res.images)

        return run

    _reset_peak()
    t20 = statistics.median(timed(job(20), warmup, runs))
    t2 = statistics.median(timed(job(2), 1, max(3, runs // 2)))
    return _summary(t20, t2, batch, model.model_type.value)


def graphs_vs_eager(model: LoadedModel, size: int) -> dict[str, float]:
    """Max pixel difference between the CUDA-graph path and the eager UNet for the same job (0 = identical)."""
    req = GenerationRequest(prompt="a photo of a cat", steps=20, width=size, height=size, seed=3, sampler_name="Euler")
    graphed = np.asarray(generate(model, req).images[0], dtype=np.int16)
    disable_cuda_graphs(model.components.unet)
    try:
        eager = np.asarray(generate(model, req).images[0], dtype=np.int16)
    finally:
        enable_cuda_graphs(model.components.unet)
    diff = np.abs(graphed - eager)
    return {"max_abs_pixel_diff": float(diff.max()), "mean_abs_pixel_diff": float(diff.mean())}


def baseline_workload(model: LoadedModel, size: int, batch: int, warmup: int, runs: int) -> dict[str, float]:
    """Plain diffusers (B): the same file loaded into diffusers' own models and standard pipeline, eager.

    Our model waits in RAM meanwhile, so B's peak VRAM is its own.
    """
    with _reference(model) as box:
        return _baseline(box[0], model, size, batch, warmup, runs)


@contextlib.contextmanager
def _reference(model: LoadedModel) -> Iterator[list[Any]]:
    """B's pipeline for ``model``'s file (as ``box[0]``), with our model in RAM until B is dropped.

    B runs with PyTorch's default allocator settings, as plain diffusers does (our engine turns expandable segments on:
    engine/loader.py ``configure_allocator``). The pipeline comes in a box that is emptied on exit: a caller's own
    name for it would keep B alive while our weights go back to the GPU, and then they landed in the free space of
    B's segments, made without expandable segments, which ``empty_cache`` cannot give back while one of our tensors
    lives in them (0.46 GB held in 30 MB segments at W4's start, its peak 3.62 GB against 3.16 GB alone). Callers
    must not keep the pipeline, or anything made from it, past the block.
    """
    offload.release(model.components)
    _free()
    ours = torch.cuda.memory_allocated()
    expandable = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") == ALLOCATOR_SETTINGS
    if expandable:
        set_allocator_settings("expandable_segments:False")
    dtype, vae_dtype = model.components.unet.dtype, model.components.vae.dtype
    pipe = reference_pipeline(
        Path(model.checkpoint.filename),
        device=model.device,
        dtype=dtype,
        # plain diffusers runs one dtype (its pipelines hand the UNet's latents to the VAE as they are): with --bf16
        # the VAE too is bfloat16 (ours keeps float16 and converts); a float32 VAE (--no-half-vae) stays float32
        vae_dtype=vae_dtype if vae_dtype == torch.float32 else dtype,
    )
    box = [pipe]
    del pipe
    try:
        yield box
    finally:
        box.clear()
        _free()
        left = (torch.cuda.memory_allocated() - ours) / 1e9
        if left > 0.05:
            logger.warning("B's pipeline is still referenced: %.2f GB of it stays allocated", left)
        if expandable:
            set_allocator_settings(ALLOCATOR_SETTINGS)
        offload.apply_mode(model.components, model.device, "full", cuda_graphs=True)


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _baseline(pipe: Any, model: LoadedModel, size: int, batch: int, warmup: int, runs: int) -> dict[str, float]:
    def job(steps: int) -> Callable[[], None]:
        def run() -> None:
            out = pipe(
                ["a photo of a cat"] * batch,
                num_inference_steps=steps,
                guidance_scale=7.0,
                height=size,
                width=size,
                output_type="np",
            )
            assert np.isfinite(out.images).all()

        return run

    _reset_peak()
    t20 = statistics.median(timed(job(20), warmup, runs))
    t2 = statistics.median(timed(job(2), 1, max(3, runs // 2)))
    return _summary(t20, t2, batch, model.model_type.value)


def _summary(t20: float, t2: float, batch: int, kind: str) -> dict[str, float]:
    it_s = 18.0 / max(t20 - t2, 1e-9)
    family = "sdxl" if kind.startswith("sdxl") else "sd1"
    return {
        "e2e_s": t20,
        "s_per_image": t20 / batch,
        "images_per_s": batch / t20,
        "unet_it_s": it_s,
        "tflops": it_s * FLOP_PER_STEP[family] * batch / 1e12,
        "pct_of_limit": 100.0 * it_s * batch / LIMIT_IT_S[family],  # the UNet's share of the FLOP limit
        "e2e_pct_of_limit": 100.0 * batch / t20 / LIMIT_IMAGES_S[family],  # images/s against the e2e limit (W2)
        "peak_reserved_gb": _peak_gb(),
        "peak_allocated_gb": _peak_allocated_gb(),
    }


def source_image(size: int) -> Image.Image:
    """A smooth, deterministic RGB test picture for img2img (W4)."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def img2img_workload(model: LoadedModel, size: int, warmup: int, runs: int) -> dict[str, float]:
    """W4: img2img at strength 0.75 (15 of 20 steps run), e2e s/image including the VAE encode; ours and B."""
    image = source_image(size)
    req = GenerationRequest(
        prompt="a photo of a cat", steps=20, width=size, height=size, seed=1, sampler_name="Euler",
        cfg_scale=7.0, init_images=(image,), denoising_strength=0.75,
    )  # fmt: skip

    def ours() -> None:
        res = generate(model, req, GenerationOptions())
        assert all(np.isfinite(np.asarray(im, dtype=np.float32)).all() for im in res.images)

    held = _reset_peak()
    entry = {
        "engine_reserved_at_start_gb": held,
        "engine_pools_at_start_gb": pools_gb(),
        "engine_e2e_s": statistics.median(timed(ours, warmup, runs)),
        "engine_peak_reserved_gb": _peak_gb(),
        "engine_peak_allocated_gb": _peak_allocated_gb(),
    }
    with _reference(model) as box:
        entry.update({f"baseline_{k}": v for k, v in _baseline_img2img(box[0], size, warmup, runs).items()})
    entry["ratio"] = entry["baseline_e2e_s"] / entry["engine_e2e_s"]
    return entry


def _baseline_img2img(pipe: Any, size: int, warmup: int, runs: int) -> dict[str, Any]:
    """W4 through B: diffusers' ``AutoPipelineForImage2Image`` made from ``pipe`` (sharing its components)."""
    import diffusers

    image = source_image(size)
    i2i = [diffusers.AutoPipelineForImage2Image.from_pipe(pipe)]  # emptied below, before _reference's exit

    def base() -> None:
        out = i2i[0]("a photo of a cat", image=image, strength=0.75, num_inference_steps=20, guidance_scale=7.0,
                  output_type="np")  # fmt: skip
        assert np.isfinite(out.images).all()

    entry: dict[str, Any] = {"reserved_at_start_gb": _reset_peak(), "pools_at_start_gb": pools_gb()}
    entry["e2e_s"] = statistics.median(timed(base, warmup, runs))
    entry["peak_reserved_gb"] = _peak_gb()
    entry["peak_allocated_gb"] = _peak_allocated_gb()
    i2i.clear()  # B's components: dropped before ours go back (_reference)
    return entry


def resolution_change(model: LoadedModel, size: int) -> dict[str, float]:
    """W6's resolution change: the first job at a new size (a new graph is captured) and the second one."""
    req = GenerationRequest(prompt="x", steps=20, width=size + size // 2, height=size, seed=1, sampler_name="Euler")
    times = []
    for _ in range(2):
        _sync()
        start = time.perf_counter()
        generate(model, req)
        _sync()
        times.append(time.perf_counter() - start)
    return {"size": f"{req.width}x{req.height}", "first_job_s": times[0], "second_job_s": times[1]}


def drop_from_page_cache(path: Path) -> bool:
    """Ask the kernel to forget the file's cached pages (Linux ``posix_fadvise``); False where that is unavailable."""
    if not hasattr(os, "posix_fadvise"):
        return False
    with path.open("rb") as fh:
        os.fsync(fh.fileno())  # pages still being written back cannot be dropped
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def read_bandwidth(path: Path) -> float:
    """Seconds to read the whole file once (the disk / page-cache floor of W5)."""
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        while fh.read(64 << 20):
            pass
    return time.perf_counter() - t0


def first_image_seconds(
    path: Path, size: int, *, compile: bool = False, triton_cache: Path | None = None
) -> dict[str, float]:
    """W6: wall time from a new process start to its first image (our engine, warm page cache), with its phases.

    The process shares this one's Triton kernel cache (``TRITON_CACHE_DIR``), as a restart shares the last run's;
    ``triton_cache``: another one (a new, empty directory: the first start after an install builds every kernel).
    """
    code = (
        "import time,sys,json; t0=time.perf_counter(); from pathlib import Path;"
        "from modules.engine.loader import ModelManager, LoadOptions, select_device;"
        "from modules.engine.pipeline import generate; from modules.engine.types import *; import torch;"
        "t_import=time.perf_counter()-t0;"
        "d,dt,vd=select_device(use_cpu_all=False,device_id=None,no_half=False,no_half_vae=False,precision='autocast');"
        f"p=Path({str(path)!r});"
        f"m=ModelManager().get(CheckpointInfo(p,p.name),LoadOptions(device=d,dtype=dt,vae_dtype=vd,compile={compile}));"
        "torch.cuda.synchronize() if torch.cuda.is_available() else None; t_load=time.perf_counter()-t0;"
        f"r=GenerationRequest(prompt='x',steps=20,width={size},height={size},seed=1,sampler_name='Euler');"
        "generate(m,r); t_first=time.perf_counter()-t0; t1=time.perf_counter(); generate(m,r);"
        "t_second=time.perf_counter()-t1; c=getattr(m.components.unet.forward,'compiler',None);"
        "ready=None\nif c is not None: c.wait(600); ready=time.perf_counter()-t0\n"
        "print(json.dumps(dict(import_s=t_import,load_done_s=t_load,first_image_s=t_first,second_image_s=t_second,"
        "compiled_ready_s=ready)))"
    )
    t0 = time.perf_counter()
    env = dict(os.environ) if triton_cache is None else dict(os.environ, TRITON_CACHE_DIR=str(triton_cache))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"W6 subprocess failed: {out.stderr[-3000:]}")
    phases = json.loads(out.stdout.strip().splitlines()[-1])
    phases["process_wall_s"] = time.perf_counter() - t0
    logger.info("W6 (compile=%s): %s", compile, phases)
    return phases


def compiled_workload(
    manager: ModelManager, info: CheckpointInfo, opts: LoadOptions, size: int, runs: int, *, batch8: bool = False
) -> dict:
    """``--compile``: load with compile on, let the background compile finish, then time the compiled graphs.

    With ``batch8`` also W2: a batch-8 job (a new UNet batch, so a second compile in the background), then its
    timings once that compile has finished (``b8``, with its compile's seconds and the graphs replayed).
    """
    model = manager.get(info, replace(opts, compile=True))
    pools_at_start = pools_gb()  # nothing of B + reduce-overhead may be left here (release_compiled_baseline)
    req = GenerationRequest(prompt="a photo of a cat", steps=20, width=size, height=size, seed=3, sampler_name="Euler")
    eager_image = np.asarray(generate(model, req).images[0], dtype=np.int16)  # starts the compile
    compiler = model.components.unet.forward.compiler
    t0 = time.perf_counter()
    finished = compiler.wait(900)
    waited = time.perf_counter() - t0
    compiled_image = np.asarray(generate(model, req).images[0], dtype=np.int16)
    forward = model.components.unet.forward
    if forward.failed or "compiled" not in forward.captured:
        logger.error("compiled UNet not replayed (graphs %s, capture failed: %s)", forward.captured, forward.failed)
    entry = {
        "compile_finished": finished,
        "graphs": forward.captured,  # "compiled" when the timings below are the compiled UNet's
        "graph_capture_failed": forward.failed,
        "compile_s": max(compiler.seconds.values(), default=None),
        "waited_after_first_job_s": waited,
        "max_abs_pixel_diff_vs_eager": float(np.abs(compiled_image - eager_image).max()),
        "mean_abs_pixel_diff_vs_eager": float(np.abs(compiled_image - eager_image).mean()),
        "b1": engine_workload(model, size, 1, 2, runs),
        "pools_at_start_gb": pools_at_start,
        "pools_after_b1_gb": pools_gb(),
    }
    if batch8:
        generate(model, replace(req, batch_size=8))  # the batch's eager graph; queues its compile
        finished = compiler.wait(900)
        generate(model, replace(req, batch_size=8))
        entry["b8"] = engine_workload(model, size, 8, 1, max(3, runs // 3))
        entry["b8"].update(
            compile_finished=finished, graphs=list(forward.captured), compile_s=max(compiler.seconds.values())
        )
    manager.unload()
    return entry


def reduce_overhead(forward: Callable[..., Any]) -> Callable[..., Any]:
    """The anchor's one line (performance.md): inductor's kernels replayed in its CUDA-graph trees."""
    return torch.compile(forward, mode="reduce-overhead", fullgraph=True)


def baseline_compiled(
    model: LoadedModel,
    size: int,
    runs: int,
    *,
    batch8: bool,
    warmup: int = 2,
    compile_unet: Callable[[Callable[..., Any]], Callable[..., Any]] = reduce_overhead,
) -> dict[str, dict[str, Any]]:
    """B + ``torch.compile(mode="reduce-overhead")`` of a channels_last UNet: W1, W4 (img2img, the same UNet shapes)
    and with ``batch8`` W2 (a new batch: a second compile), keyed like the workloads' entries. ``warmup`` jobs follow
    each compile (the graph trees record in them); W4 and W2 take fewer timed runs than W1, as ours do."""
    with _reference(model) as box:
        unet = box[0].unet
        unet.to(memory_format=torch.channels_last)
        unet.forward = compile_unet(type(unet).forward.__get__(unet))
        del unet
        out = {"W_b1": _baseline_compiled(box[0], model, size, 1, warmup, runs)}
        out["W4_img2img"] = _baseline_img2img(box[0], size, warmup, max(min(3, runs), runs // 2))
        if batch8:
            out["W2_b8"] = _baseline_compiled(box[0], model, size, 8, warmup, max(min(3, runs), runs // 3))
        return out


def release_compiled_baseline() -> None:
    """Drop what B + reduce-overhead leaves in the process: inductor's CUDA-graph trees live in a process-wide manager,
    so their private memory pools (one per batch; W2's holds UNet-batch-16 activations) stay reserved after B's
    pipeline is gone, and a later figure of ours would count them. ``torch._dynamo.reset`` frees the trees (and
    dynamo's in-memory caches; inductor's on-disk cache stays), ``empty_cache`` gives the pools back.
    """
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _baseline_compiled(
    pipe: Any, model: LoadedModel, size: int, batch: int, warmup: int, runs: int
) -> dict[str, float]:
    """The first job (2 steps) compiles: its time is the compile time; then B's timings after ``warmup`` jobs."""
    t0 = time.perf_counter()
    pipe(["a photo of a cat"] * batch, num_inference_steps=2, height=size, width=size, output_type="np")
    _sync()
    compile_s = time.perf_counter() - t0
    return {"compile_s": compile_s, **_baseline(pipe, model, size, batch, warmup, runs)}


def add_ratios(entry: dict[str, Any]) -> None:
    """Each of our figures as a ratio to B and to B + reduce-overhead where both ran (>1: ours faster).

    ``ratios`` in W1 and W2: e2e time and UNet it/s, ours (``engine``, ``engine_compiled``) against each baseline;
    W4 gets ``ratio_vs_baseline_reduce_overhead`` beside its ``ratio``.
    """
    for key in ("W_b1", "W2_b8"):
        work = entry.get(key)
        if not work:
            continue
        compiled = ((entry.get("W_b1") or {}).get("engine_compiled") or {}).get("b1" if key == "W_b1" else "b8")
        ours = {"engine": work.get("engine"), "engine_compiled": compiled}
        ratios = {}
        for name, figures in ours.items():
            for base in ("baseline", "baseline_reduce_overhead"):
                if figures and work.get(base):
                    ratios[f"{name}_vs_{base}"] = {
                        "e2e": work[base]["e2e_s"] / figures["e2e_s"],
                        "unet_it_s": figures["unet_it_s"] / work[base]["unet_it_s"],
                    }
        work["ratios"] = ratios
    w4 = entry.get("W4_img2img") or {}
    if "baseline_reduce_overhead" in w4:
        w4["ratio_vs_baseline_reduce_overhead"] = w4["baseline_reduce_overhead"]["e2e_s"] / w4["engine_e2e_s"]


def load_workload(manager: ModelManager, info: CheckpointInfo, opts: LoadOptions) -> tuple[LoadedModel, dict]:
    """W5 load: from a file dropped from the page cache (where the OS lets us), with the plain read times beside it."""
    path = Path(info.filename)
    cold = drop_from_page_cache(path)
    cold_read_s = read_bandwidth(path) if cold else None
    cold = cold and drop_from_page_cache(path)
    t0 = time.perf_counter()
    model = manager.get(info, opts)
    _sync()
    load_s = time.perf_counter() - t0
    entry: dict[str, Any] = {
        "file_gb": path.stat().st_size / 1e9,
        "cold_read_s": cold_read_s,
        "cold_load_s": load_s if cold else None,
        "cold_target_s": 1.3 * cold_read_s + 0.3 if cold_read_s is not None else None,
        "read_s": read_bandwidth(path),  # warm: now in the page cache
    }
    if not cold:
        entry["load_s"] = load_s
    return model, entry


def switch_workload(manager: ModelManager, paths: dict[str, Path], opts: LoadOptions) -> dict[str, Any]:
    """W5 warm switch (both files in the page cache): reload with limit 1, then with the other model kept (limit 2)."""
    out: dict[str, Any] = {}
    for limit, order, key in ((1, ("sd1", "sdxl", "sd1"), "W5_switch_s"),
                              (2, ("sdxl", "sd1", "sdxl", "sd1"), "W5_switch_ram_cache_s")):  # fmt: skip
        manager.limit = limit  # sd_checkpoints_limit 2: the model switched away from stays in VRAM or RAM
        times = []
        for kind in order:
            t0 = time.perf_counter()
            manager.get(CheckpointInfo(paths[kind], paths[kind].name), opts)
            _sync()
            times.append((kind, time.perf_counter() - t0))
        out[key] = times if limit == 1 else times[1:]  # with limit 2 the first get loads sdxl from the file
    manager.limit = 1
    return out


def _checkpoint(kind: str, workdir: Path, checkpoint_dir: Path | None, size: str) -> Path:
    """``checkpoint_dir/<kind>.safetensors`` when it exists, else a new random-weight one written to ``workdir``."""
    existing = checkpoint_dir / f"{kind}.safetensors" if checkpoint_dir is not None else None
    if existing is not None and existing.is_file():
        return existing
    return write_checkpoint(kind, workdir / f"{kind}.safetensors", size=size, write_yaml=False)


def model_workloads(
    manager: ModelManager,
    info: CheckpointInfo,
    opts: LoadOptions,
    size: int,
    warmup: int,
    runs: int,
    *,
    compile: bool,
) -> dict[str, Any]:
    """One checkpoint's workloads: W5 load, W1 and W4 (ours, B, with ``compile`` B + compile and our compiled
    path), and for SD1.5 W6's resolution change and W2 (batch 8)."""
    model, entry = load_workload(manager, info, opts)
    sd1 = not model.model_type.is_sdxl
    if torch.cuda.is_available():
        entry["graphs_vs_eager"] = graphs_vs_eager(model, size)
    entry["W_b1"] = {
        "engine": engine_workload(model, size, 1, warmup, runs),
        "baseline": baseline_workload(model, size, 1, warmup, runs),
    }
    entry["W4_img2img"] = img2img_workload(model, size, min(warmup, 1), max(3, runs // 2))
    if sd1:
        entry["W6_resolution_change"] = resolution_change(model, size)
        entry["W2_b8"] = {
            "engine": engine_workload(model, size, 8, 1, max(3, runs // 3)),
            "baseline": baseline_workload(model, size, 8, 1, max(3, runs // 3)),
        }
    if compile:
        for key, figures in baseline_compiled(model, size, runs, batch8=sd1).items():
            entry[key]["baseline_reduce_overhead"] = figures
        release_compiled_baseline()
    del model
    if compile:
        entry["W_b1"]["engine_compiled"] = compiled_workload(manager, info, opts, size, runs, batch8=sd1)
    add_ratios(entry)
    return entry


def run(
    workdir: Path,
    *,
    tiny: bool,
    skip_sdxl: bool,
    runs: int,
    warmup: int,
    compile: bool = False,
    checkpoint_dir: Path | None = None,
    bf16: bool = False,
    skip_sd1: bool = False,
) -> dict[str, Any]:
    """Write the checkpoints (or take ``sd1``/``sdxl.safetensors`` from ``checkpoint_dir``), run every workload.

    With ``bf16`` (the app's ``--bf16``) our UNet and text encoders run in bfloat16, and so do B's.
    """
    device, dtype, vae_dtype = select_device(
        use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast", bf16=bf16
    )
    opts = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "dtype": dtype,
        "runs": runs,
        "warmup": warmup,
    }
    kinds = ([] if skip_sd1 else [("sd1", 64 if tiny else 512)]) + (
        [] if skip_sdxl else [("sdxl", 64 if tiny else 1024)]
    )
    if not kinds:
        raise ValueError("nothing to run: both --skip-sd1 and --skip-sdxl")
    paths = {kind: _checkpoint(kind, workdir, checkpoint_dir, "tiny" if tiny else "full") for kind, _ in kinds}
    manager = ModelManager()
    for kind, size in kinds:
        entry = model_workloads(manager, CheckpointInfo(paths[kind], paths[kind].name), opts, size, warmup, runs,
                                compile=compile)  # fmt: skip
        results[kind] = entry
        logger.info("%s: %s", kind, json.dumps(entry, indent=1))
    if len(kinds) == 2:
        results.update(switch_workload(manager, paths, opts))
    manager.unload()
    if "sd1" in paths:  # W6 is SD1.5's
        results["W6_first_image"] = first_image_seconds(paths["sd1"], kinds[0][1])
        results["W6_first_image_new_install"] = first_image_seconds(
            paths["sd1"], kinds[0][1], triton_cache=workdir / "triton-new-install"
        )
        if compile:  # a second process: inductor's cache is now warm (same TORCHINDUCTOR_CACHE_DIR)
            results["W6_first_image_compile_warm_cache"] = first_image_seconds(paths["sd1"], kinds[0][1], compile=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (a CPU smoke test of the benchmark)")
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--skip-sd1", action="store_true", help="SDXL only (its --compile run fits one device call)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also the --compile path and diffusers + compile")
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="use sd1.safetensors / sdxl.safetensors from here if present"
    )
    parser.add_argument("--bf16", action="store_true", help="UNet and text encoders in bfloat16 (ours and B's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor"))
        # one Triton cache from the start (as the app's, context.set_kernel_cache_dirs): inductor would otherwise move
        # it mid-run, and W6's new processes would build again the kernels this one built before the move
        os.environ.setdefault("TRITON_CACHE_DIR", str(Path(tmp) / "triton"))
        results = run(
            Path(tmp),
            tiny=args.tiny,
            skip_sdxl=args.skip_sdxl,
            runs=args.runs,
            warmup=args.warmup,
            compile=args.compile,
            checkpoint_dir=args.checkpoint_dir,
            bf16=args.bf16,
            skip_sd1=args.skip_sd1,
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
