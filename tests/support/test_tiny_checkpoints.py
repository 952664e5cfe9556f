"""Tests of the LDM test-checkpoint generator: real key layout, determinism, and a diffusers round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.support.ldm_keys import UnmappedKeyError, clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm
from tests.support.ldm_verify import read_state_dict
from tests.support.make_header_fixtures import HEADERS_DIR, header_files
from tests.support.tiny_checkpoints import (
    ALL_KINDS,
    KINDS,
    header_shapes,
    verify_roundtrip,
    write_checkpoint,
    yaml_text,
)


def load_header(kind: str, size: str) -> dict[str, list[int]]:
    return json.loads((HEADERS_DIR / f"{kind}-{size}.json").read_text(encoding="utf-8"))


# Keys and shapes of the real files (v1-5-pruned-emaonly, 768-v-ema, sd-v1-5-inpainting, sd_xl_base_1.0).
REAL_SHAPES = {
    "sd1": {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
        "model.diffusion_model.input_blocks.3.0.op.weight": [320, 320, 3, 3],
        "model.diffusion_model.middle_block.1.proj_in.weight": [1280, 1280, 1, 1],
        "model.diffusion_model.output_blocks.2.1.conv.weight": [1280, 1280, 3, 3],
        "model.diffusion_model.output_blocks.5.2.conv.weight": [1280, 1280, 3, 3],
        "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
        "model.diffusion_model.time_embed.0.weight": [1280, 320],
        "first_stage_model.decoder.up.3.block.0.conv1.weight": [512, 512, 3, 3],
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": [128, 256, 1, 1],
        "first_stage_model.encoder.mid.attn_1.q.weight": [512, 512, 1, 1],
        "first_stage_model.quant_conv.weight": [8, 8, 1, 1],
        "cond_stage_model.transformer.text_model.embeddings.position_ids": [1, 77],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": [3072, 768],
        "alphas_cumprod": [1000],
        "model_ema.decay": [],
    },
    "sd2v": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": [320, 320],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 1024],
        "cond_stage_model.model.positional_embedding": [77, 1024],
        "cond_stage_model.model.text_projection": [1024, 1024],
        "cond_stage_model.model.logit_scale": [],
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": [3072, 1024],
        "cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.weight": [4096, 1024],
    },
    "sd1-inpaint": {"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3]},
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": [1280, 2048],
        "model.diffusion_model.output_blocks.2.2.conv.weight": [1280, 1280, 3, 3],
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": [1, 77],
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": [3840, 1280],
        "conditioner.embedders.1.model.text_projection": [1280, 1280],
        "first_stage_model.post_quant_conv.weight": [4, 4, 1, 1],
    },
    "sdxl-refiner": {
        "model.diffusion_model.input_blocks.0.0.weight": [384, 4, 3, 3],
        "model.diffusion_model.label_emb.0.0.weight": [1536, 2560],
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight": [768, 1280],
        "conditioner.embedders.0.model.transformer.resblocks.31.attn.in_proj_weight": [3840, 1280],
    },
}
FULL_TENSOR_COUNTS = {"sd1": 1145, "sd1-inpaint": 1145, "sd2v": 1242, "sdxl": 2515}
TINY_TENSOR_COUNTS = {"sd1": 1139, "sd1-inpaint": 1139, "sd2v": 1236, "sdxl": 1449}


@pytest.mark.parametrize("kind", sorted(REAL_SHAPES))
def test_full_header_has_real_keys_and_shapes(kind):
    header = load_header(kind, "full")
    for key, shape in REAL_SHAPES[kind].items():
        assert header.get(key) == shape, key


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_counts(kind):
    assert len(load_header(kind, "full")) == FULL_TENSOR_COUNTS[kind]
    assert len(load_header(kind, "tiny")) == TINY_TENSOR_COUNTS[kind]


def test_tiny_keys_are_real_keys():
    """Tiny files differ from real ones only where widths do: skip_connection / nin_shortcut and SDXL depth."""
    for kind in ("sd1", "sd2v", "sd1-inpaint"):
        tiny, full = set(load_header(kind, "tiny")), set(load_header(kind, "full"))
        assert tiny <= full
        assert {k.split(".")[-2] for k in full - tiny} == {"skip_connection", "nin_shortcut"}
    assert set(load_header("sdxl", "tiny")) <= set(load_header("sdxl", "full"))


def test_header_fixtures_are_up_to_date():
    stale = [name for name, text in header_files().items() if (HEADERS_DIR / name).read_text("utf-8") != text]
    assert not stale, "run python -m tests.support.make_header_fixtures"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_yaml_loads_with_omegaconf(kind):
    for size in ("tiny", "full"):
        config = OmegaConf.create(yaml_text(kind, size))
        assert config.model.target.startswith(("ldm.", "sgm."))
    if kind.startswith("sd1") or kind.startswith("sd2"):
        assert OmegaConf.create(yaml_text(kind, "tiny")).model.params.image_size == 8


def test_mapping_rejects_unknown_keys():
    weight = torch.zeros(1)
    with pytest.raises(UnmappedKeyError):
        unet_to_ldm({"down_blocks.0.resnets.0.new_layer.weight": weight}, 2)
    with pytest.raises(UnmappedKeyError):
        unet_to_ldm({"down_blocks.0.resnets.2.conv1.weight": weight}, 2)
    with pytest.raises(UnmappedKeyError):
        vae_to_ldm({"decoder.up_blocks.0.resnets.0.time_emb_proj.weight": weight}, 4)
    with pytest.raises(UnmappedKeyError):
        clip_to_ldm({"text_projection.weight": weight}, "cond_stage_model.transformer.")
    with pytest.raises(UnmappedKeyError):
        openclip_to_ldm({"text_model.encoder.layers.0.self_attn.q_proj.weight": weight}, "m.")


def test_header_shapes_match_written_file(tiny_models):
    saved = read_state_dict(tiny_models["sdxl"])
    assert {k: list(v.shape) for k, v in saved.items()} == header_shapes("sdxl", "tiny")
    assert saved["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert {v.dtype for k, v in saved.items() if "position_ids" not in k} == {torch.float16}


def test_same_seed_gives_identical_bytes(tmp_path, tiny_models):
    # The fixture wrote sd1 with seed 0 (its index in KINDS); the .ckpt zip records its file stem, so keep the name.
    again = write_checkpoint("sd1", tmp_path / "sd1.safetensors", seed=0)
    assert again.read_bytes() == tiny_models["sd1"].read_bytes()
    assert (
        (tmp_path / "sd1.yaml").read_text()
        == yaml_text("sd1", "tiny")
        == tiny_models["sd1"].with_suffix(".yaml").read_text()
    )
    again = write_checkpoint("sd1", tmp_path / "sd1-ckpt.ckpt", seed=0, write_yaml=False)
    assert again.read_bytes() == tiny_models["sd1.ckpt"].read_bytes()
    assert not (tmp_path / "sd1-ckpt.yaml").exists()
    other = write_checkpoint("sd1", tmp_path / "seed1.safetensors", seed=1, write_yaml=False)
    assert other.read_bytes() != tiny_models["sd1"].read_bytes()


def test_ckpt_is_lightning_style(tiny_models):
    data = torch.load(tiny_models["sd2v.ckpt"], map_location="cpu", weights_only=True)
    assert {k: v for k, v in data.items() if k != "state_dict"} == {"global_step": 0, "epoch": 0, "seed": 1}
    assert data["state_dict"].keys() == read_state_dict(tiny_models["sd2v"]).keys()


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_through_diffusers(tiny_models, kind):
    verify_roundtrip(tiny_models[kind])  # config folder and (SD1/SD2) original_config=yaml
    # Same tensors as the .safetensors: what differs is reading the file, not the config route.
    verify_roundtrip(tiny_models[f"{kind}.ckpt"], routes=("config",))


def copy_model(src: Path, dst: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(dst), metadata={"format": "pt"})
    dst.with_suffix(".yaml").write_text(src.with_suffix(".yaml").read_text())
    return dst


def test_roundtrip_reports_tensors_the_loader_ignores(tiny_models, tmp_path):
    state = read_state_dict(tiny_models["sd1"])
    state["model.diffusion_model.input_blocks.1.0.extra.weight"] = torch.zeros(3)
    path = copy_model(tiny_models["sd1"], tmp_path / "extra.safetensors", state)
    with pytest.raises(AssertionError, match=r"input_blocks.1.0.extra.weight: in the file but not loaded"):
        verify_roundtrip(path, routes=("config",))


def test_roundtrip_detects_a_mapping_that_disagrees_with_diffusers(tiny_models, monkeypatch):
    """A wrong LDM numbering of the VAE decoder levels (same shapes at tiny size) must show as differing values."""
    import tests.support.ldm_verify as ldm_verify

    def swapped_levels(state, levels):
        renamed = vae_to_ldm(state, levels)
        swap = {"decoder.up.1.": "decoder.up.2.", "decoder.up.2.": "decoder.up.1."}
        out = {}
        for key, value in renamed.items():
            for old, new in swap.items():
                if old in key:
                    key = key.replace(old, new)
                    break
            out[key] = value
        return out

    monkeypatch.setattr(ldm_verify, "vae_to_ldm", swapped_levels)
    with pytest.raises(AssertionError, match=r"decoder.up.[12].block.0.conv1.weight: values differ"):
        verify_roundtrip(tiny_models["sd1"], routes=("config",))
