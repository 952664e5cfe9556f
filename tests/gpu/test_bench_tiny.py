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
    for kind, key in (("sd1", "W_b1"), ("sdxl", "W_b1"), ("sd1", "W2_b8")):  # every figure also as a ratio to B
        work = results[kind][key]
        assert work["ratios"]["engine_vs_baseline"]["e2e"] == work["baseline"]["e2e_s"] / work["engine"]["e2e_s"]
    assert [k for k, _ in results["W5_switch_s"]] == ["sd1", "sdxl", "sd1"]
    assert [k for k, _ in results["W5_switch_ram_cache_s"]] == ["sd1", "sdxl", "sd1"]
    first = results["W6_first_image"]
    assert 0 < first["import_s"] < first["load_done_s"] < first["first_image_s"]
    new_install = results["W6_first_image_new_install"]  # the same with an empty Triton cache (none on a CPU)
    assert 0 < new_install["import_s"] < new_install["load_done_s"] < new_install["first_image_s"]


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


def test_plain_diffusers_plus_compile_runs_w1_w4_and_w2_and_gives_ratios(tmp_path):
    """B + compile (the anchor) for every workload it applies to, the compile step replaced by the identity (on the
    GPU machine it is ``torch.compile(mode="reduce-overhead")``; here the benchmark's plumbing is what is tested)."""
    pytest.importorskip("diffusers")
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.gpu import bench
    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sd1", tmp_path / "sd1.safetensors", write_yaml=False)
    model = ModelManager().get(CheckpointInfo(path, path.name), LoadOptions(device="cpu"))
    compiled = []

    def compile_unet(forward):
        compiled.append(type(forward.__self__).__name__)
        return forward

    figures = bench.baseline_compiled(model, 64, 1, batch8=True, warmup=0, compile_unet=compile_unet)
    assert compiled == ["UNet2DConditionModel"]  # B's UNet, compiled once for all three workloads
    assert set(figures) == {"W_b1", "W4_img2img", "W2_b8"}
    assert figures["W_b1"]["compile_s"] > 0 and figures["W_b1"]["images_per_s"] > 0
    assert figures["W2_b8"]["compile_s"] > 0 and figures["W2_b8"]["s_per_image"] == figures["W2_b8"]["e2e_s"] / 8
    assert figures["W4_img2img"]["e2e_s"] > 0
    entry = {
        "W_b1": {"engine": bench.engine_workload(model, 64, 1, 0, 1), "baseline_reduce_overhead": figures["W_b1"]},
        "W4_img2img": {"engine_e2e_s": 0.5, "baseline_reduce_overhead": figures["W4_img2img"]},
    }
    bench.add_ratios(entry)
    ratio = entry["W_b1"]["ratios"]["engine_vs_baseline_reduce_overhead"]
    assert ratio["e2e"] == figures["W_b1"]["e2e_s"] / entry["W_b1"]["engine"]["e2e_s"]
    assert ratio["unet_it_s"] == entry["W_b1"]["engine"]["unet_it_s"] / figures["W_b1"]["unet_it_s"]
    assert entry["W4_img2img"]["ratio_vs_baseline_reduce_overhead"] == figures["W4_img2img"]["e2e_s"] / 0.5


def test_the_benchmark_refuses_to_skip_every_model(tmp_path):
    with pytest.raises(ValueError, match="nothing to run"):
        run(tmp_path, tiny=True, skip_sdxl=True, skip_sd1=True, runs=1, warmup=0)


def test_releasing_the_compiled_baseline_drops_what_dynamo_compiled():
    """B + reduce-overhead's CUDA-graph trees (and their memory pools) live in dynamo/inductor's process-wide state;
    the benchmark resets that state before our compiled path runs (on CUDA the same reset frees the trees)."""
    import torch
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from tests.gpu import bench

    def f(x):
        return x * 2 + 1

    compiled = torch.compile(f, backend="eager")
    compiled(torch.ones(3))
    assert _debug_get_cache_entry_list(f.__code__)
    bench.release_compiled_baseline()
    assert not _debug_get_cache_entry_list(f.__code__)
