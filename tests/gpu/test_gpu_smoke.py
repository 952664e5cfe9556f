import pytest

torch = pytest.importorskip("torch")


@pytest.mark.gpu
def test_sd15_full_size_fp16_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tests.gpu.sd15_smoke import run

    results = run(tmp_path, runs=2)
    assert results["Euler"]["median_s"] > 0
