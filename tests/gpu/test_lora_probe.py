"""The LoRA probe's own code on the CPU (tiny checkpoints): its figures exist and the LoRA changes the image."""

from tests.gpu.lora_probe import probe


def test_lora_probe_on_a_tiny_checkpoint(tmp_path):
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    result = probe(path, rank=4, runs=1, size=64, steps=2)
    assert result["layers"] > 50 and result["lora_max_abs_pixel_diff"] > 0
    assert min(result[k] for k in ("job_s", "job_with_lora_s", "switch_job_s", "merge_s", "restore_s")) > 0
    assert result["graphs_before"] == result["graphs_after"]  # None on the CPU, the same graphs on a GPU
