"""The phase probe's own code on the CPU (tiny SD1 checkpoint): its phases add up and the batched decode matches."""

from tests.gpu.phase_probe import phases


def test_phases_of_a_tiny_batch(tmp_path):
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cpu"))
    result = phases(model, 64, 2, 1)
    assert result["e2e_s"] > result["e2e_2_steps_s"] > 0
    assert result["decode_each_s"] > 0 and result["decode_batched_s"] > 0
    assert abs(result["unet_20_steps_s"] + result["decode_each_s"] + result["rest_s"] - result["e2e_s"]) < 1e-9
    # one batched decode gives the engine's images (float32 here: the same arithmetic up to batching)
    assert result["batched_vs_each_max_abs_pixel_diff"] <= 1
