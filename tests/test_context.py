"""AppContext: the shared entry point, run for real on the tiny checkpoints and a temporary data dir."""

import datetime
import json
import os
import shutil
import time

import pytest
from PIL import Image

from modules.context import AppContext
from modules.engine.types import GenerationRequest
from modules.errors import CheckpointLoadError, CheckpointNotFoundError, SettingsError
from modules.flags import parse_flags
from modules.settings import Settings

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}


def make_ctx(data_dir, ckpt_dir=None, *extra):
    args = ["--data-dir", str(data_dir), "--no-download-sd-model", *extra]
    if ckpt_dir is not None:
        args += ["--ckpt-dir", str(ckpt_dir)]
    flags = parse_flags(args, environ={})
    return AppContext(flags=flags, settings=Settings.load(flags.settings_file))


@pytest.fixture
def ctx(tmp_path, tiny_models_dir):
    c = make_ctx(tmp_path, tiny_models_dir)
    yield c
    c.close()


def test_scan_finds_all_tiny_models(ctx):
    names = {c.name for c in ctx.checkpoints}
    assert {"sd1.safetensors", "sdxl.safetensors"} <= names


def test_generation_is_saved_as_a1111_does(ctx, tmp_path):
    ctx.update_settings({"sd_model_checkpoint": "sd1"})
    out = ctx.submit(GenerationRequest(prompt="cat", seed=1234, batch_size=2, **FAST)).wait(120)
    day = datetime.date.today().isoformat()
    files = sorted(p.name for p in (tmp_path / "outputs" / "txt2img-images" / day).iterdir())
    assert files == ["00000-1234.png", "00001-1235.png"]
    grids = list((tmp_path / "outputs" / "txt2img-grids" / day).iterdir())
    assert [g.name for g in grids] == ["grid-0000.png"]
    with Image.open(tmp_path / "outputs" / "txt2img-images" / day / "00001-1235.png") as im:
        assert im.info["parameters"] == out.result.infotexts[1]
    assert "Seed: 1235" in out.result.infotexts[1]
    assert (tmp_path / "params.txt").read_text() == out.result.infotexts[0]
    assert out.info["all_seeds"] == [1234, 1235] and out.info["sd_model_name"] == "sd1"
    assert len(out.gallery()) == 3  # grid first
    # a second job continues the numbering, never overwrites
    ctx.submit(GenerationRequest(prompt="cat", seed=1, **FAST)).wait(120)
    assert (tmp_path / "outputs" / "txt2img-images" / day / "00002-1.png").exists()


def test_save_false_writes_nothing(ctx, tmp_path):
    ctx.submit(GenerationRequest(prompt="cat", seed=1, **FAST), save=False).wait(120)
    assert not (tmp_path / "outputs").exists()


def test_overrides_apply_to_one_job_only(ctx):
    job = ctx.submit(GenerationRequest(prompt="cat", seed=1, **FAST), {"CLIP_stop_at_last_layers": 2}, save=False)
    assert "Clip skip: 2" in job.wait(120).result.infotexts[0]
    assert ctx.settings.CLIP_stop_at_last_layers == 1
    with pytest.raises(SettingsError, match="bogus"):
        ctx.submit(GenerationRequest(**FAST), {"bogus": 1})


def test_switch_checkpoint_persists_and_frees_previous(ctx, tmp_path):
    ctx.update_settings({"sd_model_checkpoint": "sd1"})
    assert ctx.models.current.checkpoint.name == "sd1.safetensors"
    ctx.update_settings({"sd_model_checkpoint": "sdxl.safetensors"})
    assert ctx.models.current.checkpoint.name == "sdxl.safetensors"
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["sd_model_checkpoint"].startswith("sdxl.safetensors [")
    out = ctx.submit(GenerationRequest(prompt="cat", seed=1, **FAST), save=False).wait(120)
    assert "Model: sdxl" in out.result.infotexts[0]


def test_unknown_checkpoint_is_a_clear_error(ctx):
    with pytest.raises(CheckpointNotFoundError, match="nope"):
        ctx.update_settings({"sd_model_checkpoint": "nope"})


def test_broken_checkpoint_fails_and_next_job_works(tmp_path, tiny_models):
    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    shutil.copy(tiny_models["sd1"], ckpt_dir / "good.safetensors")
    (ckpt_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    ctx = make_ctx(tmp_path / "data", ckpt_dir)
    try:
        job = ctx.submit(GenerationRequest(**FAST), {"sd_model_checkpoint": "broken"}, save=False)
        with pytest.raises(CheckpointLoadError, match=r"broken\.safetensors"):
            job.wait(60)
        out = ctx.submit(GenerationRequest(seed=3, **FAST), {"sd_model_checkpoint": "good"}, save=False).wait(120)
        assert len(out.result.images) == 1
    finally:
        ctx.close()


def test_no_checkpoints_message_names_the_folder(tmp_path):
    ctx = make_ctx(tmp_path)
    try:
        assert ctx.checkpoints == []
        with pytest.raises(CheckpointNotFoundError, match="Stable-diffusion"):
            ctx.submit(GenerationRequest(**FAST))
        ctx.start()  # --no-download-sd-model: nothing queued, nothing crashes
        assert ctx.jobs.current is None and not ctx.jobs.pending
    finally:
        ctx.close()


def test_compiled_kernels_are_cached_with_the_apps_data_unless_the_user_set_a_place(tmp_path, monkeypatch):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)
    make_ctx(tmp_path / "a").close()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a" / "cache" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "a" / "cache" / "triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    make_ctx(tmp_path / "b").close()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")


def test_refresh_picks_up_new_files(tmp_path, tiny_models):
    ctx = make_ctx(tmp_path)
    try:
        target = tmp_path / "models" / "Stable-diffusion" / "sub"
        target.mkdir(parents=True)
        shutil.copy(tiny_models["sd1"], target / "late.safetensors")
        assert [c.name for c in ctx.refresh_checkpoints()] == ["sub/late.safetensors"]
    finally:
        ctx.close()


def test_facades(ctx):
    assert "DPM++ 2M" in ctx.sampler_names() and "Euler" in ctx.sampler_names()
    assert ctx.schedule_labels()[0] == "Automatic"
    assert ctx.count_tokens("a photo of a cat") == (5, 75)
    assert ctx.count_tokens("a photo <lora:detail:0.7>of a cat<hypernet:x:1>") == (5, 75)
    fields = ctx.infotext_fields("cat\nSteps: 5, Sampler: Euler a, CFG scale: 6, Seed: 9, Size: 64x128")
    assert fields["steps"] == 5 and fields["height"] == 128 and fields["sampler_name"] == "Euler a"
    assert "styles" not in fields


def test_a_pasted_infotext_selects_the_styles_its_prompts_carry(ctx):
    from modules.engine.types import GenerationRequest

    styles_csv = ctx.flags.data_dir / "styles.csv"
    styles_csv.write_text(
        'name,prompt,negative_prompt\nNoir,"film noir, {prompt}",colour\nGrain,film grain,\nUnused,zzz,\n', "utf-8"
    )
    try:
        styled = ctx.styles.apply(GenerationRequest(prompt="a cat", negative_prompt="blur", styles=("Grain", "Noir")))
        assert styled.prompt == "film noir, a cat, film grain" and styled.negative_prompt == "blur, colour"
        fields = ctx.infotext_fields(
            f"{styled.prompt}\nNegative prompt: {styled.negative_prompt}\nSteps: 5, Seed: 1, Size: 64x64"
        )
        assert (fields["prompt"], fields["negative_prompt"], fields["styles"]) == ("a cat", "blur", ("Grain", "Noir"))
        plain = ctx.infotext_fields("a cat, film\nNegative prompt: blur\nSteps: 5, Seed: 1, Size: 64x64")
        assert plain["prompt"] == "a cat, film" and "styles" not in plain
    finally:
        styles_csv.unlink()


def _serve(directory):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_first_start_downloads_the_default_model_and_loads_it(tmp_path, tiny_models):
    import hashlib

    from modules.engine.download import ModelDownload

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(tiny_models["sd1"], served / "model.safetensors")
    sha = hashlib.sha256((served / "model.safetensors").read_bytes()).hexdigest()
    server = _serve(served)
    try:
        flags = parse_flags(["--data-dir", str(tmp_path / "data")], environ={})
        url = f"http://127.0.0.1:{server.server_port}/model.safetensors"
        spec = ModelDownload(url=url, filename="v1-5-pruned-emaonly.safetensors", sha256=sha)
        ctx = AppContext(flags=flags, settings=Settings(), download_spec=spec)
        try:
            ctx.start()
            job = ctx.jobs.current or ctx.jobs.pending[0]
            assert job.kind == "download"
            path = job.wait(60)
            assert path == tmp_path / "data" / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.safetensors"
            assert ctx.download.finished and ctx.download.error is None and ctx.download.done == path.stat().st_size
            assert [c.name for c in ctx.checkpoints] == ["v1-5-pruned-emaonly.safetensors"]
            out = ctx.submit(GenerationRequest(seed=1, **FAST), save=False).wait(120)
            assert "Model: v1-5-pruned-emaonly" in out.result.infotexts[0]
        finally:
            ctx.close()
    finally:
        server.shutdown()


def test_failed_download_is_reported_and_the_app_keeps_working(tmp_path):
    import socket

    from modules.engine.download import ModelDownload
    from modules.errors import DownloadError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = parse_flags(["--data-dir", str(tmp_path)], environ={})
    spec = ModelDownload(url=f"http://127.0.0.1:{port}/x.safetensors", filename="x.safetensors", sha256=None)
    ctx = AppContext(flags=flags, settings=Settings(), download_spec=spec)
    try:
        ctx.start()
        job = ctx.jobs.current or ctx.jobs.pending[0]
        with pytest.raises(DownloadError, match="Stable-diffusion"):
            job.wait(60)
        assert ctx.download.error and "x.safetensors" in ctx.download.error
        assert ctx.update_settings({"jpeg_quality": 70}).jpeg_quality == 70  # still usable
        with pytest.raises(CheckpointNotFoundError, match="Stable-diffusion"):
            ctx.submit(GenerationRequest(**FAST))
    finally:
        ctx.close()


def test_out_of_memory_is_a_readable_error_and_the_next_job_works(ctx, monkeypatch):
    import torch

    import modules.engine.pipeline as pipeline
    from modules.errors import OutOfMemoryError

    real = pipeline._sample_batch
    calls = []

    def oom_twice(*args, **kwargs):  # the device running out of memory, also in the retry (simulated)
        calls.append(1)
        if len(calls) <= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_sample_batch", oom_twice)
    job = ctx.submit(GenerationRequest(seed=1, **FAST), save=False)
    message = r"Out of memory on cpu while generating 64x64, batch size 1, also with model offload"
    with pytest.raises(OutOfMemoryError, match=message):
        job.wait(120)
    assert len(calls) == 2  # retried once, in the lighter mode
    out = ctx.submit(GenerationRequest(seed=1, **FAST), save=False).wait(120)
    assert len(out.result.images) == 1 and ctx.models.current.memory_mode == "full"


def test_hashing_runs_beside_the_load_not_before_it(ctx, monkeypatch):
    import threading

    events = []
    real_sha, real_get = ctx.hash_cache.sha256, ctx.models.get
    loading = threading.Event()

    def slow_sha(path):
        assert loading.wait(60), "the load did not start while the hash was running"
        events.append(("hash done", time.monotonic()))
        return real_sha(path)

    def get(info, options):
        events.append(("load start", time.monotonic()))
        assert info.sha256 is None  # the load does not wait for the hash
        loading.set()
        return real_get(info, options)

    monkeypatch.setattr(ctx.hash_cache, "sha256", slow_sha)
    monkeypatch.setattr(ctx.models, "get", get)
    checkpoint = ctx.submit_load("sd2v").wait(120)
    assert [name for name, _ in events] == ["load start", "hash done"]
    assert checkpoint.sha256 is not None and ctx.models.current.checkpoint.sha256 == checkpoint.sha256


def test_the_start_up_warm_up_does_not_wait_for_the_hash(ctx, monkeypatch):
    """The first-ever start hashes the whole file (≈1.3 s for 2 GB); the warm-up runs meanwhile, not after it."""
    import threading

    from modules import context

    warmed = threading.Event()
    real_sha = ctx.hash_cache.sha256

    def slow_sha(path):
        assert warmed.wait(60), "the warm-up waited for the hash"
        return real_sha(path)

    def warm_up(model):
        assert model.checkpoint.sha256 is None  # the hash is still being computed
        warmed.set()

    monkeypatch.setattr(ctx.hash_cache, "sha256", slow_sha)
    monkeypatch.setattr(context, "warm_up_model", warm_up)
    checkpoint = ctx.submit_load("sd1", warm_up=True).wait(120)
    assert warmed.is_set() and checkpoint.sha256 is not None
    assert ctx.models.current.checkpoint.sha256 == checkpoint.sha256


def test_the_device_is_chosen_once_not_per_job(ctx, monkeypatch):
    """The flags never change while the app runs: the device policy (and its log line) runs at the first load only."""
    from modules import context

    calls = []
    real = context.select_device
    monkeypatch.setattr(context, "select_device", lambda **flags: calls.append(flags) or real(**flags))
    for seed in (1, 2):
        ctx.submit(GenerationRequest(prompt="cat", seed=seed, **FAST)).wait(120)
    assert len(calls) == 1 and ctx.load_options().device == "cpu"
