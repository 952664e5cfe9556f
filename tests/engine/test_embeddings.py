"""Textual-inversion embeddings: files, where their vectors go in a prompt's chunks, and the images they make."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.engine.embeddings import Embedding, EmbeddingIndex, EmbeddingLibrary, read_embedding
from modules.engine.networks import Networks
from modules.engine.pipeline import generate
from modules.engine.prompts import EMBEDDING_PLACEHOLDER, tokenize_prompt
from modules.engine.tokenizers import clip_tokenizer
from modules.engine.types import GenerationRequest
from modules.errors import WebuiError


def _rows(encoder, tokenizer, words: str) -> torch.Tensor:
    """The token vectors ``encoder`` gives ``words``: an embedding equal to typing them."""
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return encoder.token_embedding.weight[ids].detach().float().clone()


def _image(model, prompt: str, library: EmbeddingLibrary) -> tuple[np.ndarray, str]:
    request = GenerationRequest(prompt=prompt, negative_prompt="blurry", steps=3, width=64, height=64, seed=4)
    result = generate(model, request, networks=Networks(embeddings=library))
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_an_embedding_of_typed_words_makes_the_image_of_those_words(kind, tiny_models, load_tiny, tmp_path):
    model = load_tiny(tiny_models[kind])
    parts = model.components
    folder = tmp_path / "embeddings"
    (folder / "styles").mkdir(parents=True)
    if kind == "sdxl":
        tensors = {
            "clip_l": _rows(parts.text_encoder, parts.tokenizer, "red striped cat"),
            "clip_g": _rows(parts.text_encoder_2, parts.tokenizer_2, "red striped cat"),
        }
    else:
        tensors = {"emb_params": _rows(parts.text_encoder, parts.tokenizer, "red striped cat")}
    path = folder / "styles" / "inkstyle.safetensors"
    save_file(tensors, str(path))
    library = EmbeddingLibrary(folder)
    typed, _ = _image(model, "a photo of a (red striped cat:1.3), sitting", library)
    named, infotext = _image(model, "a photo of a (InkStyle:1.3), sitting", library)  # any case, with emphasis
    assert np.array_equal(named, typed)
    assert f'TI hashes: "inkstyle: {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"' in infotext
    plain, plain_info = _image(model, "a photo of a (inkstyles:1.3), sitting", library)  # another word
    assert not np.array_equal(plain, typed) and "TI hashes" not in plain_info
    assert np.array_equal(_image(model, "a photo of a (inkstyle:1.3), sitting", None)[0], plain) is False


def test_files_in_a1111s_diffusers_and_sdxl_formats(tmp_path):
    matrix = torch.randn(3, 768)
    torch.save(
        {"string_to_param": {"*": matrix}, "string_to_token": {"*": 265}, "name": "x", "step": 1500,
         "sd_checkpoint": "abcd1234", "sd_checkpoint_name": "v1-5"},
        tmp_path / "a1111.pt",
    )  # fmt: skip
    torch.save({"<cat-toy>": matrix[0]}, tmp_path / "learned_embeds.bin")
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(tmp_path / "xl.safetensors"))
    save_file({"something": torch.randn(2, 768), "else": torch.randn(2)}, str(tmp_path / "not_one.safetensors"))
    (tmp_path / "truncated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nothing")
    a1111 = read_embedding(tmp_path / "a1111.pt")
    assert (a1111.name, a1111.count, a1111.info["step"], a1111.info["sd_checkpoint_name"]) == ("a1111", 3, 1500, "v1-5")
    assert torch.equal(a1111.vectors[768], matrix)
    single = read_embedding(tmp_path / "learned_embeds.bin")
    assert single.count == 1 and torch.equal(single.vectors[768][0], matrix[0])
    xl = read_embedding(tmp_path / "xl.safetensors")
    assert sorted(xl.vectors) == [768, 1280] and xl.count == 2
    with pytest.raises(WebuiError, match=r"not_one\.safetensors: not an embedding"):
        read_embedding(tmp_path / "not_one.safetensors")
    library = EmbeddingLibrary(tmp_path)
    found, failed = library.scan()
    assert sorted(found) == ["a1111", "learned_embeds", "xl"] and sorted(failed) == ["not_one", "truncated"]
    usable, skipped = library.for_model((768,))  # SD1: one CLIP-L encoder
    assert sorted(usable) == ["a1111", "learned_embeds"] and list(skipped) == ["xl"]
    assert sorted(library.for_model((768, 1280))[0]) == ["xl"]  # SDXL needs both matrices


def _embedding(name: str, count: int) -> Embedding:
    return Embedding(name, None, {768: torch.zeros(count, 768)})


def test_vectors_take_their_positions_and_move_to_the_next_chunk_when_they_do_not_fit():
    tokenizer = clip_tokenizer()
    index = EmbeddingIndex.build([_embedding("grainy", 4), _embedding("grainyfilm", 6)], tokenizer)
    (chunk,) = tokenize_prompt(tokenizer, "dog grainyfilm cat", embeddings=index).chunks
    assert [(offset, e.name) for offset, e in chunk.fixes] == [(1, "grainyfilm")]  # the longest name wins
    assert chunk.tokens[2:8] == (EMBEDDING_PLACEHOLDER,) * 6 and chunk.tokens[8] != EMBEDDING_PLACEHOLDER
    # 1 + 72 tokens, then 4 vectors: 77 > 75, so the embedding starts the next chunk
    first, second = tokenize_prompt(tokenizer, "dog " + "cat " * 72 + "grainy", embeddings=index).chunks
    assert first.fixes == () and first.tokens[74:] == (tokenizer.eos_token_id,) * 3
    assert [(offset, e.name) for offset, e in second.fixes] == [(0, "grainy")]
    assert second.tokens[1:6] == (EMBEDDING_PLACEHOLDER,) * 4 + (tokenizer.eos_token_id,)
    # a full chunk moves the words after a recent comma along: an embedding among them keeps its vectors
    first, second = tokenize_prompt(tokenizer, "a " * 55 + ", grainyfilm" + " cat" * 14, embeddings=index).chunks
    assert first.fixes == () and first.tokens[57] == tokenizer.eos_token_id
    assert [(offset, e.name) for offset, e in second.fixes] == [(0, "grainyfilm")]
    emphasised = tokenize_prompt(tokenizer, "(grainy:1.5) dog", embeddings=index).chunks[0]
    assert emphasised.multipliers[1:6] == (1.5, 1.5, 1.5, 1.5, 1.0)
    plain = tokenize_prompt(tokenizer, "grainy dog").chunks[0]
    assert plain.fixes == () and EMBEDDING_PLACEHOLDER not in plain.tokens[1:3]
