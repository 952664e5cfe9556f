"""Load k-diffusion's sampling module (the reference A1111 runs) without its package's training-only imports.

``k-diffusion`` is installed with ``--no-deps`` (tests/requirements-nodeps.txt); its ``__init__`` imports modules that
need wandb, clean-fid and others, so a bare package object stands in for it and only ``k_diffusion.sampling`` (and
the ``utils`` it imports) are loaded. Returns None when the package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def load_sampling() -> Any | None:
    """Return the ``k_diffusion.sampling`` module, or None if k-diffusion is unavailable."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")
