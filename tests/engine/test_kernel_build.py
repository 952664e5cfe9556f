"""engine/kernel_build.py: launches run outside ``prebuild``; inside, each distinct variant is built once, on the pool.

The kernel here is a small stand-in with Triton's two entry points (``kernel[grid](...)`` and ``warmup``): there is no
Triton on a CPU. The real kernels under ``prebuild`` run in tests/gpu/test_gpu_smoke.py.
"""

import logging
import threading

import pytest
import torch

from modules.engine import kernel_build


class Compiled:
    def __init__(self) -> None:
        self.initialised = False

    def _init_handles(self) -> None:
        self.initialised = True


class Kernel:
    """Records launches and builds as Triton's JITFunction would receive them."""

    def __init__(self, fail: bool = False) -> None:
        self.launches: list[tuple] = []
        self.builds: list[tuple] = []
        self.compiled: list[Compiled] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        if self.fail:
            raise RuntimeError("ptxas error")
        with self.lock:
            self.builds.append((grid, args, kwargs, threading.current_thread().name))
            self.compiled.append(Compiled())
            return self.compiled[-1]


def test_outside_prebuild_a_launch_runs_the_kernel():
    kernel = Kernel()
    x = torch.zeros(4)
    assert kernel_build.launch(kernel, (2, 3), x, 16, block=8) is True
    assert kernel.launches == [((2, 3), (x, 16), {"block": 8})] and kernel.builds == []
    assert not kernel_build.active()


def test_inside_prebuild_each_variant_is_built_once_on_the_pool_and_nothing_runs(caplog):
    kernel = Kernel()
    x = torch.zeros(4)
    caplog.set_level(logging.INFO, logger="modules.engine.kernel_build")
    with kernel_build.prebuild(workers=2):
        assert kernel_build.active()
        assert kernel_build.launch(kernel, (1, 1), x, 320, block=16) is False
        assert kernel_build.launch(kernel, (9, 9), x, 320, block=16) is False  # the same variant: no second build
        assert kernel_build.launch(kernel, (1, 1), x.half(), 320, block=16) is False  # another dtype
        assert kernel_build.launch(kernel, (1, 1), x, 10, block=16) is False  # 10 is not a multiple of 16
        assert kernel_build.launch(kernel, (1, 1), x, 320, block=32) is False  # another constexpr
    assert not kernel_build.active()
    assert kernel.launches == []
    assert [(b[0], b[2]) for b in kernel.builds] == [((1, 1), {"block": 16})] * 3 + [((1, 1), {"block": 32})]
    assert {b[1][1] for b in kernel.builds} == {320, 10}
    assert all(name.startswith("kernel-build") for *_, name in kernel.builds)  # on the pool's threads
    assert all(c.initialised for c in kernel.compiled)  # launcher and module loaded too
    assert "4 variants built or loaded ahead" in caplog.text


def test_a_build_that_fails_is_left_to_the_real_launch(caplog):
    kernel = Kernel(fail=True)
    caplog.set_level(logging.INFO, logger="modules.engine.kernel_build")
    with kernel_build.prebuild(workers=1):
        kernel_build.launch(kernel, (1,), torch.zeros(2), 3)
    assert "could not be built ahead" in caplog.text and "(1 failed)" in caplog.text
    assert kernel_build.launch(kernel, (1,), torch.zeros(2), 3) is True  # the real launch runs (and would raise)


def test_prebuild_is_per_thread():
    kernel = Kernel()
    seen = []
    with kernel_build.prebuild(workers=1):
        other = threading.Thread(target=lambda: seen.append(kernel_build.launch(kernel, (1,), torch.zeros(1), 2)))
        other.start()
        other.join()
    assert seen == [True] and len(kernel.launches) == 1 and kernel.builds == []


def test_the_block_waits_for_its_builds_even_when_the_dry_pass_raises():
    kernel = Kernel()
    with pytest.raises(ValueError), kernel_build.prebuild(workers=2):
        kernel_build.launch(kernel, (1,), torch.zeros(1), 2)
        raise ValueError("the dry pass failed")
    assert len(kernel.builds) == 1 and not kernel_build.active()
