"""Fixtures for the UI tests: a real AppContext over a temporary data dir (no checkpoints, no download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.context import AppContext
from modules.flags import parse_flags


def make_context(data_dir: Path, *extra: str) -> AppContext:
    """Build the context exactly as webui.py does, over ``data_dir``."""
    import webui

    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model", *extra], environ={})
    return webui.create_context(flags)


@pytest.fixture
def empty_ctx(tmp_path: Path) -> Iterator[AppContext]:
    """A context with no checkpoints (the first-run state with --no-download-sd-model)."""
    ctx = make_context(tmp_path)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def shared_empty_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    """Like ``empty_ctx`` but shared by a module's read-only tests (building a context costs about a second)."""
    ctx = make_context(tmp_path_factory.mktemp("data"))
    yield ctx
    ctx.close()
