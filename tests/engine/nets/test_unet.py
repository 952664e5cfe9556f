"""Our UNet (modules/engine/nets/unet.py) against diffusers' UNet2DConditionModel on the tiny checkpoints.

Both are built from the config the app derives from the file's shapes; the reference is filled the way the app used
to (diffusers' ``convert_ldm_unet_checkpoint``), ours by the file's own key names (prefix removed) on the meta device.
"""

from __future__ import annotations

import ast
import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from modules.engine.architecture import unet_config_from_shapes
from modules.engine.detection import detect_model_type
from modules.engine.nets.unet import UNet, UNetConfig, UNetOutput
from modules.engine.types import ModelType
from tests.support.tiny_checkpoints import ALL_KINDS, layout_for, ldm_state_dict

PREFIX = "model.diffusion_model."
BATCH = 2
TOKENS = 7
NETS_DIR = Path(__file__).resolve().parents[3] / "modules" / "engine" / "nets"


@functools.cache
def _checkpoint(kind: str) -> tuple[dict[str, Any], ModelType, dict[str, torch.Tensor]]:
    """The app's UNet config, model type and UNet weights (prefix removed, fp32) of one tiny checkpoint."""
    state = ldm_state_dict(kind, dtype=torch.float32)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    model_type = detect_model_type(shapes)
    weights = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    return unet_config_from_shapes(shapes, model_type), model_type, weights


@functools.cache
def _reference(kind: str, yaml_heads: bool = False) -> UNet2DConditionModel:
    """diffusers' UNet for the kind (app config, or the yaml's head counts), filled via its LDM converter."""
    config, _, weights = _checkpoint(kind)
    if yaml_heads:
        config = dict(layout_for(kind).unet)
    ref = UNet2DConditionModel.from_config(config)
    ldm = {PREFIX + k: v for k, v in weights.items()}
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, ref.config), strict=True)
    return ref.eval().requires_grad_(False)


def _ours(kind: str, config: Mapping[str, Any] | None = None) -> UNet:
    """Our UNet built on the meta device and filled by name with ``assign=True``."""
    app_config, _, weights = _checkpoint(kind)
    with torch.device("meta"):
        unet = UNet(config or app_config)
    unet.load_state_dict(weights, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def _inputs(kind: str, height: int = 16, width: int = 16, seed: int = 0) -> dict[str, Any]:
    """Random latents, context and (SDXL) added conditioning for one call, batch 2."""
    config, model_type, _ = _checkpoint(kind)
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, Any] = {
        "sample": torch.randn(BATCH, config["in_channels"], height, width, generator=gen),
        "encoder_hidden_states": torch.randn(BATCH, TOKENS, config["cross_attention_dim"], generator=gen),
        "added_cond_kwargs": None,
    }
    if config.get("addition_embed_type") == "text_time":
        ids = (
            [1024.0, 1024.0, 0.0, 0.0, 6.0] if model_type is ModelType.SDXL_REFINER else [1024.0, 768, 0, 0, 1024, 768]
        )
        pooled = config["projection_class_embeddings_input_dim"] - 256 * len(ids)
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(BATCH, pooled, generator=gen),
            "time_ids": torch.tensor([ids] * BATCH),
        }
    return inputs


def _max_diff(ours: torch.nn.Module, ref: torch.nn.Module, inputs: dict[str, Any], timestep: Any) -> float:
    """Return max |ours - ref| / max(1, max |ref|) for one call."""
    with torch.inference_mode():
        expected = ref(timestep=timestep, **inputs).sample
        got = ours(timestep=timestep, **inputs).sample
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    return ((got - expected).abs().max() / max(1.0, expected.abs().max().item())).item()


TIMESTEPS = {
    "float 999.0": 999.0,
    "0-d 1.5": torch.tensor(1.5),
    "(B,) int": torch.tensor([10, 500]),
}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_matches_diffusers(kind: str) -> None:
    ours, ref, inputs = _ours(kind), _reference(kind), _inputs(kind)
    diffs = {name: _max_diff(ours, ref, inputs, t) for name, t in TIMESTEPS.items()}
    print(f"{kind}: {diffs}")  # shown with -s
    assert max(diffs.values()) <= 1e-4, diffs


@pytest.mark.parametrize("kind", ["sd2v", "sdxl", "sdxl-refiner"])
def test_matches_diffusers_with_several_heads(kind: str) -> None:
    """The yaml's head counts (16 channels per head: 2 to 4 heads) with linear projections."""
    config = dict(layout_for(kind).unet)
    diff = _max_diff(_ours(kind, config), _reference(kind, yaml_heads=True), _inputs(kind), torch.tensor(321.0))
    assert diff <= 1e-4


@pytest.mark.parametrize(("kind", "height", "width"), [("sd1", 9, 5), ("sdxl", 10, 6), ("sd2v", 9, 7)])
def test_odd_latent_size_matches_diffusers(kind: str, height: int, width: int) -> None:
    inputs = _inputs(kind, height, width, seed=1)
    diff = _max_diff(_ours(kind), _reference(kind), inputs, torch.tensor(500.0))
    assert diff <= 1e-4


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_channels_last_gives_the_same_output(kind: str) -> None:
    ours = _ours(kind)
    inputs = _inputs(kind)
    nhwc = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    inputs_nhwc = dict(inputs, sample=inputs["sample"].to(memory_format=torch.channels_last))
    with torch.inference_mode():
        expected = ours(timestep=torch.tensor(700.0), **inputs).sample
        got = nhwc(timestep=torch.tensor(700.0), **inputs_nhwc).sample
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_fused_projections_give_the_same_output(kind: str) -> None:
    """Merged q/k/v and k/v matmuls (the GPU default) compute what the separate ones do, with the same weights."""
    ours, inputs = _ours(kind), _inputs(kind, seed=2)
    fused = copy.deepcopy(ours)
    fused.fuse_projections()
    fused.fuse_projections()  # idempotent
    keys = fused.state_dict().keys()
    assert any(k.endswith("attn1.to_qkv.weight") for k in keys) and any(k.endswith("attn2.to_kv.weight") for k in keys)
    assert not any(k.endswith(("attn1.to_q.weight", "attn2.to_k.weight")) for k in keys)
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in ours.parameters())
    assert _max_diff(fused, ours, inputs, torch.tensor(400.0)) <= 1e-5


def test_state_dict_keys_are_the_checkpoint_keys() -> None:
    for kind in ("sd1", "sdxl-refiner"):
        _, _, weights = _checkpoint(kind)
        with torch.device("meta"):
            unet = UNet(_checkpoint(kind)[0])
        assert set(unet.state_dict()) == set(weights)
        assert not list(unet.buffers())


def test_strict_load_reports_missing_and_unexpected_keys() -> None:
    config, _, weights = _checkpoint("sdxl")
    with torch.device("meta"):
        unet = UNet(config)
    partial = {k: v for k, v in weights.items() if k != "label_emb.0.2.weight"}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*label_emb\.0\.2\.weight"):
        unet.load_state_dict(partial, strict=True, assign=True)
    extra = dict(weights, **{"input_blocks.99.0.weight": torch.zeros(1)})
    with torch.device("meta"):
        unet = UNet(config)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*input_blocks\.99"):
        unet.load_state_dict(extra, strict=True, assign=True)


def test_fp16_model_with_fp32_timesteps() -> None:
    ours = _ours("sdxl")
    inputs = _inputs("sdxl")
    half = copy.deepcopy(ours).half()
    inputs_half = {
        "sample": inputs["sample"].half(),
        "encoder_hidden_states": inputs["encoder_hidden_states"].half(),
        "added_cond_kwargs": {k: v.half() for k, v in inputs["added_cond_kwargs"].items()},
    }
    with torch.inference_mode():
        expected = ours(timestep=torch.tensor([999.0, 999.0]), **inputs).sample
        got = half(timestep=torch.tensor([999.0, 999.0]), **inputs_half).sample
    assert got.dtype == torch.float16
    assert half.dtype == torch.float16
    assert (got.float() - expected).abs().max().item() <= 2e-2 * max(1.0, expected.abs().max().item())


def test_call_forms_and_output() -> None:
    ours = _ours("sd1")
    inputs = _inputs("sd1", 8, 8)
    with torch.inference_mode():
        out = ours(inputs["sample"], 500, inputs["encoder_hidden_states"])
        as_tuple = ours(inputs["sample"], torch.tensor([500.0]), inputs["encoder_hidden_states"], return_dict=False)
    assert isinstance(out, UNetOutput)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(out.sample, as_tuple[0])
    assert ours.device == torch.device("cpu") and ours.dtype == torch.float32


def test_sdxl_without_added_conditioning_is_refused() -> None:
    inputs = dict(_inputs("sdxl", 8, 8), added_cond_kwargs=None)
    with pytest.raises(ValueError, match="text_embeds"):
        _ours("sdxl")(timestep=1.0, **inputs)


def test_config_reads_like_diffusers() -> None:
    config, _, _ = _checkpoint("sdxl")
    unet = _ours("sdxl")
    assert unet.config.in_channels == 4
    assert unet.config.cross_attention_dim == config["cross_attention_dim"]
    assert unet.config.sample_size == config["sample_size"]
    assert unet.config.block_out_channels == tuple(config["block_out_channels"])
    assert unet.config.addition_time_embed_dim == 256
    assert unet.config["in_channels"] == 4
    assert _ours("sd1").config.addition_embed_type is None
    yaml_config = UNetConfig.from_mapping(layout_for("sd2v").unet)
    assert yaml_config._class_name == "UNet2DConditionModel"  # extra keys stay readable
    assert yaml_config.to_dict()["attention_head_dim"] == (2, 4, 4, 4)
    with pytest.raises(AttributeError):
        _ = unet.config.no_such_key


@pytest.mark.parametrize(
    "change",
    [
        {"attention_head_dim": [8, 8]},
        {"class_embed_type": "timestep"},
        {"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4},
        {"addition_embed_type": "text"},
    ],
)
def test_unsupported_configs_are_refused(change: dict[str, Any]) -> None:
    config, _, _ = _checkpoint("sd1")
    with pytest.raises(ValueError, match="UNet config"):
        UNetConfig.from_mapping({**config, **change})


def test_nets_do_not_import_diffusers() -> None:
    banned = {"diffusers", "transformers", "accelerate"}
    for path in (NETS_DIR / "unet.py", NETS_DIR / "unet_blocks.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"
