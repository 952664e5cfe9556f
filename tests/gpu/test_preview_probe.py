"""The preview probe's own code on the CPU (tiny checkpoint): every figure exists and previews change no image."""

from tests.gpu.preview_probe import probe


def test_preview_probe_on_a_tiny_checkpoint(tmp_path):
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    result = probe(path, runs=1, size=64, steps=4)
    assert min(result[f"{key}_s"] for key in ("unwatched", "Approx cheap", "Full")) > 0
    assert result["unwatched_previews"] == []
    assert result["Approx cheap_previews"] == [(2, (8, 8)), (4, (8, 8))]
    assert result["Full_previews"] == [(2, (64, 64)), (4, (64, 64))]
    assert all(result[f"{key}_same_image"] for key in ("unwatched", "Approx cheap", "Full"))
