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


def test_the_editor_saves_and_deletes_styles_keeping_every_other_row(tmp_path):
    first, second = tmp_path / "styles.csv", tmp_path / "more" / "extra.csv"
    first.write_text(
        'name,prompt,negative_prompt,rating\n# a comment row,keep me,,\nCinematic,"cinematic, {prompt}",cartoon,5\n',
        encoding="utf-8",
    )
    second.parent.mkdir()
    second.write_text("name,text\nOld,watercolor\n", encoding="utf-8")
    library = StyleLibrary([first, tmp_path / "more" / "*.csv"])
    before = first.read_text(encoding="utf-8")

    assert library.save(PromptStyle(" Neon ", "neon lights", "dull")) == first  # new: the first file
    assert library.styles()["Neon"] == PromptStyle("Neon", "neon lights", "dull")
    assert (tmp_path / "styles.csv.bak").read_text(encoding="utf-8") == before  # the version before, kept
    text = first.read_text(encoding="utf-8")
    assert "# a comment row,keep me" in text and 'Cinematic,"cinematic, {prompt}",cartoon,5' in text  # untouched

    assert library.save(PromptStyle("Old", "ink drawing", "color")) == second  # an edit goes to its own file
    assert read_styles(second) == [PromptStyle("Old", "ink drawing", "color")]
    assert second.read_text(encoding="utf-8").splitlines()[0] == "name,prompt,negative_prompt"  # the current form

    assert library.save(PromptStyle("Cinematic", "cinema, {prompt}", "")) == first
    assert 'Cinematic,"cinema, {prompt}",,5' in first.read_text(encoding="utf-8")  # its other column kept
    assert library.delete("Neon") == first
    assert list(library.styles()) == ["Cinematic", "Old"]
    assert "# a comment row" in first.read_text(encoding="utf-8")
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically, nothing left over


def test_bad_editor_requests_are_clear_errors_and_write_nothing(tmp_path):
    path = tmp_path / "styles.csv"
    library = StyleLibrary([path])
    for name in ("", "  ", "#hidden"):
        with pytest.raises(InvalidRequestError, match="style name"):
            library.save(PromptStyle(name, "x"))
    with pytest.raises(InvalidRequestError, match=r"'Nope' not found \(styles: none\)"):
        library.delete("Nope")
    assert not path.exists()
    assert library.save(PromptStyle("First", "x")) == path and read_styles(path) == [PromptStyle("First", "x")]
    with pytest.raises(InvalidRequestError, match="no styles file"):
        StyleLibrary([tmp_path / "none" / "*.csv"]).save(PromptStyle("A", "x"))
