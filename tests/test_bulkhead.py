"""`@concurrency_limit`: at most `limit` attempts in flight per key; the rest wait or fall back."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from qwed_guard import ConcurrencyLimited, Outcome, Policy, concurrency_limit, fallback, retry
from qwed_guard.clock import FakeClock
from qwed_guard.errors import ParameterError


class Gauge:
    """How many calls are inside the function now, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_threads_beyond_the_limit_fall_back_at_once() -> None:
    gauge = Gauge()
    inside = threading.Barrier(4)
    release = threading.Event()

    @fallback(value="busy")
    @concurrency_limit(limit=3)
    def verify() -> str:
        with gauge:
            inside.wait(5)
            release.wait(5)
            return "ok"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(verify())) for _ in range(3)]
    for thread in threads:
        thread.start()
    inside.wait(5)  # three calls hold the three slots
    started = time.monotonic()
    refused = [verify() for _ in range(5)]
    assert time.monotonic() - started < 1.0  # wait=0: at once
    release.set()
    for thread in threads:
        thread.join(5)
    assert [r.value for r in refused] == ["busy"] * 5
    assert refused[0].outcome is Outcome.SHORT_CIRCUITED
    assert refused[0].error == "concurrency limit 3 reached for " + repr(
        f"{__name__}.{verify.__qualname__}"
    )
    assert [getattr(r, "value", r) for r in results] == ["ok"] * 3
    assert gauge.peak == 3
    limiter = verify.find_layer("concurrency_limit").limiter  # type: ignore[attr-defined]
    assert limiter.in_flight == 0  # every slot freed


def test_the_refusal_is_its_own_outcome_and_is_not_retried() -> None:
    hold = threading.Event()
    entered = threading.Event()

    @concurrency_limit(limit=1, key="one-slot")
    def slow() -> str:
        entered.set()
        hold.wait(5)
        return "ok"

    @retry(max_tries=3, base=0)
    @concurrency_limit(limit=1, key="one-slot")
    def other() -> str:
        return "ok"

    holder = threading.Thread(target=slow)
    holder.start()
    entered.wait(5)
    try:
        with pytest.raises(Exception) as caught:
            other()
    finally:
        hold.set()
        holder.join(5)
    failure: Any = caught.value
    assert len(failure.attempts) == 1  # short_circuited: not retried
    assert failure.attempts[0].outcome is Outcome.SHORT_CIRCUITED
    assert isinstance(failure.last_exception, ConcurrencyLimited)
    assert "concurrency limit 1 reached for 'one-slot'" in str(failure.last_exception)


def test_calls_wait_up_to_the_bound_for_a_slot() -> None:
    gauge = Gauge()

    @concurrency_limit(limit=2, wait=5.0)
    def verify() -> str:
        with gauge:
            time.sleep(0.02)
            return "ok"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(verify())) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["ok"] * 10  # everyone got a slot in time
    assert gauge.peak <= 2 and gauge.calls == 10


def test_a_wait_that_runs_out_falls_back(fake_clock: FakeClock) -> None:
    @concurrency_limit(limit=1, wait=0.5, key="waits")
    def verify() -> str:
        return "ok"

    limiter = verify.find_layer("concurrency_limit").limiter  # type: ignore[attr-defined]
    assert limiter.acquire("someone-else", 0)
    with pytest.raises(ConcurrencyLimited) as caught:
        verify()
    assert caught.value.waited == pytest.approx(0.5)
    assert sum(fake_clock.waits) == pytest.approx(0.5)


def test_a_slot_whose_holder_died_frees_itself(fake_clock: FakeClock) -> None:
    @concurrency_limit(limit=1, lease=30)
    def verify() -> str:
        return "ok"

    limiter = verify.find_layer("concurrency_limit").limiter  # type: ignore[attr-defined]
    assert limiter.acquire("dead-process", 0)  # taken, never released
    with pytest.raises(ConcurrencyLimited):
        verify()
    assert limiter.in_flight == 1
    fake_clock.advance(30.1)
    assert limiter.in_flight == 0
    assert verify() == "ok"


async def test_async_tasks_never_exceed_the_limit() -> None:
    gauge = Gauge()

    @concurrency_limit(limit=5, wait=10.0)
    async def verify() -> str:
        with gauge:
            await asyncio.sleep(0.01)
            return "ok"

    results = await asyncio.gather(*(verify() for _ in range(50)))
    assert results == ["ok"] * 50
    assert gauge.peak == 5


async def test_a_cancelled_task_frees_its_slot() -> None:
    started = asyncio.Event()

    @concurrency_limit(limit=1)
    async def verify() -> str:
        started.set()
        await asyncio.sleep(10)
        return "ok"

    task = asyncio.create_task(verify())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    limiter = verify.find_layer("concurrency_limit").limiter  # type: ignore[attr-defined]
    assert limiter.in_flight == 0


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"wait": -1}, "wait"),
        ({"lease": 0}, "lease"),
        ({"lease": float("nan")}, "lease"),
        ({"key": 3}, "key"),
    ],
)
def test_parameters_are_checked(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ParameterError, match=problem):
        concurrency_limit(**params)


def test_policy_section() -> None:
    policy = Policy({"retry": {}, "circuit_breaker": {}, "concurrency": {"limit": 4, "wait": 1}})
    lines = policy.describe().splitlines()
    assert lines[3].endswith("concurrency_limit(limit=4; wait=1 s; lease=60 s)")
    with pytest.raises(Exception, match=r"concurrency\.limit"):
        Policy({"concurrency": {"limit": 0}})
