"""``--compile``: the UNet compiled with torch.compile (inductor) in the background, then replayed in CUDA graphs.

A new input signature (image size, batch, prompt length) queues a compile; the job goes on with the eager UNet under
CUDA graphs, and when it ends the compile runs in a background thread (beside a job it would slow the job down by
competing for the interpreter). Once it has finished, the next UNet call captures a graph of the compiled kernels and
replays that. A compile that fails is logged and that signature stays eager: compiling never
breaks a job. Inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, set by the app to ``<data dir>/cache/inductor``)
make a restart compile from cache instead of from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from modules.engine.streams import COMPILE, side_stream
from modules.engine.switch_interval import short_switch_interval

logger = logging.getLogger(__name__)

PENDING, READY, FAILED = "pending", "ready", "failed"
Runner = Callable[[Callable[..., Any], dict[str, torch.Tensor]], torch.Tensor]


class _CompileThread(threading.Thread):
    """A background compile: while it runs, the interpreter's switch interval is short (engine/switch_interval.py).

    A compile is pure Python for seconds (dynamo tracing, inductor loading its cache); a job beside it would wait for
    the interpreter at each call that releases it (on the H200 the job after the first one of a ``--compile`` restart
    took 8.5 s instead of 0.18 s while the compile ran).
    """

    def run(self) -> None:
        with short_switch_interval():
            super().run()


class BackgroundCompiler:
    """Compiles one forward function per input signature in a background thread.

    Args:
        forward: The module's eager forward (bound method).
        runner: ``runner(fn, inputs)`` calls ``fn`` exactly as the graph capture will (same arguments), so the
            compiled code's guards match at capture time.
        compile_fn: ``torch.compile`` (replaceable in tests). Called in the first background compile, not here:
            ``torch.compile`` imports dynamo and inductor, seconds of work that would otherwise delay the model load
            (measured on the H200: the load with ``--compile`` finished 6.8 s later than without).
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        runner: Runner,
        compile_fn: Callable[..., Callable[..., Any]] | None = None,
    ) -> None:
        self._forward = forward
        self._compile_fn = compile_fn
        self._compiled: Callable[..., Any] | None = None
        self._runner = runner
        self._state: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._queued: dict[tuple, dict[str, torch.Tensor]] = {}
        self.seconds: dict[tuple, float] = {}

    @property
    def compiled(self) -> Callable[..., Any]:
        """The compiled forward (made by the first background compile; a signature is ``ready`` only after it)."""
        with self._lock:
            if self._compiled is None:
                compile_fn = self._compile_fn or torch.compile
                self._compiled = compile_fn(self._forward, fullgraph=True, dynamic=False)
            return self._compiled

    def state(self, key: tuple) -> str | None:
        """``pending``, ``ready``, ``failed``, or None when this signature was never requested."""
        with self._lock:
            return self._state.get(key)

    def request(self, key: tuple, inputs: dict[str, torch.Tensor]) -> None:
        """Queue a compile for ``key`` with a private copy of ``inputs`` unless already queued or done.

        The compile starts at ``start_queued`` (the engine calls it when a job ends): a compile running beside a
        job would compete with it for the Python interpreter and slow it down.
        """
        with self._lock:
            if key in self._state:
                return
            self._state[key] = PENDING
            self._queued[key] = {name: t.detach().clone() for name, t in inputs.items()}

    def start_queued(self) -> None:
        """Start a background compile for every queued signature."""
        with self._lock:
            queued, self._queued = self._queued, {}
        for key, inputs in queued.items():
            shapes = {name: tuple(t.shape) for name, t in inputs.items()}
            logger.info("Compiling the UNet for %s in the background (eager until it is ready)", shapes)
            thread = _CompileThread(target=self._work, args=(key, inputs), name="unet-compile", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self, key: tuple, inputs: dict[str, torch.Tensor]) -> None:
        started = time.perf_counter()
        on_cuda = inputs["sample"].device.type == "cuda"
        stream = side_stream(inputs["sample"].device, COMPILE) if on_cuda else None
        try:
            compiled = self.compiled
            with torch.inference_mode(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                for _ in range(2):  # the second call runs the cached code: the guards hold for these inputs
                    self._runner(compiled, inputs)
            if stream is not None:
                stream.synchronize()
        except Exception as exc:  # any compile failure must leave the job running eagerly
            logger.warning("Compiling the UNet failed (%s: %s); this size stays eager", type(exc).__name__, exc)
            state = FAILED
        else:
            state = READY
            self.seconds[key] = time.perf_counter() - started
            logger.info("UNet compiled in %.1f s; the next step switches to it", self.seconds[key])
        with self._lock:
            self._state[key] = state

    def join_running(self) -> None:
        """Wait for the compiles already running, starting none (a tiling job must not change what they trace)."""
        for thread in list(self._threads):
            thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Start the queued compiles and wait for them; return whether all finished within ``timeout`` seconds."""
        self.start_queued()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
