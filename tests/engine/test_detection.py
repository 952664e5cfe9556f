"""Detection of the model type from header keys/shapes (tests/fixtures/headers), in A1111's order."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from modules.engine.detection import DETECTION_RULES, detect_model_type, read_header, read_safetensors_header
from modules.engine.types import ModelType
from modules.errors import CheckpointLoadError, UnknownModelTypeError

HEADERS = Path(__file__).resolve().parents[1] / "fixtures" / "headers"
EXPECTED = {
    "sd1": ModelType.SD1,
    "sd1-inpaint": ModelType.SD1_INPAINT,
    "sd1-pix2pix": ModelType.SD1_PIX2PIX,
    "sd2v": ModelType.SD2,
    "sd2-inpaint": ModelType.SD2_INPAINT,
    "sdxl": ModelType.SDXL,
    "sdxl-inpaint": ModelType.SDXL_INPAINT,
    "sdxl-refiner": ModelType.SDXL_REFINER,
}
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def header(kind: str, size: str) -> dict[str, list[int]]:
    return json.loads((HEADERS / f"{kind}-{size}.json").read_text())


def write_safetensors(path: Path, entries: dict[str, object], payload: bytes = b"") -> Path:
    raw = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


@pytest.mark.parametrize("size", ["tiny", "full"])
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_kind_is_detected(kind: str, size: str) -> None:
    assert detect_model_type(header(kind, size)) is EXPECTED[kind]


def test_sdxl_wins_over_sd1_keys_in_a1111_order() -> None:
    # An SDXL header also has the SD1 sentinel (the UNet input conv); the SDXL row comes first.
    shapes = header("sdxl", "tiny")
    assert UNET_IN in shapes
    assert detect_model_type(shapes) is ModelType.SDXL
    sentinels = [rule.sentinel for rule in DETECTION_RULES]
    assert sentinels.index("conditioner.embedders.1.model.ln_final.weight") < sentinels.index(UNET_IN)
    assert sentinels.index("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight") < sentinels.index(
        UNET_IN
    )


def test_eight_input_channels_are_instruct_pix2pix() -> None:
    shapes = dict(header("sd1", "tiny"))
    shapes[UNET_IN] = [32, 8, 3, 3]
    assert detect_model_type(shapes, source="ip2p.safetensors") is ModelType.SD1_PIX2PIX
    assert ModelType.SD1_PIX2PIX.is_edit and not ModelType.SD1_PIX2PIX.is_inpaint


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_te_text_model.alpha"], "models/Lora"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight", "quant_conv.weight"], "VAE"),
        (["model.diffusion_model.x_embedder.proj.weight"], "SD3"),
        (["double_blocks.0.img_attn.qkv.weight"], "Flux"),
        (["string_to_param.*"], "embeddings/"),
    ],
)
def test_non_checkpoints_get_a_helpful_message(keys: list[str], expected: str) -> None:
    with pytest.raises(UnknownModelTypeError) as info:
        detect_model_type({k: [4, 4] for k in keys}, source=Path("/x/thing.safetensors"))
    message = str(info.value)
    assert "thing.safetensors" in message
    assert expected in message


def test_garbage_header_names_file_and_sentinels() -> None:
    with pytest.raises(UnknownModelTypeError) as info:
        detect_model_type({"foo": [1], "bar.weight": [2, 2]}, source="garbage.safetensors")
    message = str(info.value)
    assert "garbage.safetensors" in message
    assert "conditioner.embedders.1.model.ln_final.weight" in message
    assert UNET_IN in message
    assert "foo" in message


def test_read_safetensors_header_reads_shapes_only(tmp_path: Path) -> None:
    entries = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [], "data_offsets": [12, 16]},
    }
    path = write_safetensors(tmp_path / "ok.safetensors", entries, b"\0" * 16)
    assert read_header(path) == {"a": (2, 3), "b": ()}


def test_truncated_safetensors_is_a_load_error(tmp_path: Path) -> None:
    entries = {"a": {"dtype": "F16", "shape": [1000], "data_offsets": [0, 2000]}}
    path = write_safetensors(tmp_path / "cut.safetensors", entries, b"\0" * 100)
    with pytest.raises(CheckpointLoadError, match=r"cut\.safetensors: truncated"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 5) + b"{nope"],
    ids=["empty", "short", "huge-length", "bad-json"],
)
def test_corrupt_safetensors_is_a_load_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError, match=r"bad\.safetensors"):
        read_header(path)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "x.onnx"
    other.write_bytes(b"123")
    with pytest.raises(CheckpointLoadError, match="unsupported file type"):
        read_header(other)
    with pytest.raises(CheckpointLoadError, match="no such file"):
        read_header(tmp_path / "missing.safetensors")


def test_read_header_of_real_tiny_files(tiny_models: dict[str, Path]) -> None:
    shapes = read_header(tiny_models["sdxl"])
    assert detect_model_type(shapes) is ModelType.SDXL
    ckpt_shapes = read_header(tiny_models["sdxl.ckpt"])  # Lightning layout: keys under "state_dict"
    assert ckpt_shapes == shapes
