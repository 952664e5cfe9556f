"""Shared pytest fixtures: an offline environment and tiny random checkpoints in the original LDM format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub, diffusers or gradio: nothing in the test run may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the tiny checkpoints once per session into a temporary ``models/Stable-diffusion`` folder.

    For each kind of ``tests.support.tiny_checkpoints.KINDS`` (``sd1``, ``sd2v``, ``sd1-inpaint``, ``sdxl``) the
    folder holds ``<kind>.safetensors`` and ``<kind>-ckpt.ckpt`` (the same fp16 weights, seed = the kind's index in
    ``KINDS``), each with its yaml beside it (``<kind>.yaml``, ``<kind>-ckpt.yaml``). Treat it as read-only: tests
    that need variants (no yaml, sub-folders, a bad pickle) copy files into their own ``tmp_path``.
    """
    import torch

    from tests.support.tiny_checkpoints import KINDS, ldm_state_dict, save_checkpoint, write_yaml

    folder = tmp_path_factory.mktemp("models") / "Stable-diffusion"
    for seed, kind in enumerate(KINDS):
        state = ldm_state_dict(kind, "tiny", dtype=torch.float16, seed=seed)
        for path in (folder / f"{kind}.safetensors", folder / f"{kind}-ckpt.ckpt"):
            save_checkpoint(state, path, seed=seed)
            write_yaml(kind, path, "tiny")
    return folder


@pytest.fixture(scope="session")
def tiny_models(tiny_models_dir: Path) -> dict[str, Path]:
    """Return the tiny checkpoints by name: ``"sd1"`` → ``sd1.safetensors``, ``"sd1.ckpt"`` → ``sd1-ckpt.ckpt``, etc."""
    from tests.support.tiny_checkpoints import KINDS

    models = {}
    for kind in KINDS:
        models[kind] = tiny_models_dir / f"{kind}.safetensors"
        models[f"{kind}.ckpt"] = tiny_models_dir / f"{kind}-ckpt.ckpt"
    return models
