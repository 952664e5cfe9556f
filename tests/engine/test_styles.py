"""Prompt styles: A1111's styles.csv forms, how a style merges into a prompt, and the files it reads."""

from __future__ import annotations

import pytest

from modules.engine.styles import PromptStyle, StyleLibrary, merge, read_styles
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError


def test_a_style_replaces_its_placeholder_or_is_appended_after_a_comma():
    assert merge("masterpiece, {prompt}, 8k", "a cat") == "masterpiece, a cat, 8k"
    assert merge("oil painting", " a cat ") == "a cat, oil painting"
    assert merge("oil painting", "") == "oil painting"
    assert merge("{prompt}", "") == ""


def test_both_csv_forms_comments_and_the_byte_order_mark(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(
        "\ufeffname,prompt,negative_prompt\n"
        '"Cinematic","cinematic still, {prompt}, film grain","cartoon, drawing"\n'
        "# hidden,x,y\n"
        "Plain, oil painting,\n",
        encoding="utf-8",
    )
    old = tmp_path / "old.csv"
    old.write_text("name,text\nOld,watercolor\n", encoding="utf-8")
    assert read_styles(path) == [
        PromptStyle("Cinematic", "cinematic still, {prompt}, film grain", "cartoon, drawing"),
        PromptStyle("Plain", "oil painting", ""),
    ]
    assert read_styles(old) == [PromptStyle("Old", "watercolor", "")]
    assert read_styles(tmp_path / "missing.csv") == []


def test_styles_apply_in_order_to_every_prompt_and_unknown_names_are_clear_errors(tmp_path):
    (tmp_path / "styles.csv").write_text(
        'name,prompt,negative_prompt\nCinematic,"cinematic still, {prompt}",cartoon\nPlain,oil painting,\n',
        encoding="utf-8",
    )
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "more.csv").write_text("name,prompt,negative_prompt\nPlain,pastel,blurry\n", encoding="utf-8")
    library = StyleLibrary([tmp_path / "styles.csv", str(tmp_path / "extra" / "*.csv")])
    assert [s.name for s in library.styles().values()] == ["Cinematic", "Plain"]
    assert library.styles()["Plain"] == PromptStyle("Plain", "pastel", "blurry")  # a later file wins
    request = GenerationRequest(
        prompt="a cat", negative_prompt="ugly", hr_prompt="a big cat", styles=("Cinematic", "Plain")
    )
    styled = library.apply(request)
    assert styled.prompt == "cinematic still, a cat, pastel"
    assert styled.negative_prompt == "ugly, cartoon, blurry"
    assert styled.hr_prompt == "cinematic still, a big cat, pastel" and styled.hr_negative_prompt == ""
    assert styled.styles == ("Cinematic", "Plain")
    assert library.apply(GenerationRequest(prompt="a cat")) == GenerationRequest(prompt="a cat")
    with pytest.raises(InvalidRequestError, match=r"styles: 'Nope' not found \(styles: Cinematic, Plain\)"):
        library.apply(GenerationRequest(styles=("Plain", "Nope")))


def test_unmerge_takes_a_style_off_where_merge_put_it():
    from modules.engine.styles import unmerge

    for style in ("masterpiece, {prompt}, 8k", "oil painting"):
        assert unmerge(style, merge(style, "a cat")) == "a cat"
    assert unmerge("oil painting", "oil painting") == ""
    assert unmerge("oil painting", "a cat") is None
    assert unmerge("masterpiece, {prompt}, 8k", "a cat, 8k") is None
    assert unmerge("", "a cat") == "a cat"  # an empty style part matches anything and takes nothing off
