"""A real API server (uvicorn on a free loopback port, --nowebui) over the session's tiny checkpoints."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

DEFAULT_MODEL = "sd1.safetensors"


@dataclass
class LiveServer:
    """A running server: its base URL (``http://127.0.0.1:PORT``), data dir and app context."""

    url: str
    data_dir: Path
    ctx: object

    @property
    def api(self) -> str:
        return f"{self.url}/sdapi/v1"

    def post(self, path: str, payload: object = None, **kw) -> requests.Response:
        return requests.post(f"{self.api}/{path}", json=payload, timeout=120, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(f"{self.api}/{path}", timeout=60, **kw)

    def txt2img(self, **fields) -> dict:
        payload = {"prompt": "a tiny test", "width": 64, "height": 64, "steps": 3, **fields}
        response = self.post("txt2img", payload)
        assert response.status_code == 200, response.text
        return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_image(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def info_of(body: dict) -> dict:
    assert isinstance(body["info"], str)
    return json.loads(body["info"])


def start_server(data_dir: Path, models_dir: Path, extra_flags: list[str], ui: bool = False) -> Iterator[LiveServer]:
    """Start webui's own app (create_context + create_app) under uvicorn in a thread; stop it afterwards.

    ``ui``: with the web page too (and the ``/internal`` routes beside it); else ``--nowebui``.
    """
    import uvicorn

    import webui
    from modules.flags import parse_flags

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.json").write_text(json.dumps({"sd_model_checkpoint": DEFAULT_MODEL}), encoding="utf-8")
    port = free_port()
    argv = [
        "--data-dir",
        str(data_dir),
        "--api",
        *([] if ui else ["--nowebui"]),
        "--ckpt-dir",
        str(models_dir),
        "--no-download-sd-model",
        "--port",
        str(port),
        *extra_flags,
    ]
    ctx = webui.create_context(parse_flags(argv, environ={}))
    app = webui.create_app(ctx)
    ctx.start()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", data_dir=data_dir, ctx=ctx)
    finally:
        server.should_exit = True
        thread.join(15)
        ctx.close()


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server without auth; tests that change options put them back."""
    yield from start_server(tmp_path_factory.mktemp("webui-data"), tiny_models_dir, [])


@pytest.fixture(scope="module")
def auth_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with two API logins; the second password contains ':'."""
    flags = ["--api-auth", "alice:secret, bob:pa:ss:word", "--skip-load-model-at-start"]
    yield from start_server(tmp_path_factory.mktemp("webui-auth"), tiny_models_dir, flags)
