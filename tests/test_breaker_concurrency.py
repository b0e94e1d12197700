"""The breaker under concurrency: 8 threads and 100 asyncio tasks at once, under a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from qwed_guard.breaker import BreakerState, CircuitOpen, circuit_breaker
from qwed_guard.clock import FakeClock
from qwed_guard.hooks import BreakerChanged, Event
from qwed_guard.layer import observed


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


def run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def half_open_round(fake_clock: FakeClock, probes: int) -> None:
    """Open a breaker, let recovery pass, then send 8 threads at it at once."""
    failing = True
    release = threading.Event()
    admitted: list[int] = []
    refused: list[CircuitOpen] = []
    lock = threading.Lock()

    @circuit_breaker(
        failure_threshold=1,
        recovery_timeout=10,
        half_open_probes=probes,
        success_threshold=probes,
    )
    def ask() -> str:
        if failing:
            raise ConnectionError("down")
        with lock:
            admitted.append(1)
        assert release.wait(5)
        return "ok"

    with pytest.raises(ConnectionError):
        ask()
    failing = False
    fake_clock.advance(10)
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        try:
            ask()
        except CircuitOpen as refusal:
            with lock:
                refused.append(refusal)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(refused) == 8 - probes)
    assert ask.breaker.state is BreakerState.HALF_OPEN
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(admitted) == probes
    assert all(r.state is BreakerState.HALF_OPEN for r in refused)
    assert ask.breaker.state is BreakerState.CLOSED
    assert ask.breaker.short_circuited == 8 - probes


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_admits_exactly_the_probes_under_8_threads(
    fake_clock: FakeClock, probes: int
) -> None:
    for _ in range(10):  # several rounds, to give a race a chance to show
        half_open_round(fake_clock, probes)


def test_8_threads_failing_together_open_the_breaker_once(fake_clock: FakeClock) -> None:
    events: list[Event] = []
    events_lock = threading.Lock()

    def listen(event: Event) -> None:
        with events_lock:
            events.append(event)

    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        raise ConnectionError("down")

    ask = observed(lambda ctx: listen)(circuit_breaker(failure_threshold=3)(fail))

    def worker() -> None:
        with contextlib.suppress(ConnectionError, CircuitOpen):
            ask()

    run_threads(worker, 8)
    assert ask.breaker.opened == 1
    changes = [e for e in events if isinstance(e, BreakerChanged)]
    assert [(str(e.old), str(e.new)) for e in changes] == [("closed", "open")]
    assert ask.breaker.failures == 8  # every call was admitted before the first one failed


@pytest.mark.parametrize("probes", [1, 5])
async def test_half_open_admits_exactly_the_probes_under_100_tasks(
    fake_clock: FakeClock, probes: int
) -> None:
    release = asyncio.Event()
    admitted = 0
    failing = True

    @circuit_breaker(
        failure_threshold=1, recovery_timeout=10, half_open_probes=probes, success_threshold=1
    )
    async def ask() -> str:
        nonlocal admitted
        if failing:
            raise ConnectionError("down")
        admitted += 1
        await release.wait()
        return "ok"

    with pytest.raises(ConnectionError):
        await ask()
    failing = False
    fake_clock.advance(10)
    tasks = [asyncio.create_task(ask()) for _ in range(100)]
    await asyncio.sleep(0)
    # Every task has run to its first await: admitted ones wait, the rest were refused.
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 100 - probes
    assert all(isinstance(t.exception(), CircuitOpen) for t in refused)
    assert admitted == probes
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == probes
    assert ask.breaker.state is BreakerState.CLOSED
    assert ask.breaker.short_circuited == 100 - probes


async def test_100_tasks_failing_together_open_the_breaker_once(fake_clock: FakeClock) -> None:
    gate = asyncio.Event()

    @circuit_breaker(failure_threshold=5)
    async def ask() -> None:
        await gate.wait()
        raise ConnectionError("down")

    tasks = [asyncio.create_task(ask()) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert ask.breaker.opened == 1
    assert ask.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await ask()
