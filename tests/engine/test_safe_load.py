"""The .ckpt loader refuses pickles that would run code, and accepts what real SD checkpoints hold."""

from __future__ import annotations

import builtins
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.engine.safe_load import (
    LIGHTNING_CALLBACK,
    LightningPlaceholder,
    extract_state_dict,
    load_ckpt_state_dict,
    load_pickle_checkpoint,
)
from modules.errors import CheckpointLoadError, UnsafeCheckpointError


class SystemCall:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class ExecCall:
    """Unpickling this runs ``builtins.exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_system_pickle_is_refused_and_never_runs(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.ones(2)}, "x": SystemCall(f"touch {marker}")}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_ckpt_state_dict(path)
    message = str(info.value)
    assert not marker.exists()
    assert "evil.ckpt" in message
    assert "system" in message  # the offending global (posix.system / nt.system)
    assert "nothing was executed" in message
    assert "--disable-safe-unpickle" in message


def test_malicious_exec_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil2.ckpt"
    torch.save({"state_dict": {}, "x": ExecCall(f"open({str(marker)!r}, 'w').close()")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec"):
        load_pickle_checkpoint(path)
    assert not marker.exists()


def test_disable_safe_unpickle_runs_the_pickle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "trusted.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": ExecCall(f"open({str(marker)!r}, 'w').close()")}, path)
    state = load_ckpt_state_dict(path, allow_unsafe=True)
    assert marker.exists()
    assert set(state) == {"w"}
    assert "DISABLED" in caplog.text


@pytest.fixture
def fake_lightning(monkeypatch: pytest.MonkeyPatch) -> type:
    """A stand-in for pytorch_lightning's ModelCheckpoint, importable only while saving."""
    module_name, class_name = LIGHTNING_CALLBACK.rsplit(".", 1)
    module = types.ModuleType(module_name)
    cls = type(class_name, (), {"__module__": module_name})
    module.ModelCheckpoint = cls
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module_name, module)
    return cls


def test_real_checkpoint_extras_are_allowed(tmp_path: Path, fake_lightning: type) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.arange(3.0)},
            "global_step": np.int64(470000),
            "epoch": 6,
            "callbacks": {fake_lightning: {"best_model_score": torch.tensor(0.1), "monitor": None}},
        },
        path,
    )
    del sys.modules[LIGHTNING_CALLBACK.rsplit(".", 1)[0]]  # loading must not need Lightning
    obj = load_pickle_checkpoint(path)
    assert int(obj["global_step"]) == 470000
    assert list(obj["callbacks"]) == [LightningPlaceholder]
    assert torch.equal(extract_state_dict(obj)["w"], torch.arange(3.0))


def test_top_level_state_dict_and_non_tensors(tmp_path: Path) -> None:
    path = tmp_path / "flat.ckpt"
    torch.save({"a": torch.ones(1), "note": "x"}, path)
    assert set(load_ckpt_state_dict(path)) == {"a"}
    with pytest.raises(CheckpointLoadError, match="holds no tensors"):
        extract_state_dict({"state_dict": {}, "epoch": 1}, source="empty.ckpt")
    with pytest.raises(CheckpointLoadError, match="not a state dict"):
        extract_state_dict([1, 2], source="list.ckpt")


def test_truncated_ckpt_is_a_load_error(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointLoadError, match=r"cut\.ckpt: not a readable checkpoint") as info:
        load_ckpt_state_dict(cut)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_tiny_fixture_ckpt_loads(tiny_models: dict[str, Path]) -> None:
    state = load_ckpt_state_dict(tiny_models["sd1.ckpt"])
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert all(isinstance(v, torch.Tensor) for v in state.values())
