"""The VAE probe's own code on the CPU (tiny SD1 checkpoint): every layout decodes the same images."""

from tests.gpu.vae_probe import probe_size


def test_layouts_of_a_tiny_vae_decode_alike(tmp_path):
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cpu"))
    vae = model.components.vae
    result = probe_size(vae, 64, 1, compile=False)
    assert result["size"] == 64
    for name in ("contiguous", "channels_last", "engine"):
        assert result[name]["decode_ms"] > 0
        assert result[name]["max_abs_pixel_diff"] <= 1  # float32: the same arithmetic in another memory layout
    assert result["engine"]["encode_ms"] > 0
    assert vae.decoder.conv_in.weight.is_contiguous()  # a CPU VAE is left as the engine has it
