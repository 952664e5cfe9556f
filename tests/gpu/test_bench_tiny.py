"""The benchmark's own code on the CPU (tiny checkpoints): every workload runs, through our engine and diffusers."""

import math
import sys

import pytest

from tests.gpu.bench import run


def test_every_workload_runs_on_tiny_checkpoints(tmp_path):
    pytest.importorskip("diffusers")
    results = run(tmp_path, tiny=True, skip_sdxl=False, runs=1, warmup=0)
    for kind in ("sd1", "sdxl"):
        entry = results[kind]
        for side in ("engine", "baseline"):
            b1 = entry["W_b1"][side]
            assert b1["e2e_s"] > 0 and math.isfinite(b1["unet_it_s"])
        w4 = entry["W4_img2img"]
        assert w4["engine_e2e_s"] > 0 and w4["baseline_e2e_s"] > 0 and w4["ratio"] > 0
        assert w4["engine_reserved_at_start_gb"] == w4["baseline_reserved_at_start_gb"] == 0.0  # no CUDA here
        if sys.platform.startswith("linux"):  # the page cache can be dropped: a cold load is measured
            assert entry["cold_read_s"] > 0 and entry["cold_load_s"] > 0
    change = results["sd1"]["W6_resolution_change"]
    assert change["size"] == "96x64" and change["first_job_s"] > 0 and change["second_job_s"] > 0
    assert results["sd1"]["W2_b8"]["engine"]["images_per_s"] > 0
    assert [k for k, _ in results["W5_switch_s"]] == ["sd1", "sdxl", "sd1"]
    assert [k for k, _ in results["W5_switch_ram_cache_s"]] == ["sd1", "sdxl", "sd1"]
    first = results["W6_first_image"]
    assert 0 < first["import_s"] < first["load_done_s"] < first["first_image_s"]


def test_plain_diffusers_is_gone_before_our_weights_go_back(tmp_path, monkeypatch):
    """B's pipeline must be freed before our model returns to the device: alive, its segments (PyTorch's default
    allocator) took our weights into their free space and stayed reserved (0.46 GB at W4 on the H200)."""
    pytest.importorskip("diffusers")
    import gc
    import weakref

    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.gpu import bench
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cpu"))
    made: list[weakref.ref] = []
    alive_when_ours_return: list[bool] = []

    def reference(*args, **kwargs):
        pipe = make_reference(*args, **kwargs)
        made.append(weakref.ref(pipe))
        return pipe

    def apply_mode(parts, *args, **kwargs):
        gc.collect()
        alive_when_ours_return.append(any(ref() is not None for ref in made))
        return restore(parts, *args, **kwargs)

    make_reference, restore = bench.reference_pipeline, bench.offload.apply_mode
    monkeypatch.setattr(bench, "reference_pipeline", reference)
    monkeypatch.setattr(bench.offload, "apply_mode", apply_mode)
    bench.baseline_workload(model, 64, 1, 0, 1)
    bench.img2img_workload(model, 64, 0, 1)
    assert len(made) == 2 and alive_when_ours_return == [False, False]
