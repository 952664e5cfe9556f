"""A short interpreter switch interval while Python-heavy work runs beside latency-sensitive work.

A thread that calls into C and releases the interpreter (a file read, a CUDA copy or launch) must get it back
afterwards; while another thread is busy running Python, it waits up to the switch interval for it (5 ms by default).
A job or a load makes thousands of such calls, so beside a busy thread it can take many times as long:
``python -m tests.gpu.switch_probe`` on the CPU (2 cores, tests/gpu/results/switch_probe-cpu2.json): 600 hand-backs
take 0.06–0.12 s alone, 3.3–6.2 s beside a busy thread at 5 ms, 0.46–0.61 s at 0.2 ms. On the H200 the app's
start-up load took 4.0–4.9 s while Gradio was imported and the UI built beside it, against 0.3–1.4 s alone
(tests/gpu/results/app_start-h200.json), and 2.3–2.4 s with the interval short
(app_start_restarts_no_bytecode_cache-h200.json); the job after the first one of a ``--compile`` restart took 8.5 s
beside the background compile instead of 0.18 s.

``short_switch_interval()`` shortens the process-wide interval while its block runs. Blocks may overlap in several
threads: the first remembers the interval it found (kept on its thread object, so there is no module state; later
blocks take the value over), and the last to end restores it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

SHORT_SWITCH_INTERVAL_S = 0.0002
_ATTR = "_sd_original_switch_interval"  # set on a thread while it holds the interval short


def _holders(besides: threading.Thread) -> list[float]:
    """The original intervals remembered by the other threads holding the interval short."""
    found = (getattr(t, _ATTR, None) for t in threading.enumerate() if t is not besides)
    return [value for value in found if value is not None]


@contextlib.contextmanager
def short_switch_interval(seconds: float = SHORT_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Hold the interpreter's switch interval at ``seconds`` (or less, if it was already shorter) for the block."""
    me = threading.current_thread()
    if getattr(me, _ATTR, None) is not None:  # nested in the same thread: the outer block holds it
        yield
        return
    original = max([*_holders(me), sys.getswitchinterval()])  # theirs if they shortened it already
    setattr(me, _ATTR, original)
    sys.setswitchinterval(min(original, seconds))
    try:
        yield
    finally:
        delattr(me, _ATTR)  # before looking at the others: of two ending together, one sees the other done
        if not _holders(me):
            sys.setswitchinterval(original)
