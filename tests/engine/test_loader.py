"""Loading the tiny checkpoints through the real loader: every kind, both formats, with and without the yaml."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import struct
import sys
import threading
import types
import weakref
from pathlib import Path

import pytest
import torch

from modules.engine import loader
from modules.engine.loader import (
    LoadedModel,
    LoadOptions,
    ModelManager,
    direct_mode,
    load_checkpoint,
    read_state_dict,
    select_device,
)
from modules.engine.prediction import probe_mean_difference, probe_prediction_type
from modules.engine.types import CheckpointInfo, ModelType
from modules.errors import CheckpointLoadError, UnknownModelTypeError, UnsafeCheckpointError

KINDS = ("sd1", "sd2v", "sd1-inpaint", "sdxl")
TYPES = {"sd1": ModelType.SD1, "sd2v": ModelType.SD2, "sd1-inpaint": ModelType.SD1_INPAINT, "sdxl": ModelType.SDXL}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny models on one thread: on a busy 2-core machine, 2 OpenMP threads are ~8x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def options() -> LoadOptions:
    return LoadOptions()


def info(path: Path, *, with_yaml: bool = True) -> CheckpointInfo:
    yaml_path = path.with_suffix(".yaml")
    return CheckpointInfo(path, path.name, config=yaml_path if with_yaml and yaml_path.exists() else None)


def copy_without_yaml(path: Path, dest: Path) -> CheckpointInfo:
    target = dest / path.name
    shutil.copyfile(path, target)
    return info(target)


def all_tensors(model: LoadedModel) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.components.models().items():
        if isinstance(module, torch.nn.Module):
            out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def check_tokenizers(model: LoadedModel) -> None:
    tokenizers = [model.components.__dict__.get(n) for n in ("tokenizer", "tokenizer_2")]
    for tokenizer in filter(None, tokenizers):
        assert len(tokenizer) == 49408
        assert tokenizer.model_max_length == 77
        ids = tokenizer("a photo of a cat").input_ids
        assert (ids[0], ids[-1]) == (49406, 49407)


@pytest.mark.parametrize("with_yaml", [True, False], ids=["yaml", "no-yaml"])
@pytest.mark.parametrize("fmt", ["", ".ckpt"], ids=["safetensors", "ckpt"])
@pytest.mark.parametrize("kind", KINDS)
def test_load_every_kind(
    kind: str, fmt: str, with_yaml: bool, tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path
) -> None:
    source = tiny_models[kind + fmt]
    checkpoint = info(source) if with_yaml else copy_without_yaml(source, tmp_path)
    assert (checkpoint.config is not None) == with_yaml
    model = load_checkpoint(checkpoint, options)
    assert model.model_type is TYPES[kind]
    encoders = {"sdxl": ["text_encoder", "text_encoder_2"]}.get(kind, ["text_encoder"])
    assert list(model.components.models()) == [*encoders, "unet", "vae"]
    tensors = all_tensors(model)
    assert not [k for k, v in tensors.items() if v.device.type == "meta"]
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float32}
    check_tokenizers(model)
    assert model.components.schedule["prediction_type"] == model.prediction_type
    if kind == "sd2v" and with_yaml:
        assert model.prediction_type == "v_prediction"
    if kind != "sd2v":
        assert model.prediction_type == "epsilon"


def test_sd2_pad_token_and_probe_without_yaml(
    tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path
) -> None:
    model = load_checkpoint(copy_without_yaml(tiny_models["sd2v"], tmp_path), options)
    assert model.components.tokenizer.pad_token == "!"
    assert model.components.tokenizer.pad_token_id == 0
    # Random weights carry no eps/v signal: the probe sees mean(out - in) near 0 and answers "epsilon".
    assert model.prediction_type == "epsilon"


class ConstantUNet(torch.nn.Module):
    """A stand-in UNet whose prediction is ``input + offset``."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = types.SimpleNamespace(in_channels=4, cross_attention_dim=16)

    def forward(self, latents, timesteps, encoder_hidden_states, return_dict=False):
        assert timesteps.tolist() == [999]
        assert encoder_hidden_states.shape == (1, 2, 16)
        return (latents + self.offset + self.weight,)


@pytest.mark.parametrize(("offset", "expected"), [(-2.0, "v_prediction"), (0.0, "epsilon"), (-0.5, "epsilon")])
def test_probe_on_constructed_models(offset: float, expected: str) -> None:
    assert probe_prediction_type(ConstantUNet(offset)) == expected


def test_probe_inputs_are_a1111s() -> None:
    seen = {}

    def unet(latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        seen.update(latents=latents.clone(), t=timesteps.tolist(), context=context.clone())
        return latents * 0

    assert probe_mean_difference(unet, in_channels=4, context_dim=8) == pytest.approx(-0.5)
    assert seen["t"] == [999]
    assert torch.all(seen["latents"] == 0.5) and seen["latents"].shape == (1, 4, 8, 8)
    assert torch.all(seen["context"] == 0.5) and seen["context"].shape == (1, 2, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_networks_compute_what_diffusers_would(kind: str, tiny_models: dict[str, Path], options: LoadOptions) -> None:
    """The loaded networks (our own, file key layout) against diffusers/transformers models of the same file."""
    from tests.support.diffusers_reference import reference_pipeline

    model = load_checkpoint(info(tiny_models[kind]), options)
    ref = reference_pipeline(tiny_models[kind], device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    parts, gen = model.components, torch.Generator().manual_seed(0)
    latents = torch.randn(2, parts.unet.config.in_channels, 8, 8, generator=gen)
    context = torch.randn(2, 77, parts.unet.config.cross_attention_dim, generator=gen)
    added = None
    if kind == "sdxl":
        pooled = torch.randn(2, ref.text_encoder_2.config.projection_dim, generator=gen)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    t = torch.tensor([999.0, 10.0])
    with torch.inference_mode():
        ours = parts.unet(latents, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        theirs = ref.unet(latents, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        assert (ours - theirs).abs().max() <= 1e-4 * max(1.0, float(theirs.abs().max()))
        z = torch.randn(1, 4, 8, 8, generator=gen)
        assert torch.allclose(parts.vae.decode(z).sample, ref.vae.decode(z).sample, atol=1e-4)
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
        for name in ("text_encoder", "text_encoder_2"):
            mine, other = getattr(parts, name), getattr(ref, name, None)
            if mine is None:
                continue
            a = mine(ids, output_hidden_states=True)
            b = other(input_ids=ids, output_hidden_states=True)
            assert torch.allclose(a.hidden_states[-2], b.hidden_states[-2], atol=1e-4)
            assert torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-4)


def save_modified(source: Path, dest: Path, edit) -> CheckpointInfo:
    from safetensors.torch import load_file, save_file

    state = load_file(source)
    edit(state)
    save_file(state, dest, metadata={"format": "pt"})
    shutil.copyfile(source.with_suffix(".yaml"), dest.with_suffix(".yaml"))
    return info(dest)


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight", r"text encoder \(clip-l\)"),
        ("model.diffusion_model.output_blocks.2.0.out_layers.3.weight", "UNet"),
        ("first_stage_model.decoder.up.1.block.0.conv1.bias", "VAE"),
    ],
)
def test_missing_weights_are_errors(
    key: str, what: str, tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path
) -> None:
    checkpoint = save_modified(tiny_models["sd1"], tmp_path / "holey.safetensors", lambda s: s.pop(key))
    with pytest.raises(CheckpointLoadError, match=rf"holey\.safetensors: 1 {what} weights missing") as err:
        load_checkpoint(checkpoint, options)
    assert str(err.value).endswith(f"from the file: {key}")  # the file's own key name


def test_unexpected_weights_are_reported(
    tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def add(state: dict) -> None:
        state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.extra.weight"] = torch.zeros(2)

    checkpoint = save_modified(tiny_models["sd1"], tmp_path / "extra.safetensors", add)
    with caplog.at_level(logging.WARNING):
        load_checkpoint(checkpoint, options)
    assert "1 unexpected UNet keys ignored" in caplog.text
    assert "extra.weight" in caplog.text


def test_wrong_shape_is_an_error(tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path) -> None:
    key = "first_stage_model.decoder.conv_out.bias"
    path = tmp_path / "bad.safetensors"
    checkpoint = save_modified(tiny_models["sd1"], path, lambda s: s.update({key: torch.ones(5)}))
    with pytest.raises(CheckpointLoadError, match=r"bad\.safetensors: VAE weights do not fit"):
        load_checkpoint(checkpoint, options)


def test_vae_attention_stored_as_linear_weights_loads(
    tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path
) -> None:
    """Files round-tripped through diffusers keep the VAE's attention q/k/v/proj_out as 2-D weights."""

    def flatten(state: dict) -> None:
        for key in [k for k in state if ".attn_1." in k and k.endswith(".weight") and state[k].dim() == 4]:
            state[key] = state[key][:, :, 0, 0].contiguous()

    flat = load_checkpoint(save_modified(tiny_models["sd1"], tmp_path / "flat.safetensors", flatten), options)
    reference = load_checkpoint(info(tiny_models["sd1"]), options)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(flat.components.vae.decode(z).sample, reference.components.vae.decode(z).sample)


def test_truncated_and_foreign_files(tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_models["sd1"].read_bytes()[:1_000_000])
    with pytest.raises(CheckpointLoadError, match=r"cut\.safetensors: truncated"):
        load_checkpoint(info(cut), options)
    lora = tmp_path / "lora.safetensors"
    raw = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    lora.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(UnknownModelTypeError, match="models/Lora"):
        load_checkpoint(info(lora), options)


def test_unsafe_ckpt_is_refused_by_the_loader(options: LoadOptions, tmp_path: Path) -> None:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(info(path), options)
    assert not (tmp_path / "pwned").exists()


def test_networks_are_built_while_a_safetensors_file_is_read(
    tiny_models: dict[str, Path], options: LoadOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The empty networks need only the header: they are built on another thread during the read (not after it)."""
    events: list[tuple[str, str]] = []
    real_read, real_build = loader.read_state_dict, loader.empty_networks
    started = threading.Event()

    def build(arch):
        events.append(("build", threading.current_thread().name))
        started.set()
        return real_build(arch)

    def read(*args, **kwargs):
        assert started.wait(10), "the networks were not being built while the file was read"
        events.append(("read", threading.current_thread().name))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(loader, "read_state_dict", read)
    monkeypatch.setattr(loader, "empty_networks", build)
    model = load_checkpoint(info(tiny_models["sdxl"]), options)
    assert [e[0] for e in events] == ["build", "read"]
    assert events[0][1].startswith("build-networks") and events[1][1] == threading.current_thread().name
    assert not [k for k, v in all_tensors(model).items() if v.device.type == "meta"]
    events.clear()
    load_checkpoint(info(tiny_models["sd1.ckpt"]), options)  # a pickle: the shapes come from the read itself
    assert [e[0] for e in events] == ["read"]


def test_mismatched_yaml_is_refused_before_reading(
    tiny_models: dict[str, Path], options: LoadOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "xl.safetensors"
    shutil.copyfile(tiny_models["sdxl"], target)
    shutil.copyfile(tiny_models["sd1"].with_suffix(".yaml"), target.with_suffix(".yaml"))
    reads: list[Path] = []
    monkeypatch.setattr(loader, "read_state_dict", lambda path, **_: reads.append(path) or {})
    with pytest.raises(CheckpointLoadError, match=r"xl\.safetensors: the yaml beside it does not match"):
        load_checkpoint(info(target), options)
    assert reads == []  # the header and the yaml decide it: gigabytes of tensors are not read for nothing


def test_model_manager_switch_frees_previous(tiny_models: dict[str, Path], options: LoadOptions) -> None:
    manager = ModelManager()
    first = manager.get(info(tiny_models["sd1"]), options)
    assert manager.get(info(tiny_models["sd1"]), options) is first
    old_pipe = weakref.ref(first.components)
    del first
    second = manager.get(info(tiny_models["sd2v"]), options)
    gc.collect()
    assert old_pipe() is None
    assert manager.current is second
    bf16_vae = LoadOptions(vae_dtype="bfloat16")
    reloaded = manager.get(info(tiny_models["sd2v"]), bf16_vae)
    assert reloaded is not second  # different options: reloaded
    assert reloaded.components.vae.dtype == torch.bfloat16 and reloaded.components.unet.dtype == torch.float32
    manager.unload()
    assert manager.current is None


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device(use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast") == (
        "cpu", "float32", "float32",
    )  # fmt: skip
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device(use_cpu_all=False, device_id=None, no_half=False, no_half_vae=False, precision="autocast") == (
        "mps", "float16", "float32",
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    configured = []
    monkeypatch.setattr(loader, "configure_allocator", lambda: configured.append(True))
    cases = {
        (False, False, "autocast", None): ("cuda", "float16", "float16"),
        (False, True, "autocast", 1): ("cuda:1", "float16", "float32"),
        (True, False, "autocast", None): ("cuda", "float32", "float32"),
        (False, False, "full", None): ("cuda", "float32", "float32"),
    }
    for (no_half, no_half_vae, precision, device_id), expected in cases.items():
        got = select_device(
            use_cpu_all=False, device_id=device_id, no_half=no_half, no_half_vae=no_half_vae, precision=precision
        )
        assert got == expected
    assert select_device(use_cpu_all=True, device_id=0, no_half=False, no_half_vae=False, precision="half")[0] == "cpu"
    assert len(configured) == len(cases)  # the allocator is set up whenever CUDA is chosen, never for the CPU
    flags = {"use_cpu_all": False, "device_id": None, "no_half_vae": False, "precision": "autocast", "bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert select_device(no_half=False, **flags) == ("cuda", "bfloat16", "float16")  # --bf16: UNet/text, not VAE
    assert select_device(no_half=True, **flags) == ("cuda", "float32", "float32")  # --no-half wins
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert select_device(no_half=False, **flags) == ("cuda", "float16", "float16")  # e.g. a T4: fp16, with a warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(no_half=False, **flags) == ("mps", "float16", "float32")  # CUDA only


def test_configure_allocator_leaves_user_settings_and_other_platforms_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[str] = []
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", applied.append, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert not loader.configure_allocator() and applied == []
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync")  # the newer name counts as well
    assert not loader.configure_allocator() and applied == []
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    for platform, cuda in (("win32", "13.0"), ("linux", None)):  # Windows has no expandable segments; ROCm builds
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setattr(torch.version, "cuda", cuda)
        assert not loader.configure_allocator() and applied == []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert loader.configure_allocator()
    assert applied == [loader.ALLOCATOR_SETTINGS]
    assert loader.ALLOCATOR_SETTINGS.startswith("expandable_segments:True,pinned_use_cuda_host_register:True")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == loader.ALLOCATOR_SETTINGS  # child processes inherit it


def test_unknown_dtype_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError, match="unknown dtype"):
        load_checkpoint(info(tiny_models["sd1"]), LoadOptions(dtype="float8"))


def test_read_state_dict_reads_only_model_keys_cast_on_arrival(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "mixed.safetensors"
    tensors = {
        "model.diffusion_model.w": torch.ones(2, 3, dtype=torch.float16),
        "first_stage_model.v": torch.ones(4, dtype=torch.float16),
        "cond_stage_model.t": torch.arange(3),  # integer: never cast
        "model_ema.w": torch.ones(1000),  # an EMA copy: not read
        "alphas_cumprod": torch.ones(1000),
    }
    save_file(tensors, path)
    state = read_state_dict(path, dtype=torch.float32, vae_dtype=torch.bfloat16)
    assert sorted(state) == ["cond_stage_model.t", "first_stage_model.v", "model.diffusion_model.w"]
    assert state["model.diffusion_model.w"].dtype == torch.float32
    assert state["first_stage_model.v"].dtype == torch.bfloat16
    assert state["cond_stage_model.t"].dtype == torch.int64
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert direct_mode(shapes, ModelType.SD1, LoadOptions(device="cpu")) is None  # only CUDA reads to VRAM
