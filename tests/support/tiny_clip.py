"""Tiny random CLIP text encoders with the real CLIP tokenizer, for prompt-encoding tests."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"


def make_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Return the 49,408-token CLIP tokenizer; pad ``!`` (id 0) for OpenCLIP encoders."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=77, pad_token=pad_token)


def _config(hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=12,
        num_attention_heads=2,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def make_sd_pipe(seed: int = 0, pad_token: str = "<|endoftext|>") -> SimpleNamespace:
    """SD1-like (pad EOS) or SD2-like (pad ``!``) components: tokenizer + CLIPTextModel (hidden 32, 12 layers)."""
    torch.manual_seed(seed)
    return SimpleNamespace(tokenizer=make_tokenizer(pad_token), text_encoder=CLIPTextModel(_config(32)).eval())


def make_sdxl_pipe(seed: int = 0, force_zeros: bool = True) -> SimpleNamespace:
    """SDXL-like components: CLIP-L (hidden 32) and a projection encoder (hidden 48, pooled 16) padding with 0."""
    torch.manual_seed(seed)
    return SimpleNamespace(
        tokenizer=make_tokenizer(),
        text_encoder=CLIPTextModel(_config(32)).eval(),
        tokenizer_2=make_tokenizer("!"),
        text_encoder_2=CLIPTextModelWithProjection(_config(48)).eval(),
        config=SimpleNamespace(force_zeros_for_empty_prompt=force_zeros),
    )
