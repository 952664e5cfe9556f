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


def _entry(key, start, end):
    from modules.engine.stream_read import Entry

    return Entry(key, start, end, torch.uint8, (end - start,))


def test_plan_chunks_groups_neighbours_splits_large_tensors_and_skips_far_gaps():
    from modules.engine.stream_read import plan_chunks

    wanted = [_entry("a", 100, 110), _entry("b", 110, 130), _entry("c", 140, 400), _entry("far", 10_000, 10_005)]
    chunks = plan_chunks(wanted, chunk_bytes=100, max_gap=50)
    covered = {}
    for chunk in chunks:
        assert chunk.size <= 100
        for p in chunk.pieces:
            assert p.src >= 0 and p.src + p.size <= chunk.size
            entry = wanted[p.tensor]
            assert chunk.start + p.src == entry.start + p.dst  # the piece's bytes come from the tensor's place
            covered[p.tensor] = covered.get(p.tensor, 0) + p.size
    assert covered == {i: e.end - e.start for i, e in enumerate(wanted)}
    assert [p.tensor for p in chunks[0].pieces] == [0, 1, 2]  # a, b and the start of c share the first read
    assert chunks[-1].start == 10_000 and chunks[-1].size == 5  # the 9.6 kB gap is not read


def test_split_even_keeps_order_and_balances_bytes():
    from modules.engine.stream_read import Chunk, split_even

    chunks = [Chunk(i * 10, 10, ()) for i in range(10)]
    runs = split_even(chunks, 3)
    assert [c for run in runs for c in run] == chunks
    assert len(runs) == 3 and all(3 <= len(run) <= 4 for run in runs)
    assert split_even(chunks[:1], 4) == [chunks[:1]]


@pytest.mark.parametrize("workers", [1, 3])
def test_parallel_workers_read_the_same_tensors(tiny_models, workers):
    path = tiny_models["sd1"]
    expected = load_file(path)
    got = read_tensors(path, "cpu", lambda k: not k.startswith("cond_stage_model."), lambda k, d: d,
                       slot_bytes=4096, workers=workers)  # fmt: skip
    assert set(got) == {k for k in expected if not k.startswith("cond_stage_model.")}
    assert all(torch.equal(got[k], expected[k]) for k in got)
