"""Prompt editing, alternation, AND and comments: the parser (A1111's documented cases) and generation with it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.engine.infotext import parse_infotext
from modules.engine.pipeline import generate
from modules.engine.prompt_schedule import (
    ScheduledPrompt,
    old_timelines_differ,
    schedule,
    split_and,
    strip_comments,
    text_at,
)
from modules.engine.types import GenerationRequest


def as_lists(entries):
    return [list(e) for e in entries]


ALT = [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a|(b:1.1)]", ALT),
        ("[fe|]male", [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
        ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
        ("[a:b:20]", [[10, "a"]]),
        ("(a [b:c:5]:1.2)", [[5, "(a b:1.2)"], [10, "(a c:1.2)"]]),
        (r"\[a:b:3\]", [[10, r"\[a:b:3\]"]]),
        ("[a::4]", [[4, "a"], [10, ""]]),
        ("[a:b:-1]", [[10, "b"]]),
    ],
)
def test_schedules_as_a1111(prompt, expected):
    assert as_lists(schedule(prompt, 10)) == expected


def test_hires_pass_counts_on_past_the_first_pass():
    assert as_lists(schedule("a [b:.5] c", 10, 10)) == [[10, "a b c"]]
    assert as_lists(schedule("a [b:1.5] c", 10, 10)) == [[5, "a  c"], [10, "a b c"]]
    assert as_lists(schedule("a [b:13] c", 10, 10)) == [[3, "a  c"], [10, "a b c"]]


def test_text_at_uses_the_first_entry_not_yet_ended():
    entries = schedule("a [b:3]", 10)
    assert [text_at(entries, s) for s in (0, 3, 4, 9)] == ["a ", "a ", "a b", "a b"]


def test_and_parts_and_weights():
    assert split_and("a cat AND a dog :0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_and("ANDROID and AND_X") == [("ANDROID and AND_X", 1.0)]
    assert split_and("x:1.2 AND y : -0.5") == [("x", 1.2), (" y", -0.5)]
    sp = ScheduledPrompt.parse("a [b:2] AND c", 4)
    assert sp.at(0) == [("a ", 1.0), (" c", 1.0)] and sp.at(3) == [("a b", 1.0), (" c", 1.0)]
    assert not sp.is_static and ScheduledPrompt.parse("plain (emphasis:1.2)", 4).is_static


def test_comments_as_a1111():
    assert strip_comments("a cat # fluffy\nblue sky") == "a cat \nblue sky"
    assert strip_comments("# whole line\nred") == "\nred"
    assert strip_comments("no comment") == "no comment"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab :|[]()\\.0123 ")), max_size=40), st.integers(1, 30))
def test_parser_never_crashes_and_ends_at_steps(prompt, steps):
    entries = schedule(prompt, steps)
    assert entries[-1][0] == steps
    assert [e[0] for e in entries] == sorted({e[0] for e in entries})
    if not any(c in prompt for c in "[]|"):
        assert entries == [(steps, prompt)]  # plain text is never changed


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_never_crashes(prompt):
    schedule(prompt, 20)
    split_and(prompt)
    strip_comments(prompt)


BASE = {"negative_prompt": "blurry", "width": 64, "height": 64, "steps": 6, "sampler_name": "Euler", "seed": 9}


def pixels(result):
    return np.asarray(result.images[0], dtype=int)


def test_editing_changes_the_picture_only_when_it_applies(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    cat = pixels(generate(model, GenerationRequest(prompt="a cat", **BASE)))
    dog = pixels(generate(model, GenerationRequest(prompt="a dog", **BASE)))
    never = pixels(generate(model, GenerationRequest(prompt="[a cat:a dog:6]", **BASE)))
    halfway = pixels(generate(model, GenerationRequest(prompt="[a cat:a dog:0.5]", **BASE)))
    assert np.array_equal(never, cat)
    assert not np.array_equal(halfway, cat) and not np.array_equal(halfway, dog)
    alternating = pixels(generate(model, GenerationRequest(prompt="[a cat|a dog]", **BASE)))
    assert not np.array_equal(alternating, cat) and not np.array_equal(alternating, halfway)


def test_and_with_zero_weight_equals_the_single_prompt(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    cat = pixels(generate(model, GenerationRequest(prompt="a cat", **BASE)))
    zero = pixels(generate(model, GenerationRequest(prompt="a cat AND a dog :0", **BASE)))
    both = pixels(generate(model, GenerationRequest(prompt="a cat AND a dog", **BASE)))
    assert np.abs(zero - cat).max() <= 1
    assert np.abs(both - cat).max() > 5


@pytest.mark.parametrize("kind", ["sdxl", "sd1-inpaint"])
def test_scheduling_works_on_other_families_and_in_hires(load_tiny, tiny_models, kind):
    model = load_tiny(tiny_models[kind])
    req = GenerationRequest(
        prompt="[a cat:a dog:2] AND sky :0.7",
        **{**BASE, "negative_prompt": "[ugly:1]"},
        enable_hr=True,
        hr_scale=1.5,
        denoising_strength=0.5,
    )
    result = generate(model, req)
    assert result.images[0].size == (96, 96) and np.asarray(result.images[0]).std() > 0


def test_comments_are_stripped_before_generation_and_in_the_infotext(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    plain = generate(model, GenerationRequest(prompt="a cat", **BASE))
    commented = generate(model, GenerationRequest(prompt="a cat # my note", **BASE))
    assert np.array_equal(pixels(plain), pixels(commented))
    assert "my note" not in commented.infotexts[0]
    assert parse_infotext(commented.infotexts[0])["Prompt"].strip() == "a cat"


@pytest.mark.parametrize(
    ("prompt", "new", "old"),
    [
        # "1.0" has a dot: a fraction (the whole run) since 1.6.0, step 1 in the old timelines
        ("a [b:c:1.0]", [(10, "a b")], [(1, "a b"), (10, "a c")]),
        # "0.5" is a fraction in both
        ("a [b:c:0.5]", [(5, "a b"), (10, "a c")], [(5, "a b"), (10, "a c")]),
        # "3" is a step in both
        ("a [b:c:3]", [(3, "a b"), (10, "a c")], [(3, "a b"), (10, "a c")]),
    ],
)
def test_old_prompt_editing_timelines(prompt, new, old):
    assert schedule(prompt, 10) == new
    assert schedule(prompt, 10, old=True) == old
    assert old_timelines_differ([prompt], 10) == (new != old)


def test_old_timelines_in_the_hires_pass_reuse_the_base_timeline():
    # new: fractions from 1 to 2 refer to the hires pass; old: the hires pass uses the base steps' timeline
    assert schedule("a [b:c:1.5]", 10, 4) == [(2, "a b"), (4, "a c")]
    assert schedule("a [b:c:1.5]", 10, 4, old=True) == [(1, "a b"), (10, "a c")]
