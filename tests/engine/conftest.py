"""Shared engine-test helpers: one ModelManager per test module, loading the tiny checkpoints on the CPU."""

from collections.abc import Callable
from pathlib import Path

import pytest

from modules.engine.loader import LoadedModel, LoadOptions, ModelManager
from modules.engine.types import CheckpointInfo

FAKE_SHA256 = "ab" * 32  # a fixed hash so infotexts carry a known "Model hash" without hashing in every test


@pytest.fixture(scope="module")
def load_tiny() -> Callable[[Path], LoadedModel]:
    """Return ``load(path)``: the checkpoint (with its yaml) loaded through a module-wide ModelManager."""
    manager = ModelManager()

    def load(path: Path) -> LoadedModel:
        info = CheckpointInfo(path, path.name, sha256=FAKE_SHA256, config=path.with_suffix(".yaml"))
        return manager.get(info, LoadOptions(device="cpu", dtype="float32", vae_dtype="float32"))

    yield load
    manager.unload()
