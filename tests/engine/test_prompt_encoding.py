import pytest
import torch

from modules.engine.prompt_encoding import PromptEmbeddings, apply_emphasis
from modules.engine.prompts import encode_prompt_pair
from modules.engine.types import ModelType
from modules.errors import InvalidRequestError
from tests.support.tiny_clip import make_sd_pipe, make_sdxl_pipe

BOS, EOS = 49406, 49407
LONG = " ".join(["cat"] * 80)


@pytest.fixture(scope="module")
def sd1():
    return make_sd_pipe()


@pytest.fixture(scope="module")
def sdxl():
    return make_sdxl_pipe()


def _ids(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([[BOS, *ids, *([EOS] * (76 - len(ids)))]])


def _capture_ids(module):
    seen = []

    def hook(_mod, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_sd1_shapes_and_chunk_padding(sd1):
    e = encode_prompt_pair(sd1, ModelType.SD1, ["a cat"], [""])
    assert e.prompt_embeds.shape == e.negative_prompt_embeds.shape == (1, 77, 32)
    assert e.pooled_prompt_embeds is None and e.negative_pooled_prompt_embeds is None
    assert set(e.as_pipeline_kwargs()) == {"prompt_embeds", "negative_prompt_embeds"}
    long = encode_prompt_pair(sd1, ModelType.SD1, [LONG], ["blurry"])
    assert long.prompt_embeds.shape == long.negative_prompt_embeds.shape == (1, 154, 32)
    flipped = encode_prompt_pair(sd1, ModelType.SD1, ["blurry"], [LONG])
    assert flipped.prompt_embeds.shape == (1, 154, 32)


def test_short_side_is_padded_with_empty_chunk_encoding(sd1):
    long = encode_prompt_pair(sd1, ModelType.SD1, [LONG], ["blurry"])
    empty = encode_prompt_pair(sd1, ModelType.SD1, [""], [""])
    assert torch.allclose(long.negative_prompt_embeds[:, 77:], empty.prompt_embeds, atol=1e-6)
    blurry = encode_prompt_pair(sd1, ModelType.SD1, ["blurry"], [""])
    assert torch.allclose(long.negative_prompt_embeds[:, :77], blurry.prompt_embeds, atol=1e-6)


def test_chunks_are_encoded_independently(sd1):
    e = encode_prompt_pair(sd1, ModelType.SD1, [LONG], [""])
    with torch.no_grad():
        first = sd1.text_encoder(input_ids=_ids(sd1.tokenizer, " ".join(["cat"] * 75))).last_hidden_state
        second = sd1.text_encoder(input_ids=_ids(sd1.tokenizer, " ".join(["cat"] * 5))).last_hidden_state
    assert torch.allclose(e.prompt_embeds[:, :77], first, atol=1e-6)
    assert torch.allclose(e.prompt_embeds[:, 77:], second, atol=1e-6)


def test_emphasis_modes(sd1):
    plain = encode_prompt_pair(sd1, ModelType.SD1, ["cat dog"], [""]).prompt_embeds
    original = encode_prompt_pair(sd1, ModelType.SD1, ["(cat:1.5) dog"], [""]).prompt_embeds
    no_norm = encode_prompt_pair(sd1, ModelType.SD1, ["(cat:1.5) dog"], [""], emphasis="No norm").prompt_embeds
    ignore = encode_prompt_pair(sd1, ModelType.SD1, ["(cat:1.5) dog"], [""], emphasis="Ignore").prompt_embeds
    literal = encode_prompt_pair(sd1, ModelType.SD1, ["(cat:1.5) dog"], [""], emphasis="None").prompt_embeds
    assert torch.allclose(original.mean(), plain.mean(), atol=1e-6)
    assert not torch.allclose(original, plain)
    expected = plain.clone()
    expected[:, 1] *= 1.5
    assert torch.allclose(no_norm, expected, atol=1e-6)
    assert torch.allclose(original, expected * (plain.mean() / expected.mean()), atol=1e-6)
    assert torch.allclose(ignore, plain, atol=1e-6)
    assert literal.shape == plain.shape and not torch.allclose(literal, plain)


def test_apply_emphasis_preserves_mean():
    torch.manual_seed(1)
    z = torch.randn(2, 77, 8) + 0.3
    m = torch.ones(2, 77)
    m[:, 3:6] = 1.4
    m[1, 10] = 0.5
    out = apply_emphasis(z, m, "Original")
    assert torch.allclose(out.mean(), z.mean(), atol=1e-6)
    assert torch.allclose(apply_emphasis(z, m, "No norm"), z * m.unsqueeze(-1))
    assert apply_emphasis(z, m, "Ignore") is z
    assert apply_emphasis(z, torch.ones(2, 77), "Original") is z


def test_apply_emphasis_zero_mean_does_not_divide_by_zero():
    z = torch.zeros(1, 77, 4)
    z[0, 1] = torch.tensor([1.0, -1.0, 2.0, -2.0])
    out = apply_emphasis(z, torch.ones(1, 77), "Original")
    assert torch.equal(out, z)
    m = torch.ones(1, 77)
    m[0, 1] = 2.0
    out = apply_emphasis(z, m, "Original")
    assert torch.isfinite(out).all() and torch.equal(out[0, 1], 2 * z[0, 1])


def test_clip_skip_sd1(sd1):
    one = encode_prompt_pair(sd1, ModelType.SD1, ["a cat"], [""], clip_skip=1).prompt_embeds
    two = encode_prompt_pair(sd1, ModelType.SD1, ["a cat"], [""], clip_skip=2).prompt_embeds
    assert not torch.allclose(one, two)
    with torch.no_grad():
        out = sd1.text_encoder(input_ids=_ids(sd1.tokenizer, "a cat"), output_hidden_states=True)
        expected = sd1.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(two, expected, atol=1e-6)
    assert torch.allclose(one, out.last_hidden_state, atol=1e-6)
    with pytest.raises(InvalidRequestError, match="Clip skip must be between 1 and 12"):
        encode_prompt_pair(sd1, ModelType.SD1, ["a"], [""], clip_skip=13)


def test_sd2_pads_with_zero_and_ignores_clip_skip():
    sd2 = make_sd_pipe(pad_token="!")
    seen, handle = _capture_ids(sd2.text_encoder)
    try:
        one = encode_prompt_pair(sd2, ModelType.SD2, ["a cat"], ["dog"], clip_skip=1)
        two = encode_prompt_pair(sd2, ModelType.SD2, ["a cat"], ["dog"], clip_skip=2)
    finally:
        handle.remove()
    assert torch.equal(one.prompt_embeds, two.prompt_embeds)
    assert seen[0][0, :4].tolist() == [BOS, 320, 2368, EOS]
    assert set(seen[0][0, 4:].tolist()) == {0}


def test_sdxl_shapes_layers_and_pooled(sdxl):
    seen1, h1 = _capture_ids(sdxl.text_encoder)
    seen2, h2 = _capture_ids(sdxl.text_encoder_2)
    try:
        e = encode_prompt_pair(sdxl, ModelType.SDXL, ["a cat"], ["ugly"], clip_skip=2)
    finally:
        h1.remove()
        h2.remove()
    assert e.prompt_embeds.shape == e.negative_prompt_embeds.shape == (1, 77, 80)
    assert e.pooled_prompt_embeds.shape == e.negative_pooled_prompt_embeds.shape == (1, 16)
    assert set(seen1[0][0, 3:].tolist()) == {EOS}
    assert seen2[0][0, 3].item() == EOS and set(seen2[0][0, 4:].tolist()) == {0}
    with torch.no_grad():
        ids = _ids(sdxl.tokenizer, "a cat")
        l_hidden = sdxl.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        ids2 = ids.clone()
        ids2[0, 4:] = 0
        g_out = sdxl.text_encoder_2(input_ids=ids2, output_hidden_states=True)
    assert torch.allclose(e.prompt_embeds[..., :32], l_hidden, atol=1e-6)
    assert torch.allclose(e.prompt_embeds[..., 32:], g_out.hidden_states[-2], atol=1e-6)
    assert torch.allclose(e.pooled_prompt_embeds, g_out.text_embeds, atol=1e-6)
    assert set(e.as_pipeline_kwargs()) == {
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }


def test_sdxl_pooled_comes_from_first_chunk(sdxl):
    long = encode_prompt_pair(sdxl, ModelType.SDXL, [LONG], ["x"])
    first = encode_prompt_pair(sdxl, ModelType.SDXL, [" ".join(["cat"] * 75)], ["x"])
    assert long.prompt_embeds.shape == (1, 154, 80)
    assert torch.allclose(long.pooled_prompt_embeds, first.pooled_prompt_embeds, atol=1e-6)


def test_sdxl_empty_negative_is_zero(sdxl):
    e = encode_prompt_pair(sdxl, ModelType.SDXL, [LONG, "b"], ["", ""])
    assert e.negative_prompt_embeds.shape == e.prompt_embeds.shape == (2, 154, 80)
    assert not e.negative_prompt_embeds.any() and not e.negative_pooled_prompt_embeds.any()
    mixed = encode_prompt_pair(sdxl, ModelType.SDXL, ["a", "b"], ["", "ugly"])
    assert mixed.negative_prompt_embeds.any()
    no_force = make_sdxl_pipe(force_zeros=False)
    assert encode_prompt_pair(no_force, ModelType.SDXL, ["a"], [""]).negative_prompt_embeds.any()


def test_sdxl_refiner_uses_second_encoder_only(sdxl):
    from types import SimpleNamespace

    refiner = SimpleNamespace(
        tokenizer=None,
        text_encoder=None,
        tokenizer_2=sdxl.tokenizer_2,
        text_encoder_2=sdxl.text_encoder_2,
        config=SimpleNamespace(),
    )
    e = encode_prompt_pair(refiner, ModelType.SDXL_REFINER, ["a cat"], ["ugly"])
    assert e.prompt_embeds.shape == (1, 77, 48)
    assert e.pooled_prompt_embeds.shape == (1, 16)


def test_batch_rows_match_single_prompts(sd1):
    batch = encode_prompt_pair(sd1, ModelType.SD1, ["a cat", "a dog"], ["", "ugly"])
    single = encode_prompt_pair(sd1, ModelType.SD1, ["a dog"], ["ugly"])
    assert batch.prompt_embeds.shape == (2, 77, 32)
    assert torch.allclose(batch.prompt_embeds[1], single.prompt_embeds[0], atol=1e-5)


def test_dtype_follows_text_encoder():
    pipe = make_sd_pipe()
    pipe.text_encoder.to(torch.float64)
    e = encode_prompt_pair(pipe, ModelType.SD1, ["a"], [""])
    assert e.prompt_embeds.dtype == torch.float64
    assert isinstance(e, PromptEmbeddings)


def test_argument_errors(sd1):
    with pytest.raises(InvalidRequestError, match="must be non-empty and equal"):
        encode_prompt_pair(sd1, ModelType.SD1, ["a", "b"], [""])
    with pytest.raises(InvalidRequestError, match="Unknown emphasis 'Loud'"):
        encode_prompt_pair(sd1, ModelType.SD1, ["a"], [""], emphasis="Loud")


@pytest.mark.parametrize(
    "kind,model_type",
    [
        ("sd1", ModelType.SD1),
        ("sdxl", ModelType.SDXL),
    ],
)
def test_embeddings_drive_real_tiny_pipelines(tiny_models, kind, model_type):
    """Our encoders' embeddings, in the layout diffusers' own pipeline takes, drive it (the reference models)."""
    from modules.engine.loader import LoadOptions, ModelManager
    from modules.engine.types import CheckpointInfo
    from tests.support.diffusers_reference import reference_pipeline

    path = tiny_models[kind]
    info = CheckpointInfo(path, path.name, sha256="cd" * 32, config=path.with_suffix(".yaml"))
    manager = ModelManager()
    try:
        model = manager.get(info, LoadOptions())
        assert model.model_type == model_type
        e = encode_prompt_pair(model.components, model_type, [LONG], [""], clip_skip=2)
        assert e.prompt_embeds.shape[:2] == (1, 154)
        pipe = reference_pipeline(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
        out = pipe(
            **e.as_pipeline_kwargs(),
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
        assert torch.isfinite(out.images).all()
    finally:
        manager.unload()
