"""The compiled UNet (engine/compiling.py) with a real trace: weights changed in place need no recompile."""

import functools

import pytest
import torch

from modules.engine.compiling import READY, BackgroundCompiler


def test_weights_changed_in_place_are_used_without_a_recompile(tmp_path):
    """What a LoRA applied to the weights in place does to the compiled UNet: the next call uses the new weights and
    dynamo does not recompile (the weights are inputs of the traced graph, not constants). Traced by dynamo and
    AOTAutograd (``aot_eager``: the CPU cost of inductor's C++ compile, ~2 min here, is left to the GPU tests)."""
    pytest.importorskip("torch._dynamo")
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    unet = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cpu")).components.unet
    forward = type(unet).forward.__get__(unet)

    def runner(fn, inputs):
        return fn(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], return_dict=False)[0]

    generator = torch.Generator().manual_seed(0)
    context = unet.config.cross_attention_dim
    inputs = {
        "sample": torch.randn(2, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, 77, context, generator=generator),
    }
    compiler = BackgroundCompiler(forward, runner, compile_fn=functools.partial(torch.compile, backend="aot_eager"))
    compiler.request(("k",), inputs)
    compiler.start_queued()
    assert compiler.wait(300) and compiler.state(("k",)) == READY
    with torch.inference_mode():
        before = runner(compiler.compiled, inputs)
        changed = 0
        for module in unet.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.add_(0.05 * torch.randn(module.weight.shape, generator=generator))
                changed += 1
        assert changed > 0
        with torch._dynamo.config.patch(error_on_recompile=True):
            after = runner(compiler.compiled, inputs)
        eager = runner(forward, inputs)
    assert not torch.allclose(after, before, atol=1e-3)  # the new weights were used...
    torch.testing.assert_close(after, eager, atol=1e-5, rtol=1e-5)  # ...exactly as the eager UNet uses them
