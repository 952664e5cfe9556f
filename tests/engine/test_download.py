"""Tests for modules.engine.download against a real HTTP server on 127.0.0.1 (never an external address)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modules.engine import download
from modules.engine.download import DEFAULT_MODEL, ModelDownload, default_model, download_file, wants_default_model
from modules.errors import DownloadError

PAYLOAD = os.urandom(3 * download.CHUNK_SIZE + 1234)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@dataclasses.dataclass
class ServerState:
    """What the test server serves and what it saw.

    Modes: ``range`` (honours Range), ``ignore-range`` (always 200 with the whole file), ``bad-range`` (206 from
    byte 0 whatever was asked), ``redirect`` (302 to /real/...), ``hang`` (never answers), or an HTTP status code.
    """

    payload: bytes = PAYLOAD
    mode: str = "range"
    drops: int = 0  # how many of the next responses stop halfway and close the connection
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    body_bytes_sent: int = 0
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        if state.mode == "hang":
            state.release.wait(10)
            return
        if state.mode.isdigit():
            self.send_error(int(state.mode))
            return
        if state.mode == "redirect" and not self.path.startswith("/real/"):
            self.send_response(302)
            self.send_header("Location", "/real" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_payload(state)

    def _send_payload(self, state: ServerState) -> None:
        size = len(state.payload)
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(asked[1]) if asked and state.mode in ("range", "redirect") else 0
        if start >= size > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        partial = bool(asked) and state.mode != "ignore-range"
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        body = state.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drops > 0:
            state.drops -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)
        state.body_bytes_sent += len(body)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[tuple[ServerState, str]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.state.release.set()
        httpd.shutdown()
        httpd.server_close()


def _spec(base_url: str, sha256: str | None = PAYLOAD_SHA256) -> ModelDownload:
    return ModelDownload(url=f"{base_url}/models/test.safetensors", filename="test.safetensors", sha256=sha256)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_model_constants():
    assert DEFAULT_MODEL.filename == "v1-5-pruned-emaonly.safetensors"
    assert DEFAULT_MODEL.url == (
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
        "v1-5-pruned-emaonly.safetensors"
    )
    assert DEFAULT_MODEL.sha256 == "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_MODEL.url = "x"  # type: ignore[misc]
    mirrored = default_model("http://mirror.local:8080/")
    assert mirrored.url == f"http://mirror.local:8080/{download.DEFAULT_MODEL_PATH}"
    assert (mirrored.filename, mirrored.sha256) == (DEFAULT_MODEL.filename, DEFAULT_MODEL.sha256)


def test_wants_default_model_follows_a1111_rule():
    assert wants_default_model(0, no_download_sd_model=False, ckpt_given=False)
    assert not wants_default_model(1, no_download_sd_model=False, ckpt_given=False)
    assert not wants_default_model(0, no_download_sd_model=True, ckpt_given=False)
    assert not wants_default_model(0, no_download_sd_model=False, ckpt_given=True)


def test_fresh_download_reports_progress_and_verifies(server, tmp_path):
    state, base = server
    progress: list[tuple[int, int | None]] = []
    dest = tmp_path / "models" / "Stable-diffusion"
    path = download_file(_spec(base), dest, on_progress=lambda done, total: progress.append((done, total)))
    assert path == dest / "test.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.iterdir()) == ["test.safetensors"]
    assert progress[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert len(progress) >= 4
    assert state.requests == [("/models/test.safetensors", None)]


def test_resumes_existing_part_with_range(server, tmp_path):
    state, base = server
    offset = len(PAYLOAD) // 3
    (tmp_path / "test.safetensors.part").write_bytes(PAYLOAD[:offset])
    progress: list[tuple[int, int | None]] = []
    path = download_file(_spec(base), tmp_path, on_progress=lambda d, t: progress.append((d, t)))
    assert path.read_bytes() == PAYLOAD
    assert state.requests == [("/models/test.safetensors", f"bytes={offset}-")]
    deadline = time.monotonic() + 10  # the server thread counts the bytes after the client has read them
    while state.body_bytes_sent != len(PAYLOAD) - offset and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.body_bytes_sent == len(PAYLOAD) - offset
    assert progress[0] == (offset, len(PAYLOAD))
    assert not (tmp_path / "test.safetensors.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    state, base = server
    state.mode = "ignore-range"
    (tmp_path / "test.safetensors.part").write_bytes(b"garbage that must be discarded")
    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert state.requests[0][1] == "bytes=30-"


def test_partial_response_at_wrong_offset_restarts_without_range(server, tmp_path):
    state, base = server
    state.mode = "bad-range"
    (tmp_path / "test.safetensors.part").write_bytes(PAYLOAD[:1000])
    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert [rng for _, rng in state.requests] == ["bytes=1000-", None]


def test_dropped_connection_is_resumed_automatically(server, tmp_path):
    state, base = server
    state.drops = 2
    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    quarter = half + (len(PAYLOAD) - half) // 2
    assert [rng for _, rng in state.requests] == [None, f"bytes={half}-", f"bytes={quarter}-"]


def test_dropped_connection_without_retries_keeps_part_for_next_call(server, tmp_path):
    state, base = server
    state.drops = 1
    with pytest.raises(DownloadError) as caught:
        download_file(_spec(base), tmp_path, retries=0)
    message = str(caught.value)
    assert "connection closed early" in message
    assert "test.safetensors.part" in message
    part = tmp_path / "test.safetensors.part"
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    assert not (tmp_path / "test.safetensors").exists()

    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert state.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_complete_part_answered_416_is_finished(server, tmp_path):
    state, base = server
    (tmp_path / "test.safetensors.part").write_bytes(PAYLOAD)
    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert state.body_bytes_sent == 0


def test_redirect_keeps_range(server, tmp_path):
    state, base = server
    state.mode = "redirect"
    (tmp_path / "test.safetensors.part").write_bytes(PAYLOAD[:5000])
    path = download_file(_spec(base), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert state.requests == [
        ("/models/test.safetensors", "bytes=5000-"),
        ("/real/models/test.safetensors", "bytes=5000-"),
    ]


@pytest.mark.parametrize(("status", "words"), [("404", "HTTP 404"), ("500", "HTTP 500"), ("403", "HTTP 403")])
def test_http_error_is_download_error_with_advice(server, tmp_path, status, words):
    state, base = server
    state.mode = status
    spec = _spec(base)
    with pytest.raises(DownloadError) as caught:
        download_file(spec, tmp_path, retries=3)
    message = str(caught.value)
    assert words in message
    assert f"Could not download test.safetensors from {spec.url}" in message
    assert f"Put a .safetensors or .ckpt checkpoint into {tmp_path} yourself" in message
    assert "network/proxy" in message
    assert len(state.requests) == 1  # an HTTP error is not retried
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_deletes_part(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError) as caught:
        download_file(_spec(base, sha256="0" * 64), tmp_path)
    message = str(caught.value)
    assert "sha256" in message
    assert PAYLOAD_SHA256 in message
    assert "deleted" in message
    assert list(tmp_path.iterdir()) == []


def test_no_checksum_skips_verification(server, tmp_path):
    _, base = server
    assert download_file(_spec(base, sha256=None), tmp_path).read_bytes() == PAYLOAD


def test_existing_matching_file_is_returned_without_request(server, tmp_path):
    state, base = server
    final = tmp_path / "test.safetensors"
    final.write_bytes(PAYLOAD)
    assert download_file(_spec(base), tmp_path) == final
    assert state.requests == []


def test_existing_different_file_is_never_overwritten(server, tmp_path):
    state, base = server
    final = tmp_path / "test.safetensors"
    final.write_bytes(b"someone else's model")
    with pytest.raises(DownloadError, match="already exists"):
        download_file(_spec(base), tmp_path)
    assert final.read_bytes() == b"someone else's model"
    assert state.requests == []


def test_should_stop_keeps_part(server, tmp_path):
    _, base = server
    calls: list[int] = []
    with pytest.raises(DownloadError, match="stopped"):
        download_file(
            _spec(base), tmp_path, on_progress=lambda done, _total: calls.append(done), should_stop=lambda: bool(calls)
        )
    part = tmp_path / "test.safetensors.part"
    assert part.read_bytes() == PAYLOAD[: calls[0]]
    assert not (tmp_path / "test.safetensors").exists()


def test_refused_connection(tmp_path):
    spec = ModelDownload(url=f"http://127.0.0.1:{_closed_port()}/x.safetensors", filename="x.safetensors")
    with pytest.raises(DownloadError) as caught:
        download_file(spec, tmp_path / "sd", timeout=5)
    message = str(caught.value)
    assert message.startswith(f"Could not download x.safetensors from {spec.url}: ")
    assert "refused" in message.lower()
    assert str(tmp_path / "sd") in message


def test_timeout(server, tmp_path):
    state, base = server
    state.mode = "hang"
    with pytest.raises(DownloadError, match=r"no answer within 0.3 s"):
        download_file(_spec(base), tmp_path, timeout=0.3)


def test_invalid_url(tmp_path):
    with pytest.raises(DownloadError, match="invalid URL"):
        download_file(ModelDownload(url="not a url", filename="x.ckpt"), tmp_path)


def test_http_proxy_from_environment_is_used(server, tmp_path, monkeypatch):
    state, base = server
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", base)
    spec = ModelDownload(url="http://model-host.invalid/v1.safetensors", filename="v1.safetensors", sha256=None)
    assert download_file(spec, tmp_path).read_bytes() == PAYLOAD
    assert state.requests[0][0] == "http://model-host.invalid/v1.safetensors"


def test_unwritable_destination(tmp_path, server):
    _, base = server
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DownloadError, match="Cannot prepare"):
        download_file(_spec(base), blocker / "sd")
