"""The composition root for real: the server started through webui.sh / webui.py in its own process, over HTTP(S)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("VIRTUAL_ENV", "COMMANDLINE_ARGS", "TORCH_COMMAND", "REQS_FILE", "venv_dir", "python_cmd", "HF_ENDPOINT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **extra)
    return env


class Server:
    """A webui process on a free port; stopped (SIGTERM) when the test ends."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str], scheme: str = "http") -> None:
        self.port, self.scheme = port, scheme
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.proc.stdout.read()}")
            try:
                if requests.get(self.url + path, timeout=2, verify=False).status_code < 500:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError("server did not come up")

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        return out


@pytest.fixture
def server_factory():
    started: list[Server] = []

    def start(args: list[str], *, launcher: bool = False, scheme: str = "http") -> Server:
        port = free_port()
        if launcher:
            cmd = ["bash", str(REPO / "webui.sh"), "-f", "--skip-prepare-environment", "--port", str(port), *args]
            env = clean_env(venv_dir="-", python_cmd=sys.executable)
        else:
            cmd = [sys.executable, str(REPO / "webui.py"), "--port", str(port), *args]
            env = clean_env()
        server = Server(cmd, port, env, scheme)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


@pytest.mark.slow
def test_webui_sh_starts_the_real_server_with_a1111_flags(server_factory, tmp_path, tiny_models_dir):
    server = server_factory(
        [
            "--data-dir",
            str(tmp_path),
            "--ckpt-dir",
            str(tiny_models_dir),
            "--api",
            "--no-download-sd-model",
            "--xformers",
            "--no-half-vae",
            "--skip-torch-cuda-test",
        ],
        launcher=True,
    )
    server.wait_ready("/sdapi/v1/sd-models")
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text
    assert requests.get(server.url + "/config", timeout=10).json()["title"] == "Stable Diffusion"
    models = requests.get(server.url + "/sdapi/v1/sd-models", timeout=10).json()
    assert {"sd1.safetensors", "sdxl.safetensors"} <= {m["title"].split(" [")[0] for m in models}
    payload = {
        "prompt": "a cat",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 11,
        "save_images": True,
        "override_settings": {"sd_model_checkpoint": "sd1"},
    }
    r = requests.post(server.url + "/sdapi/v1/txt2img", json=payload, timeout=300)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert image.size == (64, 64) and "Seed: 11" in image.info["parameters"]
    assert list((tmp_path / "outputs" / "txt2img-images").rglob("00000-11.png"))
    bad = requests.post(server.url + "/sdapi/v1/txt2img", json={"steps": 0}, timeout=30)
    assert bad.status_code == 422 and "steps" in bad.json()["detail"]
    log = server.stop()
    assert "Launching Web UI with arguments" in log
    assert "no effect here: --no-half-vae" not in log and "--xformers" in log  # ignored flag reported once


@pytest.mark.slow
def test_nowebui_serves_the_api_alone(server_factory, tmp_path):
    server = server_factory(["--data-dir", str(tmp_path), "--nowebui", "--no-download-sd-model"])
    server.wait_ready("/sdapi/v1/samplers")
    assert requests.get(server.url + "/", timeout=10).status_code == 404
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    names = [s["name"] for s in requests.get(server.url + "/sdapi/v1/samplers", timeout=10).json()]
    assert "DPM++ 2M" in names
    # no checkpoint installed: a clear 4xx naming the folder, and the server keeps answering
    r = requests.post(server.url + "/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64}, timeout=30)
    assert r.status_code == 404 and "Stable-diffusion" in r.json()["detail"]
    assert requests.get(server.url + "/sdapi/v1/options", timeout=10).status_code == 200


@pytest.mark.slow
def test_tls_and_subpath(server_factory, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = server_factory(
        [
            "--data-dir",
            str(tmp_path),
            "--api",
            "--no-download-sd-model",
            "--tls-keyfile",
            str(key),
            "--tls-certfile",
            str(cert),
            "--subpath",
            "sd",
        ],
        scheme="https",
    )
    server.wait_ready("/sdapi/v1/samplers")
    r = requests.get(server.url + "/sdapi/v1/cmd-flags", timeout=10, verify=False)
    assert r.status_code == 200 and r.json()["subpath"] == "sd"
    config = requests.get(server.url + "/config", timeout=10, verify=False)
    assert config.status_code == 200
    assert json.loads(config.text)["root"].rstrip("/").endswith("/sd")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/sdapi/v1/samplers", timeout=10)  # the self-signed certificate is really used
    # That client's connection is still open (the exception holds it): SIGTERM must not wait out its timeouts.
    os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the server was still running 15 s after SIGTERM")


def test_start_up_holds_the_switch_interval_short_while_the_ui_is_built(tmp_path, monkeypatch):
    """The start-up load runs beside the UI build; the interval is short for that overlap, then restored."""
    import webui
    from modules.engine.switch_interval import SHORT_SWITCH_INTERVAL_S

    seen = []

    def create_app(ctx):
        seen.append(sys.getswitchinterval())
        raise RuntimeError("stop before serving")

    monkeypatch.setattr(webui, "create_app", create_app)
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError, match="stop before serving"):
        webui.main(["--data-dir", str(tmp_path), "--ckpt-dir", str(tmp_path), "--no-download-sd-model"])
    assert seen == [pytest.approx(SHORT_SWITCH_INTERVAL_S, abs=2e-6)]
    assert sys.getswitchinterval() == before
