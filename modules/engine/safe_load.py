"""Load ``.ckpt`` (pickle) checkpoints without executing code: torch's weights-only unpickler plus a small allow-list.

Real Stable Diffusion ``.ckpt`` files are PyTorch Lightning checkpoints. Besides tensors and ``OrderedDict`` (which
torch's ``weights_only`` unpickler accepts on its own) they hold a few extra globals:

- numpy scalars and dtypes (``global_step`` saved as ``numpy.int64``): ``numpy.core.multiarray.scalar`` (numpy 1
  name) or ``numpy._core.multiarray.scalar`` (numpy 2), ``numpy.dtype`` and numpy 2's ``numpy.dtypes.*DType`` classes.
- ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``: the *class object* used as a key of the
  ``callbacks`` dict (sd-v1-4-full-ema.ckpt and other training checkpoints). It is allow-listed under that name as
  :class:`LightningPlaceholder`, an inert local class, so Lightning is never imported and nothing of it runs.

Everything else is refused with :class:`~modules.errors.UnsafeCheckpointError` before any of it is executed: the
weights-only unpickler checks every ``GLOBAL`` against the allow-list before it resolves it.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.errors import CheckpointLoadError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
UNSAFE_HINT = (
    "refused; nothing was executed; convert it to .safetensors or start with --disable-safe-unpickle if you trust it"
)
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|classes allowlisted.*got (\S+)")


class LightningPlaceholder:
    """Inert stand-in for Lightning callback classes named in a checkpoint; it stores what it is given, runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: object) -> None:
        """Keep the pickled state as plain data."""
        self.state = state


def _numpy_globals() -> list[Any]:
    """Return the numpy objects (with their numpy-1 and numpy-2 pickle names) that checkpoints may reference."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    entries: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    for name in ("Int64DType", "Int32DType", "Float64DType", "Float32DType", "Float16DType", "BoolDType"):
        dtype_class = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_class is not None:
            entries.append(dtype_class)
    return entries


def allowed_globals() -> list[Any]:
    """Return the extra globals a Stable Diffusion ``.ckpt`` may reference, for ``torch.serialization.safe_globals``.

    Returns:
        Objects, or ``(object, "module.qualname")`` pairs where the pickled name differs from the object's own.
    """
    return [*_numpy_globals(), (LightningPlaceholder, LIGHTNING_CALLBACK)]


def _offending_globals(path: Path, error: Exception) -> list[str]:
    """Name the globals that made the weights-only unpickler refuse ``path`` (static scan, else the message)."""
    names: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with torch.serialization.safe_globals(allowed_globals()):
                names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (ValueError, RuntimeError, pickle.UnpicklingError, OSError) as scan_error:
            logger.debug("static scan of %s failed: %s", path, scan_error)
    if not names:
        names = [next(g for g in m.groups() if g) for m in _GLOBAL_IN_MESSAGE.finditer(str(error))]
    # torch strips the "builtins." prefix from its message; put it back so the name is unambiguous.
    return [n if "." in n else f"builtins.{n}" for n in dict.fromkeys(names)] or ["<unknown>"]


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    """Call ``torch.load`` on CPU, memory-mapped when the file is in the zip format (torch >= 1.6 files)."""
    return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipfile.is_zipfile(path))


def load_pickle_checkpoint(path: Path, *, allow_unsafe: bool = False) -> Any:
    """Unpickle a ``.ckpt`` file, refusing anything outside the allow-list.

    Args:
        path: The ``.ckpt`` file.
        allow_unsafe: The ``--disable-safe-unpickle`` opt-out: unpickle with no restriction (runs arbitrary code from
            the file). A warning is logged.

    Returns:
        The unpickled object (usually a dict holding ``state_dict``).

    Raises:
        UnsafeCheckpointError: The pickle references a global outside the allow-list; nothing was executed.
        CheckpointLoadError: The file is missing, truncated or not a torch pickle.
    """
    path = Path(path)
    try:
        if allow_unsafe:
            logger.warning("Loading %s with the safe unpickler DISABLED (--disable-safe-unpickle)", path.name)
            return _torch_load(path, weights_only=False)
        with torch.serialization.safe_globals(allowed_globals()):
            return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        if allow_unsafe or "Weights only load failed" not in str(error):
            raise CheckpointLoadError(f"{path.name}: not a readable checkpoint ({_first_line(error)})") from error
        offending = ", ".join(_offending_globals(path, error))
        raise UnsafeCheckpointError(f"{path.name}: references {offending}; {UNSAFE_HINT}") from error
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointLoadError(f"{path.name}: not a readable checkpoint ({_first_line(error)})") from error


def _first_line(error: BaseException) -> str:
    """Return the first line of an exception's message (or its type name if empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the flat ``key → tensor`` mapping of an unpickled checkpoint.

    Lightning checkpoints nest it under ``"state_dict"``; bare state dicts are the top level. Non-tensor entries
    (``global_step``, ``epoch``…) are left out.

    Args:
        obj: What :func:`load_pickle_checkpoint` returned.
        source: File name for error messages.

    Raises:
        CheckpointLoadError: No tensors were found.
    """
    inner = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in inner.values()):
        inner = obj
    if not isinstance(inner, Mapping):
        raise CheckpointLoadError(f"{source}: the pickle holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointLoadError(f"{source}: the checkpoint holds no tensors")
    return tensors


def load_ckpt_state_dict(path: Path, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Load a ``.ckpt`` file's tensors (see :func:`load_pickle_checkpoint` and :func:`extract_state_dict`)."""
    path = Path(path)
    return extract_state_dict(load_pickle_checkpoint(path, allow_unsafe=allow_unsafe), source=path.name)
