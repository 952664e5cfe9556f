import pytest

torch = pytest.importorskip("torch")


@pytest.mark.gpu
def test_sd15_full_size_fp16_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tests.gpu.sd15_smoke import run

    results = run(tmp_path, runs=2)
    assert results["Euler"]["median_s"] > 0


@pytest.mark.gpu
def test_compiled_unet_takes_over_from_the_eager_graph_on_cuda(tmp_path):
    """--compile on a tiny SD1 checkpoint: the first job replays the eager graph and queues a compile; once it has
    finished, the next job captures and replays the compiled UNet (its capture once failed in PyTorch's allocator,
    when the size's eager graph, the last in its pool, was dropped first)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import numpy as np

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate
    from modules.engine.types import CheckpointInfo, GenerationRequest
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    options = LoadOptions(device="cuda", dtype="float16", vae_dtype="float32", compile=True)
    model = ModelManager().get(CheckpointInfo(path, path.name), options)
    request = GenerationRequest(prompt="a cat", steps=4, width=64, height=64, seed=7, sampler_name="Euler")
    eager = np.asarray(generate(model, request).images[0], dtype=np.int16)
    forward = model.components.unet.forward
    assert forward.captured == ["eager"]
    assert forward.compiler.wait(timeout=600)
    compiled = np.asarray(generate(model, request).images[0], dtype=np.int16)
    assert not forward.failed and forward.captured == ["compiled"]
    assert np.abs(compiled - eager).mean() < 2.0


@pytest.mark.gpu
def test_graph_captures_of_new_sizes_leave_no_memory_behind(tmp_path):
    """cuBLAS keeps a workspace (32 MiB on Hopper) for every stream it has run a matmul on, for the life of the
    process. Each capture's warm-up used to run on a new stream, so every new size left one behind (and the first
    capture's workspace pinned its graph pool); captures now share one stream (engine/streams.py)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import gc

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate
    from modules.engine.types import CheckpointInfo, GenerationRequest
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    options = LoadOptions(device="cuda", dtype="float16", vae_dtype="float32")
    model = ModelManager().get(CheckpointInfo(path, path.name), options)
    forward = model.components.unet.forward

    def job(width: int, height: int) -> None:
        request = GenerationRequest(prompt="a cat", steps=2, width=width, height=height, seed=1, sampler_name="Euler")
        generate(model, request)
        assert forward.captured == ["eager"] and not forward.failed  # the job replayed a graph of its own size
        forward.clear()
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()

    job(64, 64)  # the first capture: the capture stream's workspace is made here, once
    before = torch.cuda.memory_allocated()
    for width, height in ((64, 96), (96, 64), (128, 64)):
        job(width, height)
    assert torch.cuda.memory_allocated() - before < 1 << 20


@pytest.mark.gpu
def test_a_cuda_load_returns_with_tritons_hash_computed_once(tmp_path):
    """In a new process the load waits for the Triton hash thread, so the first job's kernel launches find the hash
    cached instead of computing it a second time beside the thread (0.4 s on the H200)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    import json
    import subprocess
    import sys

    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    script = f"""
import importlib, json
from pathlib import Path
for name in ("triton.runtime.cache", "triton.compiler.compiler"):  # where Triton versions keep it
    cache = importlib.import_module(name)
    if hasattr(cache, "triton_key"):
        break
from modules.engine.loader import LoadOptions, load_checkpoint
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest
path = Path({str(path)!r})
model = load_checkpoint(CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16"))
loaded = cache.triton_key.cache_info()
generate(model, GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=1, sampler_name="Euler"))
job = cache.triton_key.cache_info()
print(json.dumps({{"loaded": [loaded.misses, loaded.currsize], "job": [job.misses, job.hits]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["loaded"] == [1, 1]  # computed once, before the load returned
    assert info["job"][0] == 1 and info["job"][1] >= 1  # the job's launches found it cached


@pytest.mark.gpu
def test_every_memory_mode_gives_the_full_modes_image_with_the_kernels_installed(tmp_path):
    """The UNet's and the VAE's fused norm+SiLU calls bypass the module's call, and so sequential offload's hook that
    brings a layer's weights over: with the weights still in RAM they take PyTorch's path (group_norm._eligible)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import numpy as np

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate
    from modules.engine.types import CheckpointInfo, GenerationRequest
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16"))
    vae = model.components.vae
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "norm_silu" in vae.decoder.mid.block_1.norm1.__dict__  # the kernel is installed on the VAE too
    request = GenerationRequest(prompt="a cat", steps=3, width=64, height=64, seed=3, sampler_name="Euler")
    images = {}
    for mode in ("full", "model", "sequential"):
        model.set_memory_mode(mode)
        images[mode] = np.asarray(generate(model, request).images[0], dtype=np.int16)
    model.set_memory_mode("full")
    # fp16 rounding apart (sequential: the norm and SiLU as two kernels, each rounding; H200: max 4, mean 0.56 of 255)
    for mode in ("model", "sequential"):
        diff = np.abs(images[mode] - images["full"])
        assert diff.max() <= 8 and diff.mean() <= 1.0, (mode, int(diff.max()), float(diff.mean()))


@pytest.mark.gpu
def test_the_vae_kernels_decode_as_pytorchs_layers_do(tmp_path):
    """The VAE in channels_last with the Triton GroupNorm(+SiLU) against PyTorch's NCHW layers (vae_probe's path)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.gpu.vae_probe import probe_size
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16"))
    result = probe_size(model.components.vae, 128, 2, compile=False)
    assert result["engine"]["max_abs_pixel_diff"] <= 2 and result["channels_last"]["max_abs_pixel_diff"] <= 2


@pytest.mark.gpu
def test_the_warm_ups_dry_pass_builds_the_kernels_and_changes_nothing(tmp_path, caplog):
    """pipeline.warm_up first runs its job under kernel_build.prebuild: the Triton launches become builds on a pool
    (their outputs zeros, no graph captured); every job after it is the job it would have been."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import logging

    import numpy as np

    from modules.engine import kernel_build
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate, warm_up
    from modules.engine.types import CheckpointInfo, GenerationRequest
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16"))
    request = GenerationRequest(prompt="a cat", steps=3, width=64, height=64, seed=3, sampler_name="Euler")
    before = np.asarray(generate(model, request).images[0], dtype=np.int16)
    forward = model.components.unet.forward
    graphs = forward.captured
    caplog.set_level(logging.INFO, logger="modules.engine.kernel_build")
    with kernel_build.prebuild():
        dry = np.asarray(generate(model, request).images[0], dtype=np.int16)
    assert forward.captured == graphs  # the dry pass ran eagerly: nothing captured with the kernels left out
    assert np.abs(dry - before).max() > 0  # the kernels did not run: their outputs were zeros
    assert "variants built or loaded ahead" in caplog.text and "(0 failed)" in caplog.text
    assert np.array_equal(np.asarray(generate(model, request).images[0], dtype=np.int16), before)
    assert warm_up(model) is not None  # the start-up path: dry pass at 512², then the real one
    assert np.array_equal(np.asarray(generate(model, request).images[0], dtype=np.int16), before)


@pytest.mark.gpu
def test_weights_changed_in_place_reach_the_graphs_without_a_new_capture_or_compile(tmp_path):
    """How a LoRA is applied without a recompile: merged into the weights in place (engine/weights.py, through views
    into the fused q/k/v weights). The captured graphs, of the eager and of the compiled UNet, read the weights where
    they lie, so the next job sees the new values; nothing is captured or compiled again, and putting the weights back
    gives the first image back."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import numpy as np

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate
    from modules.engine.types import CheckpointInfo, GenerationRequest
    from modules.engine.weights import WeightPatch, weight_views
    from tests.support.tiny_checkpoints import write_checkpoint

    targets = ("attn1.to_q.weight", "model.diffusion_model.out.2.weight")
    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    request = GenerationRequest(prompt="a cat", steps=3, width=64, height=64, seed=5, sampler_name="Euler")

    def image(model) -> np.ndarray:
        return np.asarray(generate(model, request).images[0], dtype=np.int16)

    for compile in (False, True):
        options = LoadOptions(device="cuda", dtype="float16", vae_dtype="float32", compile=compile)
        model = ModelManager().get(CheckpointInfo(path, path.name), options)
        forward = model.components.unet.forward
        base = image(model)
        if compile:
            assert forward.compiler.wait(timeout=600)
            base = image(model)
            compiled_seconds = dict(forward.compiler.seconds)
        graphs = forward.captured
        assert graphs == (["compiled"] if compile else ["eager"])
        views = weight_views(model.components)
        # the self-attention queries (rows of the fused to_qkv weights) and the last convolution, as a LoRA changes them
        deltas = {k: torch.randn_like(v, dtype=torch.float32) * 0.1 for k, v in views.items() if k.endswith(targets)}
        assert any(k.endswith("attn1.to_q.weight") for k in deltas)
        patch = WeightPatch()
        patch.add(model.components, deltas)
        changed = image(model)
        assert np.abs(changed - base).max() > 0, compile  # the graph read the new values
        assert forward.captured == graphs and not forward.failed
        assert patch.restore(model.components) == len(deltas)
        assert np.array_equal(image(model), base), compile
        if compile:
            assert forward.compiler.seconds == compiled_seconds  # no second compile
        del model, forward


@pytest.mark.gpu
def test_a_tiling_job_runs_the_unet_eagerly_and_the_next_job_replays_its_graph(tmp_path):
    """Circular padding is not what the captured graphs hold: a tiling job bypasses them (and captures nothing),
    the next job replays the graph it had, with the zero padding back."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import numpy as np

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.pipeline import generate
    from modules.engine.types import CheckpointInfo, GenerationOptions, GenerationRequest
    from tests.support.tiny_checkpoints import write_checkpoint

    path = tmp_path / "tiny.safetensors"
    write_checkpoint("sd1", path)
    model = ModelManager().get(
        CheckpointInfo(path, path.name), LoadOptions(device="cuda", dtype="float16", vae_dtype="float32")
    )
    request = GenerationRequest(prompt="a wall", steps=3, width=64, height=64, seed=2, sampler_name="Euler")
    base = np.asarray(generate(model, request).images[0])
    graphs = model.components.unet.forward.captured
    assert graphs == ["eager"]
    tiled = generate(model, request, GenerationOptions(tiling=True))
    assert "Tiling: True" in tiled.infotexts[0] and np.abs(np.asarray(tiled.images[0], np.int16) - base).max() > 0
    assert model.components.unet.forward.captured == graphs and not model.components.unet.forward.failed
    assert np.array_equal(np.asarray(generate(model, request).images[0]), base)
