"""W6 through the whole app: seconds from starting ``webui.py --api`` to its page and to its first images over HTTP.

Run on the GPU machine: ``python -m tests.gpu.app_start CHECKPOINT [--runs 3] [--size 512] [--restarts]
[--out FILE] [-- EXTRA WEBUI FLAGS]``. Each run starts a new server process with an empty data directory (with
``--restarts`` one for all runs: the runs after the first are restarts, the checkpoint's hash and inductor's cache
found there) and ``--ckpt CHECKPOINT`` (so Gradio's import and the UI build overlap the start-up load and warm-up, as
for a user), waits for the page, then posts two 20-step txt2img jobs to ``/sdapi/v1/txt2img`` and checks that each
returns an image of the asked size.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before its page came up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no page at {url} after {timeout:.0f} s")


def _txt2img(url: str, size: int) -> float:
    """Post one job; return its seconds after checking the image it returns."""
    body = {"prompt": "a photo of a cat", "steps": 20, "width": size, "height": size, "sampler_name": "Euler"}
    request = urllib.request.Request(
        f"{url}/sdapi/v1/txt2img", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    seconds = time.perf_counter() - started
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    if image.size != (size, size):
        raise RuntimeError(f"the job returned a {image.size} image, not {size}×{size}")
    return seconds


class _Timeline:
    """Reads the server's output as it comes, each line with its second since the process started."""

    def __init__(self, proc: subprocess.Popen, t0: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc, t0), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen, t0: float) -> None:
        for line in proc.stdout:
            self.lines.append((round(time.perf_counter() - t0, 3), line.rstrip()))

    def text(self) -> str:
        self._thread.join(5)
        return "\n".join(f"{t:8.3f} {line}" for t, line in self.lines)


def one_run(
    checkpoint: Path, size: int, extra: list[str], timeout: float = 300, data_dir: Path | None = None
) -> dict[str, Any]:
    """Start the app, time its page and two jobs, stop it; phases in seconds from the process start, and the
    server's log lines with the second each arrived (``log``: where the start-up time goes)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as fresh:
        directory = str(data_dir) if data_dir is not None else fresh
        cmd = [sys.executable, "webui.py", "--api", "--port", str(port), "--data-dir", directory,
               "--ckpt", str(checkpoint), "--no-download-sd-model", *extra]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        timeline = _Timeline(proc, t0)
        try:
            _wait_for_page(url + "/", proc, timeout)
            page_s = time.perf_counter() - t0
            first_job_s = _txt2img(url, size)
            first_image_s = time.perf_counter() - t0
            second_job_s = _txt2img(url, size)
        except Exception:
            sys.stderr.write(timeline.text()[-4000:])
            raise
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "page_s": page_s,
        "first_job_s": first_job_s,
        "first_image_s": first_image_s,
        "second_job_s": second_job_s,
        "log": timeline.text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--restarts", action="store_true", help="one data directory for all runs: the runs after the first are restarts"
    )
    parser.add_argument("extra", nargs="*", help="more webui.py flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as shared:
        data_dir = Path(shared) if args.restarts else None
        runs = [one_run(args.checkpoint.resolve(), args.size, args.extra, data_dir=data_dir) for _ in range(args.runs)]
    for run in runs:
        print(run["log"])
        print(json.dumps({k: v for k, v in run.items() if k != "log"}))
    if args.out:
        summary = {"checkpoint": args.checkpoint.name, "flags": args.extra, "runs": runs}
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
