import pytest

from modules.engine.prompts import (
    BREAK_MARKER,
    count_tokens,
    parse_prompt_attention,
    tokenize_prompt,
)
from tests.support.tiny_clip import make_tokenizer

BOS, EOS, COMMA, CAT, DOG = 49406, 49407, 267, 2368, 1929


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_plain_tokenization_matches_open_clip(tok):
    ids = tok("a photo of a cat, (masterpiece:1.2)")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 267, 263, 12066, 281, 272, 269, 273, 264, 49407]
    assert tok.convert_tokens_to_ids("dog</w>") == DOG


@pytest.mark.parametrize(
    "text,expected",
    [
        ("(x)", [("x", 1.1)]),
        ("((x))", [("x", 1.2100000000000002)]),
        ("(((x)))", [("x", 1.3310000000000004)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
        ("(x:1.2)", [("x", 1.2)]),
        ("(x:-0.5)", [("x", -0.5)]),
        ("(x: 2 )", [("x", 2.0)]),
        ("((x:2))", [("x", 2.2)]),
        ("[(x:2)]", [("x", 2 / 1.1)]),
        ("a (b", [("a ", 1.0), ("b", 1.1)]),
        ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("x:1.5)", [("x:1.5)", 1.0)]),
        ("\\(x\\) \\[y\\] \\\\", [("(x) [y] \\", 1.0)]),
        ("a \\ b", [("a \\ b", 1.0)]),
        ("(a)(b)", [("ab", 1.1)]),
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_break_parsing():
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), BREAK_MARKER, ("b", 1.0)]
    assert parse_prompt_attention("a BREAK BREAK b") == [("a", 1.0), BREAK_MARKER, ("", 1.0), BREAK_MARKER, ("b", 1.0)]
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert parse_prompt_attention("a break b BREAKING") == [("a break b BREAKING", 1.0)]


def test_tokenize_weights_and_layout(tok):
    t = tokenize_prompt(tok, "a photo of a cat, (masterpiece:1.2)")
    assert len(t.chunks) == 1 and t.token_count == 7
    chunk = t.chunks[0]
    assert len(chunk.tokens) == len(chunk.multipliers) == 77
    assert list(chunk.tokens[:9]) == [BOS, 320, 1125, 539, 320, 2368, 267, 12066, EOS]
    assert set(chunk.tokens[8:]) == {EOS}
    assert list(chunk.multipliers[:9]) == [1.0] * 7 + [1.2, 1.0]


def test_empty_prompt_is_one_empty_chunk(tok):
    t = tokenize_prompt(tok, "")
    assert t.token_count == 0
    assert t.chunks[0].tokens == (BOS, *([EOS] * 76))
    assert count_tokens(tok, "") == (0, 75)


def test_long_prompt_splits_into_chunks(tok):
    t = tokenize_prompt(tok, " ".join(["cat"] * 80))
    assert len(t.chunks) == 2
    assert t.chunks[0].tokens == (BOS, *([CAT] * 75), EOS)
    assert t.chunks[1].tokens[:7] == (BOS, CAT, CAT, CAT, CAT, CAT, EOS)
    assert t.token_count == 80
    assert count_tokens(tok, " ".join(["cat"] * 80)) == (80, 150)
    assert count_tokens(tok, " ".join(["cat"] * 75)) == (75, 75)
    assert count_tokens(tok, " ".join(["cat"] * 76)) == (76, 150)


def test_comma_backoff_moves_words_to_next_chunk(tok):
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    t = tokenize_prompt(tok, text)
    first, second = t.chunks
    assert first.tokens == (BOS, *([CAT] * 70), COMMA, *([EOS] * 4), EOS)
    assert second.tokens[:12] == (BOS, *([DOG] * 10), EOS)
    assert t.token_count == 85


def test_comma_backoff_disabled_or_too_far(tok):
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    first, second = tokenize_prompt(tok, text, comma_padding_backtrack=0).chunks
    assert first.tokens == (BOS, *([CAT] * 70), COMMA, *([DOG] * 4), EOS)
    assert second.tokens[:8] == (BOS, *([DOG] * 6), EOS)
    far = " ".join(["cat"] * 10) + ", " + " ".join(["dog"] * 70)
    first, _ = tokenize_prompt(tok, far, comma_padding_backtrack=20).chunks
    assert first.tokens[-2] == DOG


def test_comma_backoff_keeps_weights(tok):
    text = " ".join(["cat"] * 70) + ", (" + " ".join(["dog"] * 10) + ":1.3)"
    _, second = tokenize_prompt(tok, text).chunks
    assert second.multipliers[1:11] == (1.3,) * 10
    assert second.multipliers[11] == 1.0


def test_break_forces_new_chunk(tok):
    t = tokenize_prompt(tok, "cat BREAK dog")
    assert len(t.chunks) == 2
    assert t.chunks[0].tokens[:3] == (BOS, CAT, EOS)
    assert t.chunks[1].tokens[:3] == (BOS, DOG, EOS)
    assert t.token_count == 76
    assert count_tokens(tok, "cat BREAK dog") == (76, 150)


def test_emphasis_none_keeps_brackets_literal(tok):
    parsed = tokenize_prompt(tok, "(cat) BREAK dog")
    literal = tokenize_prompt(tok, "(cat) BREAK dog", emphasis="None")
    assert len(parsed.chunks) == 2 and len(literal.chunks) == 1
    assert set(literal.chunks[0].multipliers) == {1.0}
    assert literal.chunks[0].tokens[1:6] == tuple(tok("(cat) BREAK dog", add_special_tokens=False)["input_ids"])


def test_square_brackets_weight(tok):
    t = tokenize_prompt(tok, "[cat] dog")
    assert t.chunks[0].multipliers[1:3] == pytest.approx((1 / 1.1, 1.0))
