"""The overlapped safetensors reader (engine/stream_read.py), run on the CPU with the same code as on CUDA."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.engine.stream_read import UnsupportedFileError, entries, read_tensors


def test_reads_every_wanted_tensor_exactly_through_small_buffers(tiny_models, tmp_path):
    path = tiny_models["sdxl"]
    expected = load_file(path)
    wanted = lambda key: key.startswith(("model.diffusion_model.", "first_stage_model."))  # noqa: E731

    def target(key, file_dtype):
        return torch.float64 if key.startswith("first_stage_model.") else file_dtype

    got = read_tensors(path, "cpu", wanted, target, slot_bytes=1000)  # most tensors span several buffers
    assert set(got) == {k for k in expected if wanted(k)}
    for key, tensor in got.items():
        ref = expected[key]
        assert tensor.shape == ref.shape
        if key.startswith("first_stage_model.") and ref.is_floating_point():
            assert tensor.dtype == torch.float64 and torch.equal(tensor, ref.double())
        else:
            assert tensor.dtype == ref.dtype and torch.equal(tensor, ref)


def test_mixed_dtypes_and_empty_tensors(tmp_path):
    path = tmp_path / "mixed.safetensors"
    tensors = {
        "a": torch.arange(7, dtype=torch.int64),
        "b": torch.randn(3, 5, dtype=torch.bfloat16),
        "c": torch.zeros(0, 4),
        "d": torch.tensor([True, False, True]),
    }
    save_file(tensors, path)
    got = read_tensors(path, "cpu", lambda k: True, lambda k, d: d, slot_bytes=8)
    found = entries(path)
    assert {e.key for e in found} == set(tensors) and [e.start for e in found] == sorted(e.start for e in found)
    for key, tensor in tensors.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor)


def test_truncated_file_and_unknown_dtype(tiny_models, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_models["sd1"].read_bytes()[:-5000])
    with pytest.raises(ValueError, match="truncated"):
        read_tensors(cut, "cpu", lambda k: True, lambda k, d: d)
    odd = tmp_path / "odd.safetensors"
    header = json.dumps({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    odd.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(UnsupportedFileError, match="C64"):
        read_tensors(odd, "cpu", lambda k: True, lambda k, d: d)
