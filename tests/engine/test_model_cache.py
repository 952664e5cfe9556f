"""ModelManager's RAM cache (A1111's sd_checkpoints_limit): switching back to a cached model reuses it."""

import numpy as np

from modules.engine.loader import LoadOptions, ModelManager
from modules.engine.pipeline import generate
from modules.engine.types import CheckpointInfo, GenerationRequest

CPU = LoadOptions(device="cpu", dtype="float32", vae_dtype="float32")
REQ = GenerationRequest(prompt="a cat", width=64, height=64, steps=2, sampler_name="Euler", seed=3)


def info(path):
    return CheckpointInfo(path, path.name, sha256="cd" * 32, config=path.with_suffix(".yaml"))


def test_limit_two_keeps_the_previous_model_in_ram(tiny_models):
    manager = ModelManager(limit=2)
    first = manager.get(info(tiny_models["sd1"]), CPU)
    before = np.asarray(generate(first, REQ).images[0])
    second = manager.get(info(tiny_models["sdxl"]), CPU)
    assert manager.current is second and manager.cached == [first.checkpoint]
    again = manager.get(info(tiny_models["sd1"]), CPU)
    assert again.components is first.components  # not rebuilt from the file
    assert manager.cached == [second.checkpoint]
    assert np.array_equal(np.asarray(generate(again, REQ).images[0]), before)
    manager.unload()
    assert manager.current is None and manager.cached == []


def test_limit_one_frees_the_previous_model(tiny_models):
    manager = ModelManager()
    first = manager.get(info(tiny_models["sd1"]), CPU)
    manager.get(info(tiny_models["sdxl"]), CPU)
    assert manager.cached == []
    again = manager.get(info(tiny_models["sd1"]), CPU)
    assert again.components is not first.components


def test_cache_is_bounded_by_the_limit(tiny_models):
    manager = ModelManager(limit=2)
    for kind in ("sd1", "sdxl", "sd2v"):
        manager.get(info(tiny_models[kind]), CPU)
    assert [c.name for c in manager.cached] == [tiny_models["sdxl"].name]


def _count_collections(monkeypatch):
    import gc

    from modules.engine import loader

    calls = []
    real = gc.collect
    monkeypatch.setattr(loader.gc, "collect", lambda *a: calls.append(a) or real(*a))
    return calls


def test_a_switch_frees_the_old_model_without_a_full_collection(tiny_models, monkeypatch):
    """Reference counting frees a model switched away from: no gc pass (≈0.1 s on the H200) is spent."""
    import gc
    import weakref

    manager = ModelManager()
    first = manager.get(info(tiny_models["sd1"]), CPU)
    generate(first, REQ)
    unet = weakref.ref(first.components.unet)
    del first
    calls = _count_collections(monkeypatch)
    gc.disable()  # only reference counting may free it
    try:
        manager.get(info(tiny_models["sd2v"]), CPU)
        assert unet() is None and calls == []
    finally:
        gc.enable()


def test_a_model_kept_by_a_cycle_is_collected_at_the_switch(tiny_models, monkeypatch):
    import weakref

    manager = ModelManager()
    first = manager.get(info(tiny_models["sd1"]), CPU)
    first.components.unet.loop = [first.components.unet]  # a cycle: reference counting cannot free it
    unet = weakref.ref(first.components.unet)
    del first
    calls = _count_collections(monkeypatch)
    manager.get(info(tiny_models["sd2v"]), CPU)
    assert unet() is None and len(calls) == 1
