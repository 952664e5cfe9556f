"""Tests for modules.engine.checkpoints: scanning folders, naming, cached hashes and A1111 alias lookup."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from modules.engine import checkpoints as ckpts
from modules.engine import hashes
from modules.engine.checkpoints import (
    HashCache,
    find_checkpoint,
    hash_checkpoint,
    natural_sort_key,
    scan_checkpoints,
    select_checkpoint,
)
from modules.engine.hashes import absolute_path
from modules.engine.types import CheckpointInfo
from modules.errors import CheckpointNotFoundError, WebuiError


def _write(path: Path, data: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models" / "Stable-diffusion"
    for name in ("a10.safetensors", "a2.safetensors", "B1.ckpt", "sub/x.safetensors", "sub/deeper/z1.ckpt"):
        _write(root / name, name.encode())
    _write(root / "sub" / "x.yaml", b"model: {}")
    _write(root / "foo.vae.safetensors")
    _write(root / "foo.VAE.ckpt")
    _write(root / "notes.txt")
    _write(root / "Put Stable Diffusion checkpoints here.txt", b"")
    (root / "folder.safetensors").mkdir()  # a directory named like a checkpoint is not a file
    return root


def _names(infos: list[CheckpointInfo]) -> list[str]:
    return [info.name for info in infos]


# ---------------------------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------------------------


def test_natural_sort_key_orders_numbers_by_value_and_ignores_case():
    names = ["a10.safetensors", "A2.ckpt", "a1b.ckpt", "b.ckpt", "a2.safetensors"]
    assert sorted(names, key=natural_sort_key) == [
        "a1b.ckpt",
        "A2.ckpt",
        "a2.safetensors",
        "a10.safetensors",
        "b.ckpt",
    ]


def test_scan_lists_nested_checkpoints_in_natural_order(models_dir):
    found = scan_checkpoints([models_dir])
    assert _names(found) == [
        "a2.safetensors",
        "a10.safetensors",
        "B1.ckpt",
        "sub/deeper/z1.ckpt",
        "sub/x.safetensors",
    ]
    for info in found:
        assert info.filename.is_absolute()
        assert info.filename == absolute_path(models_dir / info.name)
        assert info.sha256 is None
        assert info.title == info.name


def test_scan_names_and_aliases_of_nested_file(models_dir):
    info = next(i for i in scan_checkpoints([models_dir]) if i.name == "sub/deeper/z1.ckpt")
    assert info.model_name == "sub_deeper_z1"
    assert info.name_for_extra == "z1"


def test_scan_detects_yaml_beside_checkpoint(models_dir):
    configs = {info.name: info.config for info in scan_checkpoints([models_dir])}
    assert configs["sub/x.safetensors"] == absolute_path(models_dir / "sub" / "x.yaml")
    assert configs["a2.safetensors"] is None


def test_scan_yaml_of_dotted_name_replaces_only_last_extension(tmp_path):
    root = tmp_path / "sd"
    _write(root / "model.v2.safetensors")
    _write(root / "model.v2.yaml")
    (info,) = scan_checkpoints([root])
    assert info.config is not None
    assert info.config.name == "model.v2.yaml"


def test_scan_follows_symlinks_and_survives_loops(tmp_path, models_dir):
    external = tmp_path / "elsewhere"
    _write(external / "y.safetensors")
    (models_dir / "linked").symlink_to(external, target_is_directory=True)
    (models_dir / "sub" / "loop").symlink_to(models_dir, target_is_directory=True)
    (models_dir / "alias.safetensors").symlink_to(models_dir / "a2.safetensors")
    (models_dir / "broken.safetensors").symlink_to(tmp_path / "missing.safetensors")

    names = _names(scan_checkpoints([models_dir]))
    assert "linked/y.safetensors" in names
    assert "alias.safetensors" in names  # a symlinked file is listed under its own name
    assert "broken.safetensors" not in names
    assert not any("loop/" in name for name in names)
    assert len(names) == len(set(names))


def test_scan_hidden_files_listed_unless_disabled(models_dir):
    _write(models_dir / ".hidden" / "h.safetensors")
    _write(models_dir / ".dot.safetensors")
    assert {".hidden/h.safetensors", ".dot.safetensors"} <= set(_names(scan_checkpoints([models_dir])))
    shown = _names(scan_checkpoints([models_dir], list_hidden=False))
    assert ".hidden/h.safetensors" not in shown
    assert ".dot.safetensors" not in shown


def test_scan_several_dirs_in_order_and_dedupes(tmp_path, models_dir):
    ckpt_dir = tmp_path / "ckpt-dir"
    _write(ckpt_dir / "mine.safetensors")
    found = scan_checkpoints([ckpt_dir, models_dir, models_dir, tmp_path / "does-not-exist"])
    assert _names(found)[0] == "mine.safetensors"
    assert len(found) == 6
    assert len({info.filename for info in found}) == 6


def test_scan_extra_files_first_named_by_basename_and_deduped(tmp_path, models_dir, caplog):
    outside = _write(tmp_path / "downloads" / "special.ckpt")
    inside = models_dir / "sub" / "x.safetensors"
    with caplog.at_level(logging.WARNING, logger="modules.engine.checkpoints"):
        found = scan_checkpoints([models_dir], extra_files=[outside, inside, tmp_path / "model.ckpt"])
    assert _names(found)[:2] == ["special.ckpt", "sub/x.safetensors"]
    assert _names(found).count("sub/x.safetensors") == 1
    assert "model.ckpt" in caplog.text  # the missing --ckpt file is reported, not listed
    assert len(found) == 6


def test_scan_takes_hashes_from_cache_without_hashing(tmp_path, models_dir, monkeypatch):
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    digest = cache.sha256(models_dir / "a2.safetensors")
    touched = models_dir / "B1.ckpt"
    cache.sha256(touched)
    touched.write_bytes(b"changed content")

    def refuse(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("scan must not hash files")

    monkeypatch.setattr(hashes, "sha256_file", refuse)
    by_name = {info.name: info for info in scan_checkpoints([models_dir], hash_cache=cache)}
    assert by_name["a2.safetensors"].sha256 == digest
    assert by_name["a2.safetensors"].title == f"a2.safetensors [{digest[:10]}]"
    assert by_name["B1.ckpt"].sha256 is None  # stale entry ignored
    assert by_name["a10.safetensors"].sha256 is None


def test_hash_checkpoint_fills_sha256(tmp_path, models_dir):
    cache = HashCache(tmp_path / "hashes.json")
    info = scan_checkpoints([models_dir])[0]
    hashed = hash_checkpoint(info, cache)
    expected = hashlib.sha256(info.filename.read_bytes()).hexdigest()
    assert hashed.sha256 == expected
    assert hashed.shorthash == expected[:10]
    assert hashed.title == f"{info.name} [{expected[:10]}]"
    assert cache.get(info.filename) == expected
    assert hash_checkpoint(hashed, cache) is hashed


# ---------------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def hashed(tmp_path, models_dir) -> list[CheckpointInfo]:
    cache = HashCache(tmp_path / "hashes.json")
    return [hash_checkpoint(info, cache) for info in scan_checkpoints([models_dir])]


def _get(infos: list[CheckpointInfo], name: str) -> CheckpointInfo:
    return next(info for info in infos if info.name == name)


@pytest.mark.parametrize(
    "query",
    [
        "{title}",
        "sub/x.safetensors",
        "sub_x",
        "x",
        "x.safetensors",
        "{short}",
        "{full}",
        "{FULL}",
        "[{short}]",
        "[{full}]",
        "sub/x.safetensors [{short}]",
        "x [{short}]",
        "sub_x [{full}]",
        "sub\\x.safetensors",
        "  sub/x.safetensors  ",
        "SUB/X.safetensors",
    ],
)
def test_find_by_every_alias(hashed, query):
    target = _get(hashed, "sub/x.safetensors")
    assert target.sha256 is not None
    text = query.format(title=target.title, short=target.shorthash, full=target.sha256, FULL=target.sha256.upper())
    assert find_checkpoint(hashed, text) == target


def test_find_by_name_with_stale_or_unknown_hash(hashed, models_dir):
    target = _get(hashed, "a10.safetensors")
    assert find_checkpoint(hashed, "a10.safetensors [0123456789]") == target
    unhashed = scan_checkpoints([models_dir])
    assert find_checkpoint(unhashed, f"a10.safetensors [{target.shorthash}]").name == "a10.safetensors"


def test_find_renamed_file_by_hash_in_title(hashed):
    target = _get(hashed, "B1.ckpt")
    assert find_checkpoint(hashed, f"old-name.ckpt [{target.shorthash}]") == target


def test_find_prefers_exact_name_over_other_aliases(tmp_path):
    root = tmp_path / "sd"
    _write(root / "foo.safetensors", b"top")
    _write(root / "sub" / "foo.safetensors", b"nested")
    infos = scan_checkpoints([root])
    assert find_checkpoint(infos, "foo").name == "foo.safetensors"  # model_name beats nested name_for_extra
    assert find_checkpoint(infos, "sub_foo").name == "sub/foo.safetensors"


def test_find_by_legacy_hash(tmp_path):
    root = tmp_path / "sd"
    big = os.urandom(0x100000 + 0x10000)
    _write(root / "small.ckpt", b"small")
    _write(root / "big.safetensors", big)
    legacy = hashlib.sha256(big[0x100000:]).hexdigest()[:8]
    infos = scan_checkpoints([root])
    assert find_checkpoint(infos, legacy).name == "big.safetensors"
    assert find_checkpoint(infos, f"renamed [{legacy}]").name == "big.safetensors"


def test_find_closest_match_shortest_title_first(tmp_path):
    root = tmp_path / "sd"
    for name in ("realistic-vision-v51-inpainting.safetensors", "realistic-vision-v51.safetensors", "other.ckpt"):
        _write(root / name)
    infos = scan_checkpoints([root])
    assert find_checkpoint(infos, "vision").name == "realistic-vision-v51.safetensors"
    assert find_checkpoint(infos, "inpainting").name == "realistic-vision-v51-inpainting.safetensors"
    assert find_checkpoint(infos, "Vision-V51 [abcdef0123]").name == "realistic-vision-v51.safetensors"


def test_find_not_found_lists_titles(hashed):
    with pytest.raises(CheckpointNotFoundError) as caught:
        find_checkpoint(hashed, "nonexistent-model")
    message = str(caught.value)
    assert "'nonexistent-model'" in message
    assert _get(hashed, "a2.safetensors").title in message
    assert isinstance(caught.value, WebuiError)
    assert caught.value.status_code == 404


def test_find_not_found_caps_the_list(tmp_path):
    root = tmp_path / "sd"
    for index in range(15):
        _write(root / f"m{index}.safetensors")
    with pytest.raises(CheckpointNotFoundError) as caught:
        find_checkpoint(scan_checkpoints([root]), "zzz")
    message = str(caught.value)
    assert "m9.safetensors" in message
    assert "m10.safetensors" not in message
    assert "and 5 more" in message


def test_find_with_nothing_installed_says_where_to_put_checkpoints(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as caught:
        find_checkpoint([], "v1-5-pruned-emaonly.safetensors", search_dirs=[tmp_path / "sd"])
    message = str(caught.value)
    assert "models/Stable-diffusion" in message
    assert "v1-5-pruned-emaonly.safetensors" in message
    assert str(tmp_path / "sd") in message


def test_find_empty_query_is_not_found(hashed):
    with pytest.raises(CheckpointNotFoundError):
        find_checkpoint(hashed, "  ")


def test_select_checkpoint_falls_back_to_first(hashed, caplog):
    assert select_checkpoint(hashed, "") == hashed[0]
    assert select_checkpoint(hashed, "x") == _get(hashed, "sub/x.safetensors")
    with caplog.at_level(logging.WARNING, logger="modules.engine.checkpoints"):
        assert select_checkpoint(hashed, "gone.safetensors") == hashed[0]
    assert "gone.safetensors" in caplog.text
    with pytest.raises(CheckpointNotFoundError, match="models/Stable-diffusion"):
        select_checkpoint([], "")


def test_module_constants():
    assert ckpts.is_checkpoint_filename("model.SAFETENSORS")
    assert not ckpts.is_checkpoint_filename("model.vae.safetensors")
    assert ckpts.DEFAULT_CHECKPOINT_DIR == "models/Stable-diffusion"
