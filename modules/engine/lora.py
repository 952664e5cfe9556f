"""LoRA networks named in the prompt (``<lora:name:te[:unet[:dyn]]>``), merged into the loaded model in place.

A1111's syntax: the tag is taken out of the prompt before it is encoded (the infotext keeps the prompt as written)
and ``Lora hashes: "name: hash, …"`` is added to the infotext; ``te`` multiplies the text-encoder layers, ``unet``
(default: ``te``) the UNet's; ``<lyco:…>`` is the same. Tags of other extra networks (hypernetworks) are taken out
and logged as not supported. Files: ``models/Lora`` (``--lora-dir``), sub-folders included, found by file name
without extension; ``.safetensors`` only (a pickle could run code).

Formats: kohya-ss (``<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``: almost every civitai LoRA,
LoCon's convolution layers included) and diffusers/PEFT (``unet.…lora_A.weight`` / ``lora.down.weight``). Each
layer's change ``up · down · alpha / rank · multiplier`` is computed in float32 on the weight's device and added to
the weight in place (engine/weights.py): the UNet's CUDA graphs and compiled kernels see it at the next job with no
new capture or compile. The merged set is kept with the model; a job naming another set (or none) first puts the
original weights back bit for bit, so nothing accumulates.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.engine.hashes import FileDigests
from modules.engine.lora_names import LoraTarget, lora_targets
from modules.engine.types import NetworkFile
from modules.engine.weights import weight_views
from modules.errors import InvalidRequestError, WeightPatchError

logger = logging.getLogger(__name__)

TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TAGS = ("lora", "lyco")
HASH_LENGTH = 12
_KOHYA = re.compile(r"^(lora_(?:unet|te\d?)_.+)\.(lora_down|lora_up)\.weight$")
_PEFT = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$")
_PEFT_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
_DOWN = ("lora_down", "lora_A", "lora.down")
# Key fragments of network types that are not low-rank pairs, and what they are.
_UNSUPPORTED = (
    ("hada_", "LyCORIS LoHa"),
    ("lokr_", "LyCORIS LoKr"),
    (".lora_mid.", "LoCon with a Tucker middle weight"),
    (".oft_", "OFT"),
    (".on_input", "IA3"),
)


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:…>`` tag: the file's name and the multipliers of its text-encoder and UNet layers."""

    name: str
    te: float = 1.0
    unet: float = 1.0


def _number(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(f"prompt: {tag}: {text!r} is not a number") from None
    if not math.isfinite(value):  # an infinite weight would turn every image into NaNs
        raise InvalidRequestError(f"prompt: {tag}: {text!r} is not a finite number")
    return value


def _lora_tag(args: str, tag: str) -> LoraTag:
    items = args.split(":")
    positional = [item for item in items[1:] if "=" not in item]
    named = dict(item.split("=", 1) for item in items[1:] if "=" in item)
    te = _number(named.get("te", positional[0] if positional else "1"), tag)
    unet = (
        _number(named["unet"], tag) if "unet" in named else _number(positional[1], tag) if len(positional) > 1 else te
    )
    if "dyn" in named or len(positional) > 2:
        logger.info("%s: dynamic rank (dyn) is not supported; the full rank is used", tag)
    return LoraTag(items[0].strip(), te, unet)


def parse_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Return the prompt without its extra-network tags, and its LoRA tags in order (A1111: removed, not spaced).

    Raises:
        InvalidRequestError: A multiplier that is not a number.
    """
    tags: list[LoraTag] = []

    def take(match: re.Match[str]) -> str:
        if match.group(1) in LORA_TAGS:
            tags.append(_lora_tag(match.group(2), match.group(0)))
        else:
            logger.warning("Extra network %s is not supported here; it was left out of the prompt", match.group(0))
        return ""

    return TAG.sub(take, prompt), tags


class LoraLibrary:
    """The LoRA files of one folder, listed by name, and their A1111 short hashes (computed once per file state)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._files: dict[str, NetworkFile] | None = None
        self._hashes = FileDigests(_lora_hash)

    def refresh(self) -> list[NetworkFile]:
        """Scan the folder again (sub-folders too) and return the files, sorted by name."""
        found = sorted(self.folder.rglob("*.safetensors"), key=lambda p: (p.stem.lower(), str(p)))
        files = {}
        for path in found:
            files.setdefault(path.stem, NetworkFile(path.stem, path))
        with self._lock:
            self._files = files
        return list(files.values())

    def files(self) -> list[NetworkFile]:
        """The files found by the last scan (scanning first if there was none)."""
        with self._lock:
            files = self._files
        return list(files.values()) if files is not None else self.refresh()

    def find(self, name: str) -> NetworkFile:
        """The file named ``name`` (scanning again when it is not known yet).

        Raises:
            InvalidRequestError: No such file; the message lists what there is.
        """
        for files in (self.files(), self.refresh()):
            match = next((f for f in files if f.name == name), None)
            if match is not None:
                return match
        names = ", ".join(f.name for f in self.files()) or "none"
        raise InvalidRequestError(f"prompt: LoRA {name!r} not found in {self.folder} (found: {names})")

    def short_hash(self, file: NetworkFile) -> str:
        """A1111's LoRA hash: the file's ``sshs_model_hash`` metadata, else SHA-256 of the data after the header."""
        return self._hashes.get(file.path)[:HASH_LENGTH]


def _lora_hash(path: Path) -> str:
    return NetworkFile(path.stem, path).metadata().get("sshs_model_hash") or _tensor_data_sha256(path)


def _tensor_data_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(8 + length)
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank pair of a LoRA file: ``down`` (rank × in…), ``up`` (out × rank…) and ``alpha`` (None: rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None
    diffusers: bool = False  # named by diffusers' components (``text_encoder`` is then SDXL's first encoder too)

    def delta(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """``up · down · alpha / rank`` in float32 on ``device``, shaped as the weight it changes."""
        down = self.down.to(device, torch.float32).flatten(1)
        up = self.up.to(device, torch.float32).flatten(1)
        rank = down.shape[0]
        if up.shape[1] != rank or up.shape[0] * down.shape[1] != torch.Size(shape).numel():
            raise WeightPatchError(f"a LoRA layer of {tuple(up.shape)} × {tuple(down.shape)} for a weight of {shape}")
        scale = self.alpha / rank if self.alpha is not None else 1.0
        return (up @ down).mul_(scale).reshape(shape)


def read_layers(path: Path) -> dict[str, LoraLayer]:
    """The low-rank pairs of a LoRA file by kohya name (diffusers/PEFT names are translated).

    Raises:
        InvalidRequestError: Unreadable, not a LoRA this engine can merge (LoHa, LoKr, …), or no low-rank pair in it.
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # truncated or not safetensors: whatever the reader raised
        raise InvalidRequestError(f"{path.name}: cannot be read as a LoRA: {exc}") from exc
    for fragment, kind in _UNSUPPORTED:
        if any(fragment in key for key in tensors):
            raise InvalidRequestError(f"{path.name}: {kind} networks are not supported; only LoRA/LoCon")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    diffusers_named: set[str] = set()
    for key, tensor in tensors.items():
        kohya, peft = _KOHYA.match(key), _PEFT.match(key)
        if kohya:
            name, part = kohya.group(1), kohya.group(2)
        elif peft:
            name, part = _PEFT_PREFIX[peft.group(1)] + peft.group(2).replace(".", "_"), peft.group(3)
            diffusers_named.add(name)
        else:
            continue
        pairs.setdefault(name, {})["down" if part in _DOWN else "up"] = tensor
    if not pairs:
        raise InvalidRequestError(f"{path.name}: no LoRA layers (lora_down/lora_up or lora_A/lora_B) in the file")
    layers = {}
    for name, pair in pairs.items():
        if set(pair) != {"down", "up"}:
            raise InvalidRequestError(f"{path.name}: layer {name} has no {'up' if 'down' in pair else 'down'} weight")
        alpha = tensors.get(f"{name}.alpha")
        alpha_value = float(alpha) if alpha is not None else None
        layers[name] = LoraLayer(pair["down"], pair["up"], alpha_value, diffusers=name in diffusers_named)
    return layers


def _target(name: str, layer: LoraLayer, targets: dict[str, LoraTarget]) -> LoraTarget | None:
    """``name``'s target; diffusers' ``text_encoder`` of SDXL is its first encoder (kohya's ``lora_te1_``).

    (Only for diffusers' names: a kohya ``lora_te_`` layer is SD1/SD2's, and must not change SDXL's CLIP-L.)
    """
    found = targets.get(name)
    if found is None and layer.diffusers and name.startswith("lora_te_"):
        found = targets.get("lora_te1_" + name.removeprefix("lora_te_"))
    return found


def _changes(
    file: NetworkFile, tag: LoraTag, views: dict[str, torch.Tensor], targets: dict[str, LoraTarget]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint key, change) for every layer of ``file`` that the model has, with the tag's multipliers."""
    layers = read_layers(file.path)
    matched = {name: target for name, layer in layers.items() if (target := _target(name, layer, targets)) is not None}
    if not matched:
        raise InvalidRequestError(
            f"prompt: LoRA {tag.name!r} has no layer this model has: it was made for another model type"
        )
    if len(matched) < len(layers):
        logger.warning(
            "LoRA %s: %d of its %d layers match nothing in this model",
            tag.name,
            len(layers) - len(matched),
            len(layers),
        )
    for name, target in matched.items():
        multiplier = tag.unet if name.startswith("lora_unet_") else tag.te
        if multiplier == 0:
            continue
        weight = views[target.key]
        rows = weight.shape[0] // target.chunks
        try:
            delta = layers[name].delta((rows, *weight.shape[1:]), weight.device).mul_(multiplier)
        except WeightPatchError as exc:
            raise InvalidRequestError(
                f"prompt: LoRA {tag.name!r}, layer {name}: {exc} (made for another model?)"
            ) from exc
        if target.chunks > 1:
            whole = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
            whole[target.chunk * rows : (target.chunk + 1) * rows] = delta
            delta = whole
        yield target.key, delta


def activate(model: object, tags: list[LoraTag], library: LoraLibrary | None) -> dict[str, str]:
    """Make ``model``'s merged LoRAs those of ``tags``; return the infotext's ``Lora hashes`` (empty without tags).

    Nothing is done when the same files with the same multipliers are merged already. Otherwise the original weights
    are put back first, then each tag's layers are added in place. ``model`` is a ``loader.LoadedModel``.

    Raises:
        InvalidRequestError: An unknown name (the model keeps what it held), an unsupported or unreadable file, or
            one made for another model type (the model then holds its original weights).
    """
    if tags and library is None:
        raise InvalidRequestError("prompt: LoRA tags need a LoRA folder, and this engine was started without one")
    files = [library.find(tag.name) for tag in tags] if tags else []
    wanted = tuple((file.stamp, tag.te, tag.unet) for file, tag in zip(files, tags, strict=True))
    if wanted == model.merged_loras:  # merged already: nothing to do, and the hashes are known
        hashes = {file.name: library.short_hash(file) for file in files} if files else {}
    elif not files:
        _merge(model, [], [], wanted)
        return {}
    else:  # a file's first hash reads all of it (0.45 s for an SDXL LoRA of 450 MB): it runs beside the merge
        with ThreadPoolExecutor(max_workers=len(files), thread_name_prefix="lora-hash") as pool:
            pending = {file.name: pool.submit(library.short_hash, file) for file in files}
            _merge(model, files, tags, wanted)
            hashes = {name: value.result() for name, value in pending.items()}
    return {"Lora hashes": ", ".join(f"{name}: {value}" for name, value in hashes.items())} if hashes else {}


def _merge(model: Any, files: list[NetworkFile], tags: list[LoraTag], wanted: tuple) -> None:
    """Put ``model``'s original weights back and add ``tags``' layers (``wanted`` describes them)."""
    model.weight_patch.restore(model.components)
    model.merged_loras = ()
    if tags:
        views = weight_views(model.components)
        targets = lora_targets(views)
        try:
            for file, tag in zip(files, tags, strict=True):
                for key, delta in _changes(file, tag, views, targets):
                    model.weight_patch.add(model.components, {key: delta}, views=views)
        except BaseException:
            model.weight_patch.restore(model.components)
            raise
        logger.info("LoRA merged: %s", ", ".join(f"{t.name} (te {t.te:g}, unet {t.unet:g})" for t in tags))
    model.merged_loras = wanted
