"""Kohya LoRA names → LDM checkpoint weights, checked against diffusers' own conversion of tiny random checkpoints.

diffusers/transformers models are built from each tiny checkpoint with diffusers' LDM converters (independently of
``modules.engine.lora_names``). Every Linear/Conv2d module of those models, named as kohya names it, must map to
the checkpoint tensor that holds its weight; with random weights, equality proves the mapping.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.engine.lora_names import LoraTarget, lora_targets
from modules.errors import WeightPatchError
from tests.support.diffusers_reference import reference_pipeline
from tests.support.tiny_checkpoints import KINDS, header_shapes, write_checkpoint

TESTED_KINDS = (*KINDS, "sdxl-refiner")
# Which kohya prefix each diffusers text encoder gets (kohya sd-scripts' convention; the refiner's only encoder
# is diffusers' text_encoder_2, OpenCLIP bigG, the same encoder as SDXL base's second one).
TEXT_PREFIXES = {
    "sd1": {"text_encoder": "lora_te_"},
    "sd2v": {"text_encoder": "lora_te_"},
    "sd1-inpaint": {"text_encoder": "lora_te_"},
    "sdxl": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    "sdxl-refiner": {"text_encoder_2": "lora_te2_"},
}
LDM_STYLE = re.compile(r"lora_unet_(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_")
UNET_PREFIX = "model.diffusion_model."


def kohya_layers(model: torch.nn.Module, prefix: str, *, text: bool) -> dict[str, torch.Tensor]:
    """Every Linear/Conv2d weight of a diffusers/transformers model, by the kohya name of its module."""
    layers = {}
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if text:
            # kohya trains only CLIPAttention/CLIPMLP; the pooled output's text_projection is never a LoRA
            # target (and OpenCLIP stores it transposed, as a bare parameter).
            if path == "text_projection":
                continue
            path = path if path.startswith("text_model.") else "text_model." + path  # flattened CLIPTextModel
        layers[prefix + path.replace(".", "_")] = module.weight.detach()
    return layers


def target_tensor(state: dict[str, torch.Tensor], target: LoraTarget) -> torch.Tensor:
    """The rows of the checkpoint tensor that a target denotes, in float32 (the reference models' dtype)."""
    tensor = state[target.key].float()
    assert tensor.shape[0] % target.chunks == 0, target
    rows = tensor.shape[0] // target.chunks
    return tensor[target.chunk * rows : (target.chunk + 1) * rows]


@pytest.fixture(scope="module", params=TESTED_KINDS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One kind: its checkpoint state dict, the LoRA map of its keys and the diffusers layers by kohya name."""
    kind = request.param
    path = write_checkpoint(kind, tmp_path_factory.mktemp("lora") / f"{kind}.safetensors", seed=7)
    state = load_file(str(path))
    pipe = reference_pipeline(Path(path), device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    layers = kohya_layers(pipe.unet, "lora_unet_", text=False)
    for component, prefix in TEXT_PREFIXES[kind].items():
        layers |= kohya_layers(getattr(pipe, component), prefix, text=True)
    return {"kind": kind, "state": state, "targets": lora_targets(state.keys()), "layers": layers}


def test_every_diffusers_layer_maps_to_the_checkpoint_tensor_holding_its_weight(case: dict) -> None:
    state, targets = case["state"], case["targets"]
    problems = []
    for name, weight in case["layers"].items():
        if name not in targets:
            problems.append(f"{name}: not mapped")
            continue
        expected = target_tensor(state, targets[name])
        if weight.numel() != expected.numel() or not torch.equal(weight.reshape(expected.shape), expected):
            problems.append(f"{name} -> {targets[name]}: other values")
    assert not problems, f"{case['kind']}: {len(problems)} problem(s): {problems[:10]}"
    assert len(case["layers"]) > 100  # the reference really was walked


def test_diffusers_style_names_are_exactly_the_diffusers_layers(case: dict) -> None:
    mapped = {name for name in case["targets"] if not LDM_STYLE.match(name)}
    extra = mapped - set(case["layers"])
    if case["kind"] == "sd2v":
        # SD2 conditions on OpenCLIP's penultimate layer, so diffusers' text encoder leaves out the last layer the
        # file still holds (kohya's SD2 encoder too). Its names are mapped all the same; they are harmless.
        last = max(int(m.group(1)) for k in case["state"] if (m := re.search(r"resblocks\.(\d+)\.", k)))
        extra = {n for n in extra if not n.startswith(f"lora_te_text_model_encoder_layers_{last}_")}
    assert not extra, sorted(extra)[:10]


def test_ldm_style_unet_names_are_every_linear_and_conv_weight(case: dict) -> None:
    state, targets = case["state"], case["targets"]
    expected = {
        "lora_unet_" + key[len(UNET_PREFIX) : -len(".weight")].replace(".", "_"): LoraTarget(key)
        for key, tensor in state.items()
        if key.startswith(UNET_PREFIX) and key.endswith(".weight") and tensor.ndim >= 2  # Linear/Conv, no norms
    }
    assert {name: target for name, target in targets.items() if LDM_STYLE.match(name)} == expected


def test_each_weight_has_one_name_per_style(case: dict) -> None:
    uses = Counter(case["targets"].values())
    unet = {t: n for t, n in uses.items() if t.key.startswith(UNET_PREFIX)}
    text = {t: n for t, n in uses.items() if not t.key.startswith(UNET_PREFIX)}
    assert set(unet.values()) == {2}  # the diffusers-style and the LDM-style name
    assert set(text.values()) == {1}
    assert all(t.key in case["state"] for t in uses)


@pytest.fixture(scope="module")
def maps() -> dict[str, dict[str, LoraTarget]]:
    """The LoRA maps of each kind's keys (headers only, no weights)."""
    return {kind: lora_targets(header_shapes(kind)) for kind in (*TESTED_KINDS, "sd2-inpaint", "sd1-pix2pix")}


DM = "model.diffusion_model."
SD2_TE = "cond_stage_model.model.transformer.resblocks."
EXAMPLES = [
    (
        "sd1",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        LoraTarget(DM + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
    ),
    (
        "sd1",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
        LoraTarget(DM + "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"),
    ),
    ("sd1", "lora_unet_mid_block_attentions_0_proj_in", LoraTarget(DM + "middle_block.1.proj_in.weight")),
    ("sd1", "lora_unet_mid_block_resnets_1_time_emb_proj", LoraTarget(DM + "middle_block.2.emb_layers.1.weight")),
    (
        "sd1",
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
        LoraTarget(DM + "input_blocks.4.0.skip_connection.weight"),
    ),
    ("sd1", "lora_unet_down_blocks_2_downsamplers_0_conv", LoraTarget(DM + "input_blocks.9.0.op.weight")),
    ("sd1", "lora_unet_up_blocks_0_upsamplers_0_conv", LoraTarget(DM + "output_blocks.2.1.conv.weight")),
    ("sd1", "lora_unet_up_blocks_1_upsamplers_0_conv", LoraTarget(DM + "output_blocks.5.2.conv.weight")),
    ("sd1", "lora_unet_up_blocks_2_resnets_2_conv2", LoraTarget(DM + "output_blocks.8.0.out_layers.3.weight")),
    ("sd1", "lora_unet_conv_in", LoraTarget(DM + "input_blocks.0.0.weight")),
    ("sd1", "lora_unet_conv_out", LoraTarget(DM + "out.2.weight")),
    ("sd1", "lora_unet_time_embedding_linear_2", LoraTarget(DM + "time_embed.2.weight")),
    (
        "sd1",
        "lora_te_text_model_encoder_layers_3_self_attn_out_proj",
        LoraTarget("cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.out_proj.weight"),
    ),
    (
        "sd2v",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        LoraTarget(SD2_TE + "0.attn.in_proj_weight", 0, 3),
    ),
    (
        "sd2v",
        "lora_te_text_model_encoder_layers_0_self_attn_v_proj",
        LoraTarget(SD2_TE + "0.attn.in_proj_weight", 2, 3),
    ),
    ("sd2v", "lora_te_text_model_encoder_layers_1_mlp_fc1", LoraTarget(SD2_TE + "1.mlp.c_fc.weight")),
    ("sd2v", "lora_te_text_model_encoder_layers_1_mlp_fc2", LoraTarget(SD2_TE + "1.mlp.c_proj.weight")),
    (
        "sdxl",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        LoraTarget(DM + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"),
    ),
    (
        "sdxl",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        LoraTarget(DM + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"),
    ),
    (
        "sdxl",
        "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_out_0",
        LoraTarget(DM + "output_blocks.0.1.transformer_blocks.1.attn2.to_out.0.weight"),
    ),
    ("sdxl", "lora_unet_up_blocks_2_resnets_0_conv1", LoraTarget(DM + "output_blocks.6.0.in_layers.2.weight")),
    ("sdxl", "lora_unet_add_embedding_linear_1", LoraTarget(DM + "label_emb.0.0.weight")),
    ("sdxl", "lora_unet_label_emb_0_2", LoraTarget(DM + "label_emb.0.2.weight")),
    (
        "sdxl",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1",
        LoraTarget("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
    ),
    (
        "sdxl",
        "lora_te2_text_model_encoder_layers_2_self_attn_k_proj",
        LoraTarget("conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight", 1, 3),
    ),
    (
        "sdxl-refiner",
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj",
        LoraTarget("conditioner.embedders.0.model.transformer.resblocks.0.attn.out_proj.weight"),
    ),
    (
        "sdxl-refiner",
        "lora_unet_up_blocks_3_resnets_1_conv2",
        LoraTarget(DM + "output_blocks.10.0.out_layers.3.weight"),
    ),
]


@pytest.mark.parametrize(("kind", "name", "target"), EXAMPLES)
def test_known_kohya_names(maps: dict, kind: str, name: str, target: LoraTarget) -> None:
    assert maps[kind][name] == target


ABSENT = {
    "sd1": ["lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            "lora_unet_add_embedding_linear_1", "lora_unet_label_emb_0_0", "lora_unet_up_blocks_0_attentions_0_proj_in",
            "lora_unet_down_blocks_3_downsamplers_0_conv", "lora_unet_down_blocks_0_resnets_0_norm1",
            "lora_unet_down_blocks_0_attentions_0_norm", "lora_te_text_model_encoder_layers_0_layer_norm1",
            "lora_te_text_model_embeddings_token_embedding", "lora_te_text_model_final_layer_norm"],
    "sdxl": ["lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_unet_down_blocks_0_attentions_0_proj_in",
             "lora_unet_down_blocks_3_resnets_0_conv1", "lora_unet_input_blocks_10_0_in_layers_2",
             "lora_unet_up_blocks_2_attentions_0_proj_in", "lora_te2_text_projection"],
    "sdxl-refiner": ["lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te_text_model_encoder_layers_0_mlp_fc1",
                     "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_3_attentions_0_proj_in"],
}  # fmt: skip


@pytest.mark.parametrize("kind", ABSENT)
def test_names_of_other_models_and_non_linear_layers_are_absent(maps: dict, kind: str) -> None:
    assert not set(ABSENT[kind]) & set(maps[kind])
    assert all(target.chunks in (1, 3) and 0 <= target.chunk < target.chunks for target in maps[kind].values())


def test_the_variants_share_the_base_layout(maps: dict) -> None:
    assert maps["sd1-inpaint"].keys() == maps["sd1"].keys() == maps["sd1-pix2pix"].keys()
    assert maps["sd2-inpaint"].keys() == maps["sd2v"].keys()


def test_keys_without_a_unet_or_text_encoder_give_an_empty_map() -> None:
    assert lora_targets([]) == {}
    vae = [k for k in header_shapes("sd1") if k.startswith("first_stage_model.")]
    assert lora_targets(vae) == {}


def test_old_text_model_less_keys_are_mapped_and_a_duplicate_layer_is_refused() -> None:
    old = "cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight"
    assert lora_targets([old]) == {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": LoraTarget(old)}
    new = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    with pytest.raises(WeightPatchError, match="q_proj"):
        lora_targets([old, new])
