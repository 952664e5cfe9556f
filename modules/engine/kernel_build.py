"""Build our Triton kernels ahead of a model's first job, on several threads (CUDA only).

Why: Triton builds each variant of our kernels (engine/group_norm_triton.py, engine/geglu.py) the first time a process
launches it, and keeps it on disk. After an install, or a Triton/torch upgrade, the first job of SD1.5 at 512² waits
for 28 variants built one after another: 14–19 s on the H200 (tests/gpu/results/kernel_cache_probe*-h200.json).
Built from a pool of threads the same kernels take less than half as long (kernel_build_probe-h200.json: 22 variants
9.6–10.2 s → 4.1–4.6 s on 4–16 threads; part of Triton's work holds the GIL), and the app's start-up warm-up was
done 5.1 s after the load, its first image 0.16 s after that (kernel_cache_probe-h200.json, ``cold_warm_up``).

How: inside :func:`prebuild`, :func:`launch` does not run a kernel but hands its build (Triton's ``warmup`` with the
same arguments, so the same variant, then its launcher and module load) to the pool, and the caller fills its output
with zeros. A pass of the model's own job under ``prebuild`` (``pipeline.warm_up``: a dry run whose image is thrown
away) thus names exactly the variants a job needs; leaving the block waits for their builds, and the real job after
it finds them built. With the kernels on disk already, each build is a cache read (≈1 ms).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch

logger = logging.getLogger(__name__)

MAX_WORKERS = 8  # measured: 4 threads 4.6 s, 8 threads 4.2 s, 16 threads 4.1 s for the same 22 variants


class _Builds:
    """The builds one ``prebuild`` block asked for: one per distinct variant."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="kernel-build")
        self.futures: dict[tuple, Future] = {}

    def submit(self, kernel: Any, grid: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> None:
        key = (id(kernel), tuple(sorted(kwargs.items())), tuple(_specialisation(a) for a in args))
        if key not in self.futures:
            self.futures[key] = self.pool.submit(_build, kernel, grid, args, kwargs)


def _specialisation(arg: Any) -> Any:
    """What of ``arg`` can make Triton build another variant (as fine as Triton's own key, or finer)."""
    if isinstance(arg, torch.Tensor):
        return ("tensor", arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool):
        return ("bool", arg)
    if isinstance(arg, int):
        return ("int", arg == 1, arg % 16 == 0)
    return (type(arg).__name__,)


def _build(kernel: Any, grid: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> None:
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    with torch.cuda.device(device) if device is not None and device.type == "cuda" else nullcontext():
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        # the launcher (a C build per kernel signature) and the module load, else left to the first launch
        init = getattr(compiled, "_init_handles", None)
        if callable(init):
            init()


_ACTIVE: ContextVar[_Builds | None] = ContextVar("kernel_prebuild", default=None)


def active() -> bool:
    """Whether this thread is inside :func:`prebuild` (a dry pass: kernels are built, not run)."""
    return _ACTIVE.get() is not None


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> bool:
    """Run ``kernel[grid](*args, **kwargs)`` and return True; inside :func:`prebuild`, queue its build and return False.

    On False the caller's output holds nothing the kernel wrote: the caller fills it (zeros keep a dry pass finite).
    """
    builds = _ACTIVE.get()
    if builds is None:
        kernel[grid](*args, **kwargs)
        return True
    builds.submit(kernel, grid, args, kwargs)
    return False


@contextmanager
def prebuild(workers: int | None = None, timeout: float = 600.0) -> Iterator[None]:
    """Inside the block, this thread's kernel launches become builds on a pool; leaving it waits for them.

    A build that fails is logged and left to the real launch, which then raises as it would have without this.
    """
    builds = _Builds(workers or max(1, min(MAX_WORKERS, os.cpu_count() or 1)))
    token = _ACTIVE.set(builds)
    start = time.perf_counter()
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        failed = 0
        for future in builds.futures.values():
            try:
                future.result(timeout=max(0.0, timeout - (time.perf_counter() - start)))
            except Exception as exc:  # the first real launch shows a broken kernel, with its own error
                failed += 1
                logger.warning("A Triton kernel could not be built ahead (%s); its first launch will build it", exc)
        builds.pool.shutdown(wait=False, cancel_futures=True)
        logger.info(
            "Triton kernels: %d variants built or loaded ahead in %.2f s (%d failed)",
            len(builds.futures), time.perf_counter() - start, failed,
        )  # fmt: skip
