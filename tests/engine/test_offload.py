"""Memory modes (full / model offload / sequential offload) and the out-of-memory retry, on the tiny checkpoints.

On the CPU the offload hooks are real (engine/offload.py's, with the CPU as execution device), so these tests run
the same code paths as on a GPU; the GPU run (tests/gpu/oom_check.py) adds a real out-of-memory.
"""

import dataclasses

import numpy as np
import pytest
import torch

from modules.engine import offload
from modules.engine.pipeline import generate
from modules.engine.types import GenerationRequest
from modules.errors import OutOfMemoryError

FAST = GenerationRequest(prompt="a red house", width=64, height=64, steps=3, sampler_name="Euler a", seed=9)


def px(result):
    return np.asarray(result.images[0], dtype=int)


def test_choose_mode_from_free_memory(load_tiny, tiny_models):
    pipe = load_tiny(tiny_models["sd1"]).components
    sizes = [offload.module_bytes(m) for m in pipe.models().values()]
    work = offload.WORK_BYTES[False]
    choose = offload.choose_mode
    assert choose(pipe, "cuda:0", "auto", sdxl=False, free_bytes=sum(sizes) + work) == "full"
    assert choose(pipe, "cuda:0", "auto", sdxl=False, free_bytes=sum(sizes) + work - 1) == "model"
    assert choose(pipe, "cuda:0", "auto", sdxl=False, free_bytes=max(sizes) + work - 1) == "sequential"
    assert choose(pipe, "cpu", "auto", sdxl=False) == "full"
    assert choose(pipe, "cuda:0", "model", sdxl=False, free_bytes=10**15) == "model"  # --medvram forces it
    with pytest.raises(ValueError, match="unknown memory mode"):
        choose(pipe, "cpu", "medium", sdxl=False)
    assert [offload.lighter(m) for m in offload.MODES] == ["model", "sequential", None]


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_modes_give_the_same_image(load_tiny, tiny_models, mode):
    model = load_tiny(tiny_models["sd1"])
    full = generate(model, FAST)
    model.set_memory_mode(mode)
    try:
        assert offload.is_offloaded(model.components.unet)  # real hooks installed
        offloaded = generate(model, FAST)
        # the timestep samplers run offloaded too
        assert generate(model, dataclasses.replace(FAST, sampler_name="DDIM")).images[0].size == (64, 64)
        img2img = generate(model, dataclasses.replace(FAST, init_images=(full.images[0],), steps=2))
    finally:
        model.set_memory_mode("full")
    assert not offload.is_offloaded(model.components.unet) and model.components.offload_hooks is None
    assert np.abs(px(full) - px(offloaded)).max() <= 1
    assert img2img.images[0].size == (64, 64)
    assert np.array_equal(px(generate(model, FAST)), px(full))


class Recorder(torch.nn.Module):
    """A one-layer model that records where ``.to`` sends it."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log, self.layer = name, log, torch.nn.Linear(2, 2)

    def to(self, *args, **kwargs):
        self.log.append((self.name, str(args[0])))
        return super().to(*args, **kwargs)

    def forward(self, x):
        return self.layer(x)


def test_model_offload_keeps_one_model_on_the_device():
    log = []
    models = {name: Recorder(name, log) for name in ("text_encoder", "unet", "vae")}
    hooks = offload.ModelOffload(models, torch.device("cpu"))
    x = torch.ones(1, 2)
    models["text_encoder"](x)
    models["unet"](x)
    models["unet"](x)  # already there: no move
    models["vae"].layer(x)  # a child's call (the VAE's encode/decode) brings its model over
    assert log == [
        ("text_encoder", "cpu"),
        ("text_encoder", "cpu"), ("unet", "cpu"),
        ("unet", "cpu"), ("vae", "cpu"),
    ]  # fmt: skip
    assert hooks.active is models["vae"] and all(offload.is_offloaded(m) for m in models.values())
    hooks.remove()
    assert not any(offload.is_offloaded(m) for m in models.values())
    models["text_encoder"](x)
    assert hooks.active is None


class InjectOOM:
    """A UNet pre-hook raising torch.OutOfMemoryError on chosen calls; records the memory mode of every call."""

    def __init__(self, model, fail_calls):
        self.model, self.fail_calls, self.calls, self.modes = model, set(fail_calls), 0, []

    def __call__(self, module, args):
        self.calls += 1
        self.modes.append(self.model.memory_mode)
        if self.calls in self.fail_calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")


def test_out_of_memory_retries_once_with_model_offload(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    expected = generate(model, FAST)
    inject = InjectOOM(model, fail_calls={1})
    handle = model.components.unet.register_forward_pre_hook(inject)
    try:
        result = generate(model, FAST)
    finally:
        handle.remove()
    assert inject.modes[0] == "full" and set(inject.modes[1:]) == {"model"}
    assert model.memory_mode == "full"  # back to the fast mode for the next job
    assert np.abs(px(result) - px(expected)).max() <= 1


def test_out_of_memory_twice_is_a_clear_error_and_the_next_job_works(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    handle = model.components.unet.register_forward_pre_hook(InjectOOM(model, fail_calls={1, 2}))
    try:
        with pytest.raises(OutOfMemoryError, match="also with model offload"):
            generate(model, FAST)
    finally:
        handle.remove()
    model.set_memory_mode("sequential")
    model.preferred_mode = "sequential"  # as --lowvram chooses it
    handle = model.components.unet.register_forward_pre_hook(InjectOOM(model, fail_calls={1}))
    try:
        with pytest.raises(OutOfMemoryError, match="every model offloaded"):
            generate(model, FAST)
    finally:
        handle.remove()
        model.preferred_mode = ""
        model.set_memory_mode("full")
    assert generate(model, FAST).images[0].size == (64, 64)


def test_a_job_returns_to_the_preferred_mode_when_it_can(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    model.preferred_mode = "full"
    model.set_memory_mode("model")  # as left by an out of memory whose return to full failed
    try:
        generate(model, FAST)
        assert model.memory_mode == "full"
    finally:
        model.set_memory_mode("full")
        model.preferred_mode = ""
