"""Our CLIP text encoder against transformers' CLIPTextModel(WithProjection) built as the app used to (fp32, CPU).

The reference is built here, not through the app: the specs are derived from the tiny checkpoints' shapes exactly
as the app does (``text_encoders_from_shapes``), the transformers model from ``CLIPTextConfig(**spec.config)``
(what the config folder's ``config.json`` held) and its weights renamed as the app's former component route did
(transformers-layout keys with the prefix removed; diffusers' ``convert_open_clip_checkpoint`` for OpenCLIP; saved
layers beyond ``num_hidden_layers`` dropped).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re

import pytest
import torch

from modules.engine.architecture import TextEncoderSpec, text_encoders_from_shapes
from modules.engine.detection import detect_model_type
from modules.engine.nets.clip import MissingWeightsError, TextEncoder, convert_weights, load_text_encoder
from tests.support.tiny_checkpoints import ldm_state_dict

KINDS = ("sd1", "sd2v", "sdxl", "sdxl-refiner")
BOS, EOS = 49406, 49407
TOLERANCE = 1e-4
LAYER = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.")


@functools.cache
def _state(kind: str) -> dict[str, torch.Tensor]:
    """The tiny fp32 checkpoint of a kind (built once per session)."""
    return ldm_state_dict(kind, dtype=torch.float32)


def _specs(kind: str, heads: int | None = None) -> tuple[TextEncoderSpec, ...]:
    """The encoders the app derives from the file's shapes; ``heads`` overrides their head count."""
    shapes = {k: tuple(v.shape) for k, v in _state(kind).items()}
    specs = text_encoders_from_shapes(shapes, detect_model_type(shapes))
    if heads is not None:
        specs = tuple(dataclasses.replace(s, config={**s.config, "num_attention_heads": heads}) for s in specs)
    return specs


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed (convert_weights's input convention)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _reference(state: dict[str, torch.Tensor], spec: TextEncoderSpec) -> torch.nn.Module:
    """transformers' model for ``spec`` with the file's weights, keys converted as the app's old route did."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    projection = spec.model_class == "CLIPTextModelWithProjection"
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**spec.config))
    if spec.family == "clip-l":
        weights = {"text_model." + k: v for k, v in _under(state, spec.prefix).items()}
    else:
        weights = convert_open_clip_checkpoint(model, state, prefix=spec.prefix)
    layers = int(spec.config["num_hidden_layers"])
    weights = {
        k if hasattr(model, "text_model") or k.startswith("text_projection") else k.removeprefix("text_model."): v
        for k, v in weights.items()
        if not k.endswith(("position_ids", "logit_scale"))
        and not ((m := LAYER.match(k)) and int(m.group(1)) >= layers)
        and (projection or not k.startswith("text_projection"))
    }
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _tokens(spec: TextEncoderSpec, seed: int = 0) -> torch.Tensor:
    """Rows shaped like real prompt chunks: BOS, ids, EOS, then padding (EOS for CLIP-L, 0 after OpenCLIP's EOS)."""
    pad = EOS if spec.family == "clip-l" else 0
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in (10, 0, 75, 40):
        row = [BOS, *torch.randint(1, BOS, (length,), generator=generator).tolist(), EOS]
        rows.append(row + [pad] * (77 - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def _ours(state: dict[str, torch.Tensor], spec: TextEncoderSpec) -> TextEncoder:
    """Build ours the intended way: empty on the meta device, then filled with assign=True."""
    with torch.device("meta"):
        model = TextEncoder.from_spec(spec)
    assert not list(model.buffers())
    model.load_state_dict(convert_weights(_under(state, spec.prefix), spec), strict=True, assign=True)
    assert all(p.device.type == "cpu" for p in model.parameters())
    return model.eval()


def _check(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Assert ``ours`` ≈ ``ref`` (relative to the reference's magnitude); return the max abs difference."""
    assert ours.shape == ref.shape, name
    diff = (ours - ref).abs().max().item()
    assert diff <= TOLERANCE * max(1.0, ref.abs().max().item()), f"{name}: max abs diff {diff:.3g}"
    return diff


# The tiny encoders have one head (64 channels per head); 4 heads also checks the head split.
@pytest.mark.parametrize(("kind", "heads"), [*((k, None) for k in KINDS), ("sd1", 4), ("sd2v", 4), ("sdxl", 4)])
def test_matches_transformers(kind: str, heads: int | None, caplog: pytest.LogCaptureFixture) -> None:
    state = _state(kind)
    for spec in _specs(kind, heads):
        ref = _reference(state, spec)
        with caplog.at_level(logging.WARNING, logger="modules.engine.nets.clip"):
            ours = _ours(state, spec)
        assert not caplog.records, "known extra keys (position_ids, logit_scale, ...) must be ignored silently"
        ids = _tokens(spec)
        with torch.no_grad():
            expected = ref(input_ids=ids, output_hidden_states=True)
            expected_pooled = getattr(ref, "text_model", ref)(input_ids=ids).pooler_output  # not in WithProjection's
            got = ours(ids, output_hidden_states=True)
        layers = int(spec.config["num_hidden_layers"])
        assert len(ours.transformer.resblocks) == ours.config.num_hidden_layers == layers
        assert len(got.hidden_states) == len(expected.hidden_states) == layers + 1
        diffs = {
            "last_hidden_state": _check("last_hidden_state", got.last_hidden_state, expected.last_hidden_state),
            "hidden_states[-2]": _check("hidden_states[-2]", got.hidden_states[-2], expected.hidden_states[-2]),
            "hidden_states (all)": max(
                _check(f"hidden_states[{i}]", a, b)
                for i, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True))
            ),
            "pooler_output": _check("pooler_output", got.pooler_output, expected_pooled),
        }
        if spec.family == "openclip-bigg":
            diffs["text_embeds"] = _check("text_embeds", got.text_embeds, expected.text_embeds)
        else:
            assert got.text_embeds is None and ours.text_projection is None
        heads_used = ours.config.num_attention_heads
        print(f"{kind} {spec.family} heads={heads_used}:", {k: f"{v:.1e}" for k, v in diffs.items()})


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("sd1", "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.k_proj.bias"),
        ("sd2v", "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"),
        ("sdxl", "conditioner.embedders.1.model.text_projection"),
        ("sdxl-refiner", "conditioner.embedders.0.model.ln_final.weight"),
    ],
)
def test_missing_key_is_named(kind: str, key: str) -> None:
    spec = next(s for s in _specs(kind) if key.startswith(s.prefix))
    tensors = _under(_state(kind), spec.prefix)
    del tensors[key[len(spec.prefix) :]]
    with pytest.raises(KeyError, match=re.escape(key)) as caught:
        convert_weights(tensors, spec)
    assert isinstance(caught.value, MissingWeightsError) and caught.value.missing == (key,)
    assert str(caught.value) == caught.value.args[0] == f"1 weights missing from the file: {key}"


def test_sd2_unused_last_layer_is_ignored() -> None:
    (spec,) = _specs("sd2v")
    tensors = _under(_state("sd2v"), spec.prefix)
    saved = 1 + max(int(m[1]) for k in tensors if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    assert spec.config["num_hidden_layers"] == saved - 1
    weights = convert_weights(tensors, spec)
    assert not any(k.startswith(f"transformer.resblocks.{saved - 1}.") for k in weights)
    assert "text_projection" not in weights  # SD2 files carry one; CLIPTextModel does not use it
    ids = _tokens(spec)
    with torch.no_grad():
        before = load_text_encoder(tensors, spec)(ids).last_hidden_state
        last = f"transformer.resblocks.{saved - 1}."
        tensors |= {k: torch.full_like(v, float("nan")) for k, v in tensors.items() if k.startswith(last)}
        del tensors[last + "ln_1.weight"]  # not even required
        after = load_text_encoder(tensors, spec)(ids).last_hidden_state
    assert torch.equal(before, after)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype: torch.dtype) -> None:
    spec = _specs("sdxl", heads=4)[1]
    tensors = _under(_state("sdxl"), spec.prefix)
    ids = _tokens(spec, seed=1)
    model = load_text_encoder(tensors, spec, dtype=dtype)
    assert model.dtype == dtype and model.device.type == "cpu"
    with torch.no_grad():
        half = model(ids)
        full = load_text_encoder(tensors, spec)(ids)
    assert half.last_hidden_state.dtype == half.text_embeds.dtype == dtype
    assert half.hidden_states is None
    for name in ("last_hidden_state", "pooler_output", "text_embeds"):
        ref = getattr(full, name)
        assert (getattr(half, name).float() - ref).abs().max() <= 0.05 * max(1.0, ref.abs().max().item()), name


def test_interface() -> None:
    (spec,) = _specs("sd1")
    model = load_text_encoder(_under(_state("sd1"), spec.prefix), spec)
    assert isinstance(model.final_layer_norm, torch.nn.LayerNorm) and model.final_layer_norm is model.ln_final
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.eos_token_id) == (12, 32, EOS)
    assert model.config.hidden_act == "quick_gelu" and model.layout == "hf"
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    ids = _tokens(spec)
    with torch.no_grad():
        out = model(ids)
    assert out.hidden_states is None and out.text_embeds is None
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(4), (ids == EOS).int().argmax(1)])
    with pytest.raises(ValueError, match="hidden_act"):
        TextEncoder({**spec.config, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="layout"):
        TextEncoder(spec.config, layout="ldm")
