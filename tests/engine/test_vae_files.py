"""sd_vae: a VAE file in place of the checkpoint's own; images equal a checkpoint with that VAE baked in."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.engine.networks import Networks
from modules.engine.pipeline import generate
from modules.engine.types import GenerationOptions, GenerationRequest
from modules.engine.vae_files import VaeLibrary
from modules.errors import InvalidRequestError
from tests.support.tiny_checkpoints import ldm_state_dict, save_checkpoint, write_yaml

PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A checkpoint, another VAE as standalone files (.safetensors without prefix, .pt), and the checkpoint with it."""
    root = tmp_path_factory.mktemp("vae")
    state = ldm_state_dict("sd1", "tiny", dtype=torch.float32, seed=2)
    other = ldm_state_dict("sd1", "tiny", dtype=torch.float32, seed=5)
    vae = {k[len(PREFIX) :]: v for k, v in other.items() if k.startswith(PREFIX)}
    folder = root / "models" / "VAE"
    (folder / "sub").mkdir(parents=True)
    save_file(vae, str(folder / "sub" / "other.safetensors"))
    torch.save(
        {"state_dict": {PREFIX + k: v for k, v in vae.items()}, "loss.logvar": torch.zeros(())}, folder / "other.pt"
    )
    baked = {**state, **{PREFIX + k: v for k, v in vae.items()}}
    paths = {}
    for name, tensors in (("base", state), ("baked", baked)):
        paths[name] = save_checkpoint(tensors, root / f"{name}.safetensors")
        write_yaml("sd1", paths[name], "tiny")
    return VaeLibrary(folder), paths, folder


def _image(model, vae: str, library: VaeLibrary | None) -> tuple[np.ndarray, str]:
    request = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=8)
    result = generate(model, request, GenerationOptions(vae=vae), networks=Networks(vaes=library))
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def test_a_vae_file_gives_the_baked_checkpoints_image_and_none_gives_the_own_back(case, load_tiny):
    library, paths, folder = case
    model = load_tiny(paths["base"])
    own, own_info = _image(model, "None", library)
    assert "VAE hash" not in own_info
    swapped, info = _image(model, "other.safetensors", library)
    baked, _ = _image(load_tiny(paths["baked"]), "None", library)
    assert np.abs(swapped - own).max() > 0 and np.array_equal(swapped, baked)
    digest = hashlib.sha256((folder / "sub" / "other.safetensors").read_bytes()).hexdigest()
    assert f"VAE hash: {digest[:10]}, VAE: other.safetensors" in info
    assert np.array_equal(_image(model, "other.pt", library)[0], baked)  # the .pt form, its training leftovers ignored
    assert np.array_equal(_image(model, "None", library)[0], own)  # the checkpoint's own, exactly
    assert np.array_equal(_image(model, "Automatic", library)[0], own)  # nothing named after the checkpoint


def test_automatic_takes_the_vae_named_after_the_checkpoint(case, load_tiny, tmp_path):
    library, paths, folder = case
    model = load_tiny(paths["base"])
    beside = paths["base"].with_name("base.vae.safetensors")
    beside.write_bytes((folder / "sub" / "other.safetensors").read_bytes())
    try:
        image, info = _image(model, "Automatic", library)
        assert "VAE: base.vae.safetensors" in info
        assert np.array_equal(image, _image(load_tiny(paths["baked"]), "None", library)[0])
    finally:
        beside.unlink()
    assert "VAE:" not in _image(model, "Automatic", library)[1]


def test_bad_vae_choices_are_clear_errors_and_the_model_keeps_its_vae(case, load_tiny, tmp_path):
    library, paths, _ = case
    model = load_tiny(paths["base"])
    own, _ = _image(model, "None", library)
    with pytest.raises(InvalidRequestError, match=r"sd_vae: 'missing\.pt' is not in .*other\.pt, other\.safetensors"):
        _image(model, "missing.pt", library)
    bad = tmp_path / "VAE"
    bad.mkdir()
    save_file({"decoder.up_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, str(bad / "diffusers.safetensors"))
    save_file({"decoder.up.0.block.0.conv1.weight": torch.zeros(1)}, str(bad / "small.safetensors"))
    with pytest.raises(InvalidRequestError, match="not a VAE in the original"):
        _image(model, "diffusers.safetensors", VaeLibrary(bad))
    with pytest.raises(InvalidRequestError, match="does not fit this model's VAE"):
        _image(model, "small.safetensors", VaeLibrary(bad))
    assert np.array_equal(_image(model, "None", library)[0], own)
    assert sorted(library.files()) == ["other.pt", "other.safetensors"]


def test_a_forced_vae_file_is_used_whatever_the_setting_says(case, load_tiny, tmp_path):
    library, paths, folder = case
    model = load_tiny(paths["base"])
    forced = tmp_path / "elsewhere" / "forced.pt"  # --vae-path: any file, not only one of models/VAE
    forced.parent.mkdir()
    forced.write_bytes((folder / "other.pt").read_bytes())
    baked, _ = _image(load_tiny(paths["baked"]), "None", library)
    for setting in ("None", "Automatic", "other.safetensors", "not-a-file.pt"):
        image, info = _image(model, setting, VaeLibrary(folder, forced=forced))
        assert np.array_equal(image, baked) and "VAE: forced.pt" in info, setting
    assert np.abs(_image(model, "None", library)[0] - baked).max() > 0  # without it: the checkpoint's own again
