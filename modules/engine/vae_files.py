"""Separate VAE files (A1111's ``sd_vae`` setting): ``Automatic``, ``None`` or a file of ``models/VAE``.

``None`` keeps the VAE baked into the checkpoint. ``Automatic`` uses a VAE named after the checkpoint when there is
one — ``<checkpoint>.vae.{pt,ckpt,safetensors}`` beside it, or ``<checkpoint>[.vae].{…}`` in ``models/VAE`` — and the
baked-in one otherwise. A file name picks that file. The file's weights (LDM layout, with or without the
``first_stage_model.`` prefix; ``.ckpt``/``.pt`` read with the weights-only unpickler) are copied into the loaded
VAE in place (engine/weights.py), so switching back restores the checkpoint's own exactly and nothing is rebuilt.
The infotext gets ``VAE hash`` (the file's SHA-256, 10 digits) and ``VAE`` (its file name), as in A1111.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from modules.engine.architecture import VAE
from modules.engine.hashes import FileDigests
from modules.engine.safe_load import load_ckpt_state_dict
from modules.engine.weights import weight_views
from modules.errors import InvalidRequestError, WeightPatchError

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC, NONE = "Automatic", "None"
HASH_LENGTH = 10
_SKIPPED = ("loss.", "model_ema.")  # training leftovers some VAE files carry


class VaeLibrary:
    """The VAE files of ``models/VAE`` (sub-folders too) by file name, and their hashes (cached per file state).

    ``forced``: A1111's ``--vae-path``: this file for every model, whatever ``sd_vae`` says.
    """

    def __init__(self, folder: Path, forced: Path | None = None) -> None:
        self.folder = Path(folder)
        self.forced = forced
        self._hashes = FileDigests()

    def files(self) -> dict[str, Path]:
        """``{file name: path}``, sorted by name; the first of two files with one name wins."""
        paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        found: dict[str, Path] = {}
        for path in paths:
            found.setdefault(path.name, path)
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def choose(self, setting: str, checkpoint: Path) -> Path | None:
        """The file ``setting`` selects for ``checkpoint`` (None: the checkpoint's own VAE); ``forced`` when set.

        Raises:
            InvalidRequestError: A file name that is not in the folder; the message lists the choices.
        """
        if self.forced is not None:
            return self.forced
        if setting in ("", NONE):
            return None
        files = self.files()
        if setting == AUTOMATIC:
            stem = checkpoint.name.rsplit(".", 1)[0]
            beside = [checkpoint.with_name(f"{stem}.vae{suffix}") for suffix in SUFFIXES]
            named = [files.get(f"{stem}{suffix}") or files.get(f"{stem}.vae{suffix}") for suffix in SUFFIXES]
            return next((p for p in (*beside, *named) if p is not None and p.is_file()), None)
        if setting in files:
            return files[setting]
        choices = ", ".join([AUTOMATIC, NONE, *files]) or "none"
        raise InvalidRequestError(f"sd_vae: {setting!r} is not in {self.folder} (choices: {choices})")

    def short_hash(self, path: Path) -> str:
        """A1111's VAE hash: the first 10 hex digits of the file's SHA-256."""
        return self._hashes.get(path)[:HASH_LENGTH]


def read_vae(path: Path) -> dict[str, torch.Tensor]:
    """A VAE file's tensors under the checkpoint's keys (``first_stage_model.…``).

    Raises:
        InvalidRequestError: Unreadable, or not a VAE in the LDM layout (e.g. diffusers' ``decoder.up_blocks``).
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = load_ckpt_state_dict(path)
    except Exception as exc:
        raise InvalidRequestError(f"sd_vae: {path.name} cannot be read: {exc}") from exc
    out = {}
    for key, tensor in tensors.items():
        if key.startswith(_SKIPPED) or not isinstance(tensor, torch.Tensor):
            continue
        out[key if key.startswith(VAE) else VAE + key] = tensor
    if not any(k.startswith(VAE + "decoder.up.") for k in out):
        raise InvalidRequestError(f"sd_vae: {path.name} is not a VAE in the original (LDM) layout")
    return out


def activate(model: Any, setting: str, library: VaeLibrary | None) -> dict[str, str]:
    """Give ``model`` (a ``loader.LoadedModel``) the VAE ``setting`` selects; return the infotext's VAE keys.

    The checkpoint's own VAE comes back when the setting selects none. Nothing is read when the selected file (same
    size and time) is in place already.

    Raises:
        InvalidRequestError: An unknown name, or a file that does not fit the model's VAE (it keeps its own then).
    """
    path = library.choose(setting, Path(model.checkpoint.filename)) if library is not None else None
    stat = path.stat() if path is not None else None
    wanted = (str(path), stat.st_size, stat.st_mtime_ns) if path is not None else None
    if wanted != model.vae_file:
        model.vae_patch.restore(model.components)
        model.vae_file = None
        if path is not None:
            views = weight_views(model.components)
            values = {}
            for key, tensor in read_vae(path).items():
                if key in views and tensor.numel() == views[key].numel():
                    values[key] = tensor.reshape(views[key].shape)  # 1×1 attention weights stored 2-D or 4-D
            missing = [k for k in views if k.startswith(VAE) and k not in values]
            if missing:
                raise InvalidRequestError(
                    f"sd_vae: {path.name} does not fit this model's VAE ({len(missing)} weights missing or of another"
                    f" shape, e.g. {missing[0]})"
                )
            try:
                model.vae_patch.put(model.components, values, views=views)
            except WeightPatchError as exc:
                model.vae_patch.restore(model.components)
                raise InvalidRequestError(f"sd_vae: {path.name}: {exc}") from exc
            logger.info("VAE: %s", path.name)
        model.vae_file = wanted
    if path is None or library is None:
        return {}
    return {"VAE hash": library.short_hash(path), "VAE": path.name}


def own_vae(model: Any) -> None:
    """Give ``model`` its checkpoint's own VAE back (a job's refiner or hires checkpoint)."""
    if model.vae_file is not None:
        model.vae_patch.restore(model.components)
        model.vae_file = None
