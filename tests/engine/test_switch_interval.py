"""engine/switch_interval.py: overlapping holds in several threads; the last to end restores the interval."""

import sys
import threading

import pytest

from modules.engine.switch_interval import SHORT_SWITCH_INTERVAL_S, short_switch_interval

SHORT = pytest.approx(SHORT_SWITCH_INTERVAL_S, abs=2e-6)  # the interpreter keeps it in (rounded) microseconds


@pytest.fixture
def interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def _hold_in_thread(entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def run():
        with short_switch_interval():
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(30)
    return thread


def test_a_hold_shortens_the_interval_and_restores_it(interval):
    with short_switch_interval():
        assert sys.getswitchinterval() == SHORT
        with short_switch_interval():  # nested in the same thread: no change
            assert sys.getswitchinterval() == SHORT
        assert sys.getswitchinterval() == SHORT
    assert sys.getswitchinterval() == pytest.approx(interval, abs=2e-6)


@pytest.mark.parametrize("main_ends_first", [True, False])
def test_overlapping_holds_restore_only_when_the_last_ends(interval, main_ends_first):
    entered, leave = threading.Event(), threading.Event()
    with short_switch_interval():
        thread = _hold_in_thread(entered, leave)  # started while the main thread holds it
        if not main_ends_first:
            leave.set()
            thread.join(30)
            assert sys.getswitchinterval() == SHORT  # the main thread still holds it
    if main_ends_first:
        assert sys.getswitchinterval() == SHORT  # the worker still holds it
        leave.set()
        thread.join(30)
    assert sys.getswitchinterval() == pytest.approx(interval, abs=2e-6)


def test_a_hold_never_lengthens_a_shorter_interval(interval):
    sys.setswitchinterval(0.0001)
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
