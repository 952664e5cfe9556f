"""weights: the loaded model's weights by checkpoint key (fused ones as row views), changed in place, restored."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from modules.engine.components import IGNORED_KEYS
from modules.engine.pipeline import generate
from modules.engine.types import GenerationRequest
from modules.engine.weights import WeightPatch, weight_views
from modules.errors import WeightPatchError
from tests.support.tiny_checkpoints import ldm_state_dict, save_checkpoint, write_yaml

NETWORKS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
REQUEST = GenerationRequest(prompt="a red cat", negative_prompt="blurry", steps=3, width=64, height=64, seed=11)
# What a LoRA changes (attention q/k/v/out of the UNet and the text encoders, feed-forward, convolutions), plus the VAE
CHANGED = re.compile(
    r"(attn[12]\.to_(q|k|v|out\.0)\.weight|self_attn\.(q|k|v|out)_proj\.(weight|bias)|attn\.in_proj_weight"
    r"|mlp\.(fc1|c_fc)\.weight|in_layers\.2\.weight|decoder\.conv_in\.weight)$"
)


def _image(model) -> np.ndarray:
    return np.asarray(generate(model, REQUEST).images[0], dtype=np.int16)


def _pointers(model) -> dict[str, int]:
    return {
        f"{name}.{key}": tensor.data_ptr()
        for name, net in model.components.models().items()
        for key, tensor in net.state_dict(keep_vars=True).items()
    }


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def checkpoint(request, tmp_path_factory):
    """A float32 tiny checkpoint, the changes to merge, and the same checkpoint with them merged into the file."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    state = ldm_state_dict(kind, "tiny", dtype=torch.float32, seed=3)
    generator = torch.Generator().manual_seed(5)
    deltas = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in state.items() if CHANGED.search(k)}
    merged = dict(state)
    for key, delta in deltas.items():
        merged[key] = state[key] + delta * 0.75
    paths = []
    for name, tensors in (("base", state), ("merged", merged)):
        path = save_checkpoint({k: v.contiguous() for k, v in tensors.items()}, folder / f"{kind}-{name}.safetensors")
        write_yaml(kind, path, "tiny")
        paths.append(path)
    return kind, state, deltas, *paths


def test_every_checkpoint_weight_has_a_view_into_the_model(checkpoint, load_tiny):
    kind, state, deltas, base, _ = checkpoint
    model = load_tiny(base)
    views = weight_views(model.components)
    assert any(".to_qkv." in k for k in _pointers(model))  # the UNet's projections are fused after the load
    assert {k for k in deltas if ".to_q.weight" in k} <= set(views)  # yet each has its own view by the file's key
    storages = {t.untyped_storage().data_ptr() for t in model.components.unet.parameters()}
    for key, tensor in state.items():
        if IGNORED_KEYS.search(key) or not key.startswith(NETWORKS):  # schedule buffers live outside the networks
            continue
        assert key in views, key
        assert torch.equal(views[key], tensor), key  # the file's value, at the file's key
        if key.startswith("model.diffusion_model."):
            assert views[key].untyped_storage().data_ptr() in storages, key  # not a copy
    assert set(views) <= set(state)
    assert len(views) > 100
    assert kind != "sdxl" or any(k.startswith("conditioner.embedders.1.model.") for k in deltas)


def test_a_patch_gives_the_merged_files_images_in_place_and_restores_the_original_exactly(checkpoint, load_tiny):
    _, _, deltas, base, merged = checkpoint
    model = load_tiny(base)
    before = _image(model)
    pointers = _pointers(model)
    patch = WeightPatch()
    patch.add(model.components, deltas, scale=0.75)
    changed = _image(model)
    assert _pointers(model) == pointers  # nothing moved: graphs and compiled kernels read the new values
    assert np.abs(changed - before).max() > 0
    assert np.array_equal(changed, _image(load_tiny(merged)))  # exactly what the merged file generates
    assert patch.restore(model.components) == len(deltas)
    assert np.array_equal(_image(model), before)
    assert _pointers(model) == pointers and patch.changed == set()
    kept = {key: original.data_ptr() for key, original in patch.originals.items()}
    assert set(kept) == set(deltas)  # kept for the next change of the same weights
    patch.add(model.components, deltas, scale=0.75)  # from the kept originals: the same merge again
    assert np.array_equal(_image(model), changed)
    assert {key: original.data_ptr() for key, original in patch.originals.items()} == kept  # nothing copied anew
    assert patch.restore(model.components) == len(deltas) and patch.restore(model.components) == 0
    assert np.array_equal(_image(model), before)


def test_a_patch_that_does_not_fit_changes_nothing(checkpoint, load_tiny):
    _, _, deltas, base, _ = checkpoint
    model = load_tiny(base)
    key = next(iter(deltas))
    original = weight_views(model.components)[key].clone()
    patch = WeightPatch()
    with pytest.raises(WeightPatchError, match=r"not in the loaded model.*lora_unet_nothing"):
        patch.add(model.components, {key: deltas[key], "lora_unet_nothing.weight": torch.zeros(1)})
    with pytest.raises(WeightPatchError, match=r"a change of shape \(2, 2\)"):
        patch.add(model.components, {key: deltas[key], next(reversed(deltas)): torch.zeros(2, 2)})
    assert torch.equal(weight_views(model.components)[key], original) and patch.originals == {}
