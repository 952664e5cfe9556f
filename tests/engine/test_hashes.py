"""Tests for modules.engine.hashes: SHA-256 of whole files, the legacy hash, and the on-disk hash cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from modules.engine import hashes
from modules.engine.hashes import HashCache, absolute_path, legacy_hash, sha256_file


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _key(path: Path) -> str:
    return str(absolute_path(path))


def _bump_mtime(path: Path, seconds: int = 10) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


def test_sha256_file_matches_hashlib_across_blocks(tmp_path):
    data = os.urandom(2 * hashes.BLOCK_SIZE + 12345)
    path = _write(tmp_path / "m.safetensors", data)
    seen: list[int] = []
    assert sha256_file(path, on_block=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)
    assert len(seen) == 3


def test_legacy_hash_reads_64k_at_1mib(tmp_path):
    data = os.urandom(0x100000 + 0x10000 + 500)
    path = _write(tmp_path / "m.ckpt", data)
    expected = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert legacy_hash(path) == expected


def test_legacy_hash_of_small_file_hashes_nothing(tmp_path):
    path = _write(tmp_path / "small.ckpt", b"tiny")
    assert legacy_hash(path) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"


def test_cache_computes_stores_and_reloads(tmp_path):
    model = _write(tmp_path / "models" / "a.safetensors", b"weights" * 1000)
    cache_file = tmp_path / "cache" / "hashes.json"
    cache = HashCache(cache_file)
    assert cache.get(model) is None

    digest = cache.sha256(model)
    assert digest == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert cache.get(model) == digest

    stored = json.loads(cache_file.read_text())
    entry = stored["files"][_key(model)]
    assert entry == {"sha256": digest, "size": 7000, "mtime_ns": model.stat().st_mtime_ns}
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"]  # no temporary file left behind

    assert HashCache(cache_file).get(model) == digest  # a fresh instance reads it from disk


def test_cache_entry_is_stale_after_touch(tmp_path):
    model = _write(tmp_path / "a.safetensors", b"one")
    cache = HashCache(tmp_path / "hashes.json")
    cache.sha256(model)
    _bump_mtime(model)
    assert cache.get(model) is None
    assert cache.sha256(model) == hashlib.sha256(b"one").hexdigest()
    assert cache.get(model) is not None


def test_cache_entry_is_stale_after_rewrite(tmp_path):
    model = _write(tmp_path / "a.safetensors", b"one")
    cache = HashCache(tmp_path / "hashes.json")
    first = cache.sha256(model)
    model.write_bytes(b"two")  # same size, new content
    _bump_mtime(model)
    assert cache.get(model) is None
    second = cache.sha256(model)
    assert second == hashlib.sha256(b"two").hexdigest() != first


def test_cache_entry_is_stale_after_size_change_with_same_mtime(tmp_path):
    model = _write(tmp_path / "a.safetensors", b"one")
    cache = HashCache(tmp_path / "hashes.json")
    cache.sha256(model)
    stat = model.stat()
    model.write_bytes(b"longer")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.get(model) is None


def test_corrupt_cache_file_starts_empty_with_warning(tmp_path, caplog):
    model = _write(tmp_path / "a.safetensors", b"x")
    cache_file = _write(tmp_path / "hashes.json", b"{not json")
    cache = HashCache(cache_file)
    with caplog.at_level(logging.WARNING, logger="modules.engine.hashes"):
        assert cache.get(model) is None
    assert "unreadable" in caplog.text
    digest = cache.sha256(model)
    assert json.loads(cache_file.read_text())["files"][_key(model)]["sha256"] == digest


def test_cache_with_wrong_layout_or_bad_entries_ignores_them(tmp_path, caplog):
    good = _write(tmp_path / "good.safetensors", b"g")
    bad = _write(tmp_path / "bad.safetensors", b"b")
    stat = good.stat()
    entries = {
        _key(good): {"sha256": "a" * 64, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        _key(bad): {"sha256": "not-hex", "size": 1, "mtime_ns": bad.stat().st_mtime_ns},
    }
    cache_file = _write(tmp_path / "hashes.json", json.dumps({"version": 1, "files": entries}).encode())
    cache = HashCache(cache_file)
    assert cache.get(good) == "a" * 64
    assert cache.get(bad) is None

    list_file = _write(tmp_path / "list.json", b"[1, 2]")
    with caplog.at_level(logging.WARNING, logger="modules.engine.hashes"):
        assert HashCache(list_file).get(good) is None
    assert "unexpected layout" in caplog.text


def test_missing_file(tmp_path):
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.get(tmp_path / "nope.safetensors") is None
    with pytest.raises(FileNotFoundError):
        cache.sha256(tmp_path / "nope.safetensors")


def test_unwritable_cache_still_returns_digest(tmp_path, caplog):
    model = _write(tmp_path / "a.safetensors", b"data")
    blocker = _write(tmp_path / "blocker", b"")  # a file where the cache's folder should be
    cache = HashCache(blocker / "hashes.json")
    with caplog.at_level(logging.WARNING, logger="modules.engine.hashes"):
        digest = cache.sha256(model)
    assert digest == hashlib.sha256(b"data").hexdigest()
    assert "Cannot write hash cache" in caplog.text
    assert cache.get(model) == digest  # kept in memory


def test_cache_is_thread_safe(tmp_path):
    models = [_write(tmp_path / f"m{i}.safetensors", os.urandom(50_000 + i)) for i in range(12)]
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    errors: list[BaseException] = []

    def work(path: Path) -> None:
        try:
            cache.sha256(path)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = json.loads(cache_file.read_text())["files"]
    assert {_key(m) for m in models} == set(stored)
    for model in models:
        assert stored[_key(model)]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_file_digests_are_computed_once_per_file_state(tmp_path):
    import hashlib
    import os

    from modules.engine.hashes import FileDigests

    calls = []

    def digest(path):
        calls.append(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    digests = FileDigests(digest)
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"one")
    assert digests.get(path) == hashlib.sha256(b"one").hexdigest() == digests.get(path)
    assert len(calls) == 1
    path.write_bytes(b"two!")
    os.utime(path, ns=(1, 1))  # another size and time: another state
    assert digests.get(path) == hashlib.sha256(b"two!").hexdigest() and len(calls) == 2
    assert FileDigests().get(path) == hashlib.sha256(b"two!").hexdigest()  # the whole file's SHA-256 by default
