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
