"""What a busy Python thread does to a job's thread that gives the interpreter up often, per switch interval.

``python -m tests.gpu.switch_probe`` (CPU is enough): a "job" of 20 steps × 30 small tensor ops, each followed by a
call that releases the interpreter (as CUDA calls do), alone and then beside a thread running pure Python (as a
background torch.compile does), at several switch intervals. engine/compiling.py shortens the interval while it
compiles because of this.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import torch


def job() -> float:
    """Seconds for 600 small ops, each followed by a release of the interpreter."""
    t = torch.zeros(4)
    started = time.perf_counter()
    for _ in range(20 * 30):
        t.add_(1)
        time.sleep(0)
    return time.perf_counter() - started


def beside_busy_thread(interval: float) -> float:
    """``job()``'s seconds while another thread runs Python, with the switch interval at ``interval``."""
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.1)
        return job()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(previous)


def main() -> None:
    results = {"alone_s": job()}
    for interval in (0.005, 0.001, 0.0005, 0.0002, 0.0001):
        results[f"beside_busy_thread_{interval * 1000:g}ms_s"] = beside_busy_thread(interval)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
