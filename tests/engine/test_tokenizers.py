"""The own CLIP tokenizer against transformers' CLIPTokenizer over the same shipped files."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.engine.tokenizers import CLIP_PAD, OPENCLIP_PAD, VOCAB_SIZE, clip_tokenizer

PROMPTS = [
    "a photo of a cat",
    "masterpiece, best quality, (ultra detailed:1.2), [cat:dog:0.4], 1girl, solo BREAK night sky",
    "  Leading and   trailing\twhitespace\nand newlines  ",
    "it's, they're, we've, I'm, you'll, he'd, Don't",
    "café naïve Ångström façade — “quotes” ‘single’ …",
    "日本語のプロンプト, 中文提示词, 한국어",
    "emoji 🐱‍👤 🎨✨ and symbols ©®™ ±×÷",
    "numbers 1234567 3.14 1e-5 #42 $100 50%",
    "<|endoftext|> in the middle <|startoftext|> of text",
    "lots!!! of??? punctuation... ((()))[[[]]] {a|b|c} a_b-c/d\\e",
    "ＦＵＬＬ width　ｔｅｘｔ and zero\u200bwidth",
    "UPPER lower MiXeD",
    "",
]


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPTokenizer

    from modules.engine.tokenizers import TOKENIZER_DIR

    return CLIPTokenizer(
        vocab=str(TOKENIZER_DIR / "vocab.json"),
        merges=str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=77,
        pad_token=CLIP_PAD,
    )


def test_sizes_and_special_ids():
    tok = clip_tokenizer()
    assert len(tok) == VOCAB_SIZE and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert clip_tokenizer(OPENCLIP_PAD).pad_token_id == 0
    assert tok.convert_tokens_to_ids(",</w>") == 267
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(ValueError, match="unknown pad token"):
        clip_tokenizer("<pad>")


@pytest.mark.parametrize("text", PROMPTS)
def test_matches_transformers(reference, text):
    ours = clip_tokenizer()
    assert ours(text).input_ids == reference(text).input_ids
    assert (
        ours([text, text.upper()], add_special_tokens=False)["input_ids"]
        == reference([text, text.upper()], add_special_tokens=False)["input_ids"]
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_matches_transformers_on_any_text(reference, text):
    assert clip_tokenizer()(text).input_ids == reference(text).input_ids


def test_openclip_pad_is_not_a_token_of_the_text():
    """A1111's SD2 tokenizer (open_clip's) reads "!" as token 256 and "!!!" as 995; the pad id 0 is padding only."""
    for pad in (CLIP_PAD, OPENCLIP_PAD):
        assert clip_tokenizer(pad)("wow!!! great!", add_special_tokens=False).input_ids == [2781, 995, 830, 256]
