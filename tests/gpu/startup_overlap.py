"""The app's start-up overlap: a checkpoint load on a worker thread while Gradio is imported and the UI is built.

``python -m tests.gpu.startup_overlap CHECKPOINT [--device cuda] [--runs 2] [--out FILE]``: for each switch interval
(5 ms, Python's default, and engine/switch_interval.py's 0.2 ms) new processes load CHECKPOINT beside
``webui.create_app`` (the same split as webui.py's start-up), and the load alone. Prints the seconds of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

INTERVALS = (0.005, 0.0002)


def one(checkpoint: Path, device: str, interval: float | None) -> dict[str, float]:
    """In this process: the load beside the UI build at ``interval`` (None: the load alone)."""
    from modules.engine.loader import LoadOptions, ModelManager, select_device
    from modules.engine.types import CheckpointInfo

    if interval is not None:
        sys.setswitchinterval(interval)
    _, dtype, vae_dtype = select_device(
        use_cpu_all=device == "cpu", device_id=None, no_half=False, no_half_vae=False, precision="autocast"
    )
    if device == "cpu":
        dtype = vae_dtype = "float16"  # the file's own dtype: no conversion pass on the CPU
    options = LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype)
    seconds: dict[str, float] = {}

    def load() -> None:
        started = time.perf_counter()
        ModelManager().get(CheckpointInfo(checkpoint, checkpoint.name), options)
        seconds["load_s"] = time.perf_counter() - started

    if interval is None:
        load()
        return seconds
    import webui
    from modules.flags import parse_flags

    with tempfile.TemporaryDirectory() as data:
        flags = parse_flags(["--data-dir", data, "--ckpt-dir", data, "--no-download-sd-model", "--api"], environ={})
        thread = threading.Thread(target=load)
        thread.start()
        started = time.perf_counter()
        webui.create_app(webui.create_context(flags))
        seconds["ui_s"] = time.perf_counter() - started
        thread.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.checkpoint, args.device, None if args.one == "alone" else float(args.one))))
        return
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for case in ("alone", *map(str, INTERVALS)):
            cmd = [sys.executable, "-m", "tests.gpu.startup_overlap", str(args.checkpoint), "--device", args.device,
                   "--one", case]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.setdefault(case, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    text = json.dumps({"checkpoint": args.checkpoint.name, "device": args.device, "runs": results}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
