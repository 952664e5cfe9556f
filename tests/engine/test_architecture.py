"""Architecture from yaml and from shapes (they must agree), yaml/shape mismatches, and the config folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.engine.architecture import (
    TEXT_SIZE_FIELDS,
    UNET_SIZE_FIELDS,
    VAE_SIZE_FIELDS,
    architecture_from_shapes,
)
from modules.engine.detection import detect_model_type
from modules.engine.ldm_yaml import architecture_from_yaml, build_architecture, load_yaml
from modules.engine.types import ModelType
from modules.errors import CheckpointLoadError
from tests.support.config_folder import model_index, write_config_folder
from tests.support.tiny_checkpoints import ALL_KINDS, write_yaml

HEADERS = Path(__file__).resolve().parents[1] / "fixtures" / "headers"

# Real-size yamls, with the structure (and the values that matter) of the official files.
V1_INFERENCE = """
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    image_size: 64
    channels: 4
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 768
        use_checkpoint: True
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [ 1, 2, 4, 4 ]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""

V2_INFERENCE_V = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    image_size: 96
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128,
                   ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0}
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""

SD_XL_BASE = """
model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    disable_first_stage_autocast: True
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        num_idx: 1000
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        adm_in_channels: 2816
        num_classes: sequential
        use_checkpoint: True
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 4]
        num_head_channels: 64
        use_linear_in_transformer: True
        transformer_depth: [1, 2, 10]
        context_dim: 2048
        spatial_transformer_attn_type: softmax-xformers
    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
            params: {layer: hidden, layer_idx: 11}
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2
            params: {arch: ViT-bigG-14, version: laion2b_s39b_b160k, freeze: True, layer: penultimate,
                     always_return_pooled: True, legacy: False}
          - is_trainable: False
            input_key: original_size_as_tuple
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params: {outdim: 256}
          - is_trainable: False
            input_key: crop_coords_top_left
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params: {outdim: 256}
          - is_trainable: False
            input_key: target_size_as_tuple
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params: {outdim: 256}
    first_stage_config:
      target: sgm.models.autoencoder.AutoencoderKLInferenceWrapper
      params:
        embed_dim: 4
        ddconfig: {attn_type: vanilla-xformers, double_z: true, z_channels: 4, resolution: 256, in_channels: 3,
                   out_ch: 3, ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0}
"""


def header(kind: str, size: str) -> dict[str, list[int]]:
    return json.loads((HEADERS / f"{kind}-{size}.json").read_text())


def real_yaml(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "real.yaml"
    path.write_text(text)
    return load_yaml(path)


def sizes(config: dict, fields: tuple[str, ...]) -> dict:
    return {f: config.get(f) for f in fields}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tiny_yaml_and_shapes_agree_on_every_size(kind: str, tmp_path: Path) -> None:
    shapes = header(kind, "tiny")
    model_type = detect_model_type(shapes)
    from_yaml = architecture_from_yaml(shapes, model_type, load_yaml(write_yaml(kind, tmp_path / "k.yaml")))
    from_shapes = architecture_from_shapes(shapes, model_type)
    assert sizes(from_yaml.unet, UNET_SIZE_FIELDS) == sizes(from_shapes.unet, UNET_SIZE_FIELDS)
    assert sizes(from_yaml.vae, VAE_SIZE_FIELDS) == sizes(from_shapes.vae, VAE_SIZE_FIELDS)
    assert [sizes(t.config, TEXT_SIZE_FIELDS) for t in from_yaml.text_encoders] == [
        sizes(t.config, TEXT_SIZE_FIELDS) for t in from_shapes.text_encoders
    ]
    assert from_yaml.pipeline_class == from_shapes.pipeline_class
    # What shapes cannot tell comes from the yaml: the tiny yamls' head counts and image size.
    assert from_yaml.unet["sample_size"] == (128 if model_type.is_sdxl else 8)
    assert all(t.config["num_attention_heads"] in (2, 3) for t in from_yaml.text_encoders)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_full_size_yaml_equals_shapes(kind: str, tmp_path: Path) -> None:
    shapes = header(kind, "full")
    model_type = detect_model_type(shapes)
    from_yaml = architecture_from_yaml(shapes, model_type, load_yaml(write_yaml(kind, tmp_path / "k.yaml", "full")))
    from_shapes = architecture_from_shapes(shapes, model_type)
    unet_yaml = {k: v for k, v in from_yaml.unet.items() if k != "sample_size"}
    assert unet_yaml == {k: v for k, v in from_shapes.unet.items() if k != "sample_size"}
    assert from_yaml.vae == {**from_shapes.vae, "sample_size": from_yaml.vae["sample_size"]}
    assert [t.config for t in from_yaml.text_encoders] == [t.config for t in from_shapes.text_encoders]


def test_real_v1_yaml(tmp_path: Path) -> None:
    arch = architecture_from_yaml(header("sd1", "full"), ModelType.SD1, real_yaml(tmp_path, V1_INFERENCE))
    assert arch.pipeline_class == "StableDiffusionPipeline"
    assert arch.unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert arch.unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert arch.unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert arch.unet["attention_head_dim"] == 8
    assert arch.unet["cross_attention_dim"] == 768
    assert arch.unet["use_linear_projection"] is False
    assert arch.unet["sample_size"] == 64
    assert arch.vae["block_out_channels"] == [128, 256, 512, 512]
    assert arch.vae["scaling_factor"] == 0.18215
    (clip,) = arch.text_encoders
    assert (clip.family, clip.model_class, clip.pad_token) == ("clip-l", "CLIPTextModel", "<|endoftext|>")
    assert sizes(clip.config, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")) == {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    }  # fmt: skip
    assert clip.config["hidden_act"] == "quick_gelu"
    assert arch.scheduler["prediction_type"] == "epsilon"
    assert (arch.scheduler["beta_start"], arch.scheduler["beta_end"]) == (0.00085, 0.012)


def test_real_v2_v_yaml(tmp_path: Path) -> None:
    arch = architecture_from_yaml(header("sd2v", "full"), ModelType.SD2, real_yaml(tmp_path, V2_INFERENCE_V))
    assert arch.prediction_known
    assert arch.scheduler["prediction_type"] == "v_prediction"
    assert arch.unet["attention_head_dim"] == [5, 10, 20, 20]
    assert arch.unet["use_linear_projection"] is True
    assert arch.unet["cross_attention_dim"] == 1024
    assert arch.unet["sample_size"] == 96
    (openclip,) = arch.text_encoders
    assert openclip.pad_token == "!"
    assert openclip.config["num_hidden_layers"] == 23  # penultimate layer: the 24th saved layer is not built
    assert (openclip.config["hidden_size"], openclip.config["num_attention_heads"]) == (1024, 16)
    assert openclip.config["hidden_act"] == "gelu"


def test_real_sdxl_yaml(tmp_path: Path) -> None:
    arch = architecture_from_yaml(header("sdxl", "full"), ModelType.SDXL, real_yaml(tmp_path, SD_XL_BASE))
    assert arch.pipeline_class == "StableDiffusionXLPipeline"
    assert arch.unet["addition_embed_type"] == "text_time"
    assert arch.unet["projection_class_embeddings_input_dim"] == 2816
    assert arch.unet["attention_head_dim"] == [5, 10, 20]
    assert arch.unet["transformer_layers_per_block"] == [10, 2, 10]  # level 0 has no attention; filler = mid depth
    assert arch.unet["sample_size"] == 128
    assert arch.vae["scaling_factor"] == 0.13025
    clip_l, bigg = arch.text_encoders
    assert (clip_l.config["hidden_size"], bigg.config["hidden_size"]) == (768, 1280)
    assert bigg.model_class == "CLIPTextModelWithProjection"
    assert (bigg.config["num_hidden_layers"], bigg.config["projection_dim"]) == (32, 1280)


def test_sd1_yaml_beside_sdxl_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError) as info:
        architecture_from_yaml(header("sdxl", "full"), ModelType.SDXL, real_yaml(tmp_path, V1_INFERENCE))
    message = str(info.value)
    assert "does not match the sdxl checkpoint" in message
    assert "cross_attention_dim: yaml says 768, the file has 2048" in message


def test_tiny_yaml_beside_full_file_is_refused(tmp_path: Path) -> None:
    yaml_path = write_yaml("sd1", tmp_path / "tiny.yaml")
    with pytest.raises(CheckpointLoadError, match="block_out_channels: yaml says"):
        build_architecture(header("sd1", "full"), ModelType.SD1, yaml_path, source="big.safetensors")


def test_text_config_block_is_checked(tmp_path: Path) -> None:
    yaml_path = write_yaml("sd1", tmp_path / "k.yaml")
    text = yaml_path.read_text().replace("hidden_size: 32", "hidden_size: 64")
    yaml_path.write_text(text)
    with pytest.raises(CheckpointLoadError, match="text_config disagrees: hidden_size"):
        build_architecture(header("sd1", "tiny"), ModelType.SD1, yaml_path)


def test_sd2_without_yaml_needs_the_probe() -> None:
    assert not architecture_from_shapes(header("sd2v", "tiny"), ModelType.SD2).prediction_known
    assert architecture_from_shapes(header("sd2-inpaint", "tiny"), ModelType.SD2_INPAINT).prediction_known


def test_missing_vae_is_a_load_error() -> None:
    shapes = {k: v for k, v in header("sd1", "tiny").items() if not k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointLoadError, match="no VAE"):
        architecture_from_shapes(shapes, ModelType.SD1, source="novae.safetensors")


@pytest.mark.parametrize("kind", ["sd1", "sd2v", "sdxl", "sdxl-refiner"])
def test_config_folder(kind: str, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    shapes = header(kind, "tiny")
    arch = architecture_from_shapes(shapes, detect_model_type(shapes))
    folder = write_config_folder(arch, tmp_path)
    assert folder.parent == tmp_path and folder.name == arch.cache_key()
    assert write_config_folder(arch, tmp_path) == folder  # reused
    index = json.loads((folder / "model_index.json").read_text())
    assert index == model_index(arch)
    assert index["_class_name"] == arch.pipeline_class
    assert (
        UNet2DConditionModel.load_config(folder, subfolder="unet")["block_out_channels"]
        == arch.unet["block_out_channels"]
    )
    assert AutoencoderKL.load_config(folder, subfolder="vae")["latent_channels"] == 4
    assert EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler").config.beta_schedule == "scaled_linear"
    expected_pads = {"sd1": ["<|endoftext|>"], "sd2v": ["!"], "sdxl": ["<|endoftext|>", "!"], "sdxl-refiner": ["!"]}
    tokenizer_dirs = sorted(p.name for p in folder.iterdir() if p.name.startswith("tokenizer"))
    assert [CLIPTokenizer.from_pretrained(folder / d).pad_token for d in tokenizer_dirs] == expected_pads[kind]
    for spec, te_dir in zip(
        arch.text_encoders, sorted(p for p in folder.iterdir() if p.name.startswith("text_")), strict=True
    ):
        assert CLIPTextConfig.from_pretrained(te_dir).hidden_size == spec.config["hidden_size"]


def test_cache_keys_differ_between_architectures() -> None:
    shapes = {k: header(k, "tiny") for k in ALL_KINDS}
    keys = {architecture_from_shapes(s, detect_model_type(s)).cache_key() for s in shapes.values()}
    assert len(keys) == len(ALL_KINDS)
