"""@attempt_timeout: a hanging async attempt is cancelled, counted transient and retried.

The timeouts here are real (asyncio's loop clock) but tiny; retry waits use the fake clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from qwed_guard import VerificationFailed, classify, fallback, retry
from qwed_guard.breaker import BreakerState, CircuitOpen, circuit_breaker
from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.errors import ParameterError, QwedGuardError
from qwed_guard.layer import observed
from qwed_guard.outcomes import Outcome
from qwed_guard.timeout import AttemptTimeout, AttemptTimeoutLayer, attempt_timeout

HANG = 0.05


class Capture:
    """A hook that keeps each call's context."""

    def __init__(self) -> None:
        self.contexts: list[CallContext] = []

    def __call__(self, ctx: CallContext) -> None:
        self.contexts.append(ctx)


async def test_a_hanging_attempt_is_cancelled_classified_transient_and_retried(
    fake_clock: FakeClock,
) -> None:
    calls = 0
    cancelled = 0
    capture = Capture()

    @retry(max_tries=3, jitter=None)
    @attempt_timeout(HANG)
    async def ask() -> str:
        nonlocal calls, cancelled
        calls += 1
        if calls == 1:
            try:
                await asyncio.Event().wait()  # hangs forever
            except asyncio.CancelledError:
                cancelled += 1
                raise
        return "42"

    ask = observed(capture)(ask)
    started = time.perf_counter()
    assert await ask() == "42"
    elapsed = time.perf_counter() - started
    assert (calls, cancelled) == (2, 1)
    assert HANG * 0.9 <= elapsed < 2.0
    attempts = capture.contexts[0].attempts
    # "42" is a plain value: it passes through, never reported verified.
    assert [a.outcome for a in attempts] == [Outcome.TRANSIENT, Outcome.UNCHECKED]
    assert attempts[0].error == "attempt timed out after 0.05 s"
    assert fake_clock.waits == [1.0]  # retry's backoff, on the fake clock


async def test_timeouts_count_as_breaker_failures(fake_clock: FakeClock) -> None:
    calls = 0

    @fallback(value="fallback")
    @retry(max_tries=3, jitter=None)
    @circuit_breaker(failure_threshold=2, recovery_timeout=30)
    @attempt_timeout(0.01)
    async def ask() -> str:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return "never"

    result = await ask()
    assert result.value == "fallback"
    assert result.outcome is Outcome.SHORT_CIRCUITED  # two timeouts opened the breaker
    assert calls == 2
    assert ask.breaker.state is BreakerState.OPEN
    assert ask.breaker.failures == 2


async def test_without_retry_the_timeout_error_reaches_the_caller(fake_clock: FakeClock) -> None:
    @attempt_timeout(0.01)
    async def ask() -> None:
        await asyncio.Event().wait()

    with pytest.raises(AttemptTimeout) as caught:
        await ask()
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, QwedGuardError)
    assert classify(error) is Outcome.TRANSIENT
    assert error.seconds == 0.01
    assert isinstance(error.__cause__, TimeoutError)


async def test_the_functions_own_timeout_error_is_not_rewritten(fake_clock: FakeClock) -> None:
    @retry(max_tries=1)
    @attempt_timeout(5)
    async def ask() -> None:
        raise TimeoutError("read timed out")

    with pytest.raises(VerificationFailed) as caught:
        await ask()
    failure = caught.value
    assert type(failure.last_exception) is TimeoutError
    assert failure.attempts[0].error == "TimeoutError: read timed out"


async def test_a_fast_attempt_is_untouched(fake_clock: FakeClock) -> None:
    @attempt_timeout(5)
    async def ask(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert await ask(21) == 42


async def test_the_breaker_counts_a_timed_out_probe_as_a_failure(fake_clock: FakeClock) -> None:
    hang = False

    @circuit_breaker(failure_threshold=1, recovery_timeout=5)
    @attempt_timeout(0.01)
    async def ask() -> str:
        if hang:
            await asyncio.Event().wait()
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await ask()
    fake_clock.advance(5)
    hang = True
    with pytest.raises(AttemptTimeout):
        await ask()  # the probe
    assert ask.breaker.state is BreakerState.OPEN
    assert ask.breaker.opened == 2
    with pytest.raises(CircuitOpen):
        await ask()


def test_sync_functions_are_refused_with_the_way_to_bound_them() -> None:
    with pytest.raises(ParameterError) as caught:

        @attempt_timeout(5)
        def ask() -> None:
            pass

    assert caught.value.param == "seconds"
    assert "guarded_client(..., timeout=seconds)" in str(caught.value)
    assert "thread cannot be stopped safely" in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (0, "seconds: must be > 0, got 0"),
        (-1.5, "seconds: must be > 0, got -1.5"),
        ("5s", "seconds: must be a number, got str"),
        (True, "seconds: must be a number, got bool"),
    ],
)
def test_bad_timeouts_are_refused_at_decoration(seconds: Any, message: str) -> None:
    with pytest.raises(ParameterError, match=f"^{message}$"):
        attempt_timeout(seconds)


def test_describe() -> None:
    assert AttemptTimeoutLayer(2.5).describe() == "attempt_timeout(seconds=2.5)"
