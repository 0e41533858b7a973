"""A thread waiting for another thread's load stays interruptible: a signal
handled in the main thread raises there promptly, and the load goes on for
the others. Each scenario runs in a child interpreter (signals and a stuck
main thread must not touch the test runner)."""

from __future__ import annotations

import signal
import threading
import time

from support import run_isolated

from moka_py import Moka, cached


def _wait_for(event: threading.Event) -> None:
    assert event.wait(10), "the loading thread never started"


def scenario_ctrl_c_interrupts_a_get_with_waiter() -> None:
    import _thread

    cache: Moka[str, str] = Moka(10)
    started, release = threading.Event(), threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        return "value"

    loader = threading.Thread(target=lambda: results.append(cache.get_with("k", slow)))
    loader.start()
    _wait_for(started)
    threading.Timer(0.2, _thread.interrupt_main).start()
    interrupted_after = None
    t0 = time.monotonic()
    try:
        cache.get_with("k", slow)
    except KeyboardInterrupt:
        interrupted_after = time.monotonic() - t0
    assert interrupted_after is not None, "the waiter was not interrupted"
    assert not release.is_set()  # raised while the load was still running
    release.set()
    loader.join(10)
    assert results == ["value"]
    assert cache.get("k") == "value"


def scenario_signal_handler_exception_interrupts_a_cached_waiter() -> None:
    class Stop(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGUSR1, handler)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @cached(wait_concurrent=True)
    def slow(x: int) -> int:
        calls.append(x)
        started.set()
        release.wait(10)
        return x * 2

    results: list[int] = []
    loader = threading.Thread(target=lambda: results.append(slow(21)))
    loader.start()
    _wait_for(started)
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGUSR1)).start()
    try:
        slow(21)
    except Stop:
        pass
    else:
        raise AssertionError("the waiter was not interrupted")
    release.set()
    loader.join(10)
    assert results == [42]
    assert slow(21) == 42
    assert calls == [21]


def test_ctrl_c_interrupts_a_get_with_waiter() -> None:
    run_isolated(scenario_ctrl_c_interrupts_a_get_with_waiter)


def test_signal_handler_exception_interrupts_a_cached_waiter() -> None:
    run_isolated(scenario_signal_handler_exception_interrupts_a_cached_waiter)
