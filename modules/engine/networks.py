"""What a job adds to its checkpoint from the user's folders: LoRAs, textual-inversion embeddings, a VAE file.

``Networks`` holds the three libraries (the app context makes one of each). ``prepare`` readies the main model for
one job — the prompts without their ``<lora:…>`` tags, the tags' LoRAs merged, the embeddings the model can use,
the VAE the ``sd_vae`` setting selects — and returns the request as it is to be encoded and the infotext keys;
``for_other_models`` wraps the loader of the job's other checkpoints (refiner, hires), which run without LoRAs, with
embeddings, on their own VAE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules.engine import embeddings, lora, vae_files
from modules.engine.types import GenerationRequest

_PROMPTS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


@dataclass(frozen=True)
class Networks:
    """The libraries a job may use (None: that kind is not available; its tags or settings then fail clearly)."""

    loras: lora.LoraLibrary | None = None
    embeddings: embeddings.EmbeddingLibrary | None = None
    vaes: vae_files.VaeLibrary | None = None


def without_tags(request: GenerationRequest) -> tuple[GenerationRequest, list[lora.LoraTag]]:
    """The request with its prompts' extra-network tags taken out, and the main prompt's LoRA tags.

    (The hires prompts' own tags are taken out too, not merged for the second pass as A1111 does.)
    """
    if not any("<" in getattr(request, n) for n in _PROMPTS):
        return request, []
    prompt, tags = lora.parse_tags(request.prompt)
    others = {n: lora.parse_tags(getattr(request, n))[0] for n in _PROMPTS[1:]}
    return dataclasses.replace(request, prompt=prompt, **others), tags


def prepare(
    model: Any, request: GenerationRequest, vae: str, networks: Networks | None
) -> tuple[GenerationRequest, dict[str, str]]:
    """Ready ``model`` (a ``loader.LoadedModel``) for ``request``; return the request to encode and infotext keys.

    Raises:
        InvalidRequestError: An unknown LoRA, VAE or a file that does not fit the model (see lora.py, vae_files.py).
    """
    networks = networks or Networks()
    encoded, tags = without_tags(request)
    extras = lora.activate(model, tags, networks.loras)
    texts = [getattr(encoded, n) for n in _PROMPTS]
    extras |= embeddings.activate(model.components, networks.embeddings, texts)
    extras |= vae_files.activate(model, vae, networks.vaes)
    return encoded, extras


def for_other_models(
    load_model: Callable[[str], Any] | None, main: Any, networks: Networks | None
) -> Callable[[str], Any] | None:
    """``load_model`` for the job's other checkpoints (refiner, hires): without LoRAs, with embeddings, own VAE.

    A model kept in the RAM cache may still hold the LoRAs or VAE of a job in which it was the main model.
    """
    if load_model is None:
        return None
    networks = networks or Networks()

    def load(name: str) -> Any:
        other = load_model(name)
        if other.components is not main.components:
            lora.activate(other, [], networks.loras)
            embeddings.activate(other.components, networks.embeddings, ())
            vae_files.own_vae(other)
        return other

    return load
