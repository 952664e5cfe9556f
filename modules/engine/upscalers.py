"""Image upscalers: the built-in None/Lanczos/Nearest and super-resolution model files loaded with spandrel.

A1111 behaviour kept here (modules/upscaler.py, modules/upscaler_utils.py):

- Model files (``.pth``, ``.pt``, ``.safetensors``) are found in ``models/ESRGAN``, ``models/RealESRGAN``,
  ``models/SwinIR``, ``models/DAT``, ``models/HAT``, ``models/SCUNet``, ``models/BSRGAN`` (or the ``--*-models-path``
  folders) and named by their file stem. spandrel detects the architecture from the weights; ``.pth`` files go
  through its restricted unpickler, never a plain ``pickle`` load.
- ``upscale(image, w, h, name)`` runs the model (scale s) repeatedly, at most 3 times, until the image reaches the
  target, then resizes to exactly w×h with Lanczos; "None" only resizes. Large images are processed in tiles
  (``tile`` px with ``overlap`` px, A1111's ESRGAN_tile/ESRGAN_tile_overlap 192/8) blended where they overlap.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.errors import InvalidRequestError, WebuiError

logger = logging.getLogger(__name__)

BUILTIN = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "SCUNet", "BSRGAN")
SUFFIXES = frozenset({".pth", ".pt", ".safetensors"})
MAX_PASSES = 3


class UpscalerLoadError(WebuiError):
    """An upscaler model file could not be read or is not a supported super-resolution architecture."""

    status_code = 422


@dataclass(frozen=True, slots=True)
class UpscalerInfo:
    """One upscaler as ``/sdapi/v1/upscalers`` lists it."""

    name: str
    path: Path | None = None
    scale: float | None = None

    def to_api(self) -> dict[str, object]:
        """The API item (A1111 fields)."""
        return {
            "name": self.name,
            "model_name": self.name if self.path is not None else None,
            "model_path": str(self.path) if self.path is not None else None,
            "model_url": None,
            "scale": self.scale,
        }


def _scale_from_name(stem: str) -> float:
    """A1111 lists model upscalers with scale 4 unless the name says otherwise (``2x_…``, ``…_x3``)."""
    match = re.search(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", stem, re.IGNORECASE)
    return float(match.group(1) or match.group(2)) if match else 4.0


def scan(folders: list[Path]) -> list[UpscalerInfo]:
    """Model files in ``folders`` (sorted by name; the first of two files with the same stem wins)."""
    found: dict[str, UpscalerInfo] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in SUFFIXES and path.stem not in BUILTIN:
                found.setdefault(path.stem, UpscalerInfo(path.stem, path, _scale_from_name(path.stem)))
    return sorted(found.values(), key=lambda u: u.name.lower())


class UpscalerRegistry:
    """Named upscalers with one model kept loaded; thread-safe (the job worker and the API may both call it)."""

    def __init__(self, folders: list[Path], device: str = "cpu", tile: int = 192, overlap: int = 8) -> None:
        self.folders = list(folders)
        self.device = device
        self.tile = tile
        self.overlap = overlap
        self._models: list[UpscalerInfo] = scan(self.folders)
        self._loaded: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Rescan the folders (A1111's refresh-upscalers)."""
        with self._lock:
            self._models = scan(self.folders)
            self._loaded = None

    def infos(self) -> list[UpscalerInfo]:
        """Built-ins first, then the model files."""
        return [UpscalerInfo(name, None, None if name == "None" else 4.0) for name in BUILTIN] + list(self._models)

    def names(self) -> list[str]:
        """Every upscaler name, as the UI and API show them."""
        return [u.name for u in self.infos()]

    def upscale(self, image: Image.Image, width: int, height: int, name: str) -> Image.Image:
        """Upscale ``image`` with ``name`` and resize it to exactly width×height (see the module docstring).

        Raises:
            InvalidRequestError: For an unknown upscaler name (the valid ones are listed).
            UpscalerLoadError: The model file cannot be read as a super-resolution model.
        """
        image = image.convert("RGB")
        if name in BUILTIN:
            resample = BUILTIN[name]
            if resample is not None:
                image = _passes(image, width, height, lambda im: im.resize(_scaled(im, width, height), resample))
        else:
            model = self._model(name)
            image = _passes(image, width, height, lambda im: self._run(model, im))
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image

    def _model(self, name: str) -> Any:
        with self._lock:
            if self._loaded is not None and self._loaded[0] == name:
                return self._loaded[1]
            info = next((u for u in self._models if u.name == name), None)
            if info is None:
                raise InvalidRequestError(f"could not find upscaler named {name!r}; known: {', '.join(self.names())}")
            self._loaded = None
            descriptor = load_model(info.path, self.device)
            self._loaded = (name, descriptor)
            return descriptor

    def _run(self, descriptor: Any, image: Image.Image) -> Image.Image:
        """One model pass over ``image``, tiled."""
        return run_tiled(descriptor, image, self.tile, self.overlap)


def _scaled(image: Image.Image, width: int, height: int) -> tuple[int, int]:
    """Size after one built-in pass: the scale that reaches the target (A1111: the larger of the two ratios)."""
    scale = max(width / image.width, height / image.height)
    return max(1, int(image.width * scale)), max(1, int(image.height * scale))


def _passes(image: Image.Image, width: int, height: int, one_pass: Any) -> Image.Image:
    """Apply ``one_pass`` until the image covers width×height (at most 3 passes; stop if a pass changes nothing)."""
    for _ in range(MAX_PASSES):
        if image.width >= width and image.height >= height:
            break
        before = image.size
        image = one_pass(image)
        if image.size == before:
            break
    return image


def load_model(path: Path | None, device: str) -> Any:
    """Load a super-resolution model with spandrel onto ``device`` (fp16 on CUDA when it supports half).

    Raises:
        UpscalerLoadError: The file is unreadable or not an image-to-image super-resolution model.
    """
    import spandrel  # heavy import (it registers every architecture): only when a model is used

    try:
        descriptor = spandrel.ModelLoader(device=torch.device(device)).load_from_file(str(path))
    except Exception as exc:  # spandrel raises many kinds for bad files: report them as one readable error
        raise UpscalerLoadError(f"{path}: not a usable upscaler model ({type(exc).__name__}: {exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise UpscalerLoadError(f"{path}: {descriptor.architecture.name} is not an image upscaler")
    if torch.device(device).type == "cuda" and descriptor.supports_half:
        descriptor.model.half()
    descriptor.model.eval()
    logger.info(
        "Loaded upscaler %s (%s, x%s) on %s",
        Path(str(path)).name,
        descriptor.architecture.name,
        descriptor.scale,
        device,
    )
    return descriptor


def run_tiled(descriptor: Any, image: Image.Image, tile: int, overlap: int) -> Image.Image:
    """Run the model over ``image`` in overlapping tiles (whole image when ``tile`` is 0 or it fits)."""
    param = next(descriptor.model.parameters())
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    scale = int(descriptor.scale)
    _, _, h, w = x.shape
    out = torch.zeros(1, 3, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    size = tile if tile and tile < max(h, w) else max(h, w)
    stride = max(size - overlap, 1)
    with torch.inference_mode():
        for top in _starts(h, size, stride):
            for left in _starts(w, size, stride):
                patch = x[:, :, top : top + size, left : left + size]
                result = _run_patch(descriptor, patch.to(param.device, param.dtype)).float().cpu()
                ph, pw = patch.shape[-2] * scale, patch.shape[-1] * scale
                out[:, :, top * scale : top * scale + ph, left * scale : left * scale + pw] += result[:, :, :ph, :pw]
                weight[:, :, top * scale : top * scale + ph, left * scale : left * scale + pw] += 1
    arr = (out / weight).clamp(0, 1)[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Tile start offsets covering ``length`` (the last tile is aligned to the end)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def _run_patch(descriptor: Any, patch: torch.Tensor) -> torch.Tensor:
    """Pad the patch to the model's size requirements (reflect), run it, crop the padding away."""
    req = descriptor.size_requirements
    _, _, h, w = patch.shape
    mult = max(req.multiple_of, 1)
    th, tw = max(h, req.minimum), max(w, req.minimum)
    th, tw = -(-th // mult) * mult, -(-tw // mult) * mult
    if req.square:
        th = tw = max(th, tw)
    if (th, tw) != (h, w):
        mode = "reflect" if th - h < h and tw - w < w else "replicate"
        patch = torch.nn.functional.pad(patch, (0, tw - w, 0, th - h), mode=mode)
    out = descriptor(patch)
    return out[:, :, : h * int(descriptor.scale), : w * int(descriptor.scale)]
