"""@retry: schedule, Retry-After, permanent outcomes, deadline, async, methods, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwed_sdk.qwed_local import VerificationResult

from qwed_guard import Outcome, VerificationFailed, retry
from qwed_guard.clock import FakeClock
from qwed_guard.outcomes import Diagnosis
from qwed_guard.testing import fake_time

OVERLOADED = "LLM call failed: Error code: 503 - The server is overloaded or not ready yet."
BAD_KEY = "LLM call failed: Error code: 401 - Incorrect API key provided: sk-proj-****...abcd."


def ok(value: str = "4") -> VerificationResult:
    return VerificationResult(verified=True, value=value, confidence=1.0)


def failed(error: str | None) -> VerificationResult:
    return VerificationResult(verified=False, error=error)


class Script:
    """A fake verifier that returns (or raises) the scripted replies in order."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls = 0

    def __call__(self, query: str) -> Any:
        self.calls += 1
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply


def test_transient_then_verified_follows_the_seed_schedule(fake_clock: FakeClock) -> None:
    script = Script(failed(OVERLOADED), failed(OVERLOADED), ok())
    verify = retry(max_tries=3, jitter=None)(script)
    assert verify("What is 2 + 2?").value == "4"
    assert script.calls == 3
    assert fake_clock.waits == [1.0, 2.0]


def test_schedule_is_exponential_and_capped(fake_clock: FakeClock) -> None:
    verify = retry(max_tries=6, base=1.0, factor=2.0, max_delay=5.0, jitter=None)(
        Script(failed(OVERLOADED))
    )
    with pytest.raises(VerificationFailed):
        verify("q")
    assert fake_clock.waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_full_jitter_stays_within_the_computed_wait(fake_clock: FakeClock) -> None:
    verify = retry(max_tries=4)(Script(failed(OVERLOADED)))
    with pytest.raises(VerificationFailed):
        verify("q")
    assert len(fake_clock.waits) == 3
    for wait, ceiling in zip(fake_clock.waits, [1.0, 2.0, 4.0], strict=True):
        assert 0.0 <= wait <= ceiling


def test_permanent_is_tried_once_and_reported(fake_clock: FakeClock) -> None:
    script = Script(failed(BAD_KEY))
    verify = retry(max_tries=5)(script)
    with pytest.raises(VerificationFailed) as caught:
        verify("q")
    assert script.calls == 1
    assert fake_clock.waits == []
    failure = caught.value
    assert failure.outcome is Outcome.PERMANENT
    assert [a.outcome for a in failure.attempts] == [Outcome.PERMANENT]
    assert failure.attempts[0].status == 401
    assert "sk-proj" not in str(failure)
    assert failure.last_result.error == BAD_KEY


def test_gave_up_carries_every_attempt_and_chains_the_exception(fake_clock: FakeClock) -> None:
    boom = ConnectionResetError("peer reset")
    verify = retry(max_tries=3, jitter=None)(Script(boom))
    with pytest.raises(VerificationFailed) as caught:
        verify("q")
    failure = caught.value
    assert failure.__cause__ is boom
    assert failure.last_exception is boom
    assert [(a.number, a.outcome, a.wait_before) for a in failure.attempts] == [
        (1, Outcome.TRANSIENT, 0.0),
        (2, Outcome.TRANSIENT, 1.0),
        (3, Outcome.TRANSIENT, 2.0),
    ]
    assert all(a.duration >= 0 for a in failure.attempts)
    assert "ConnectionResetError" in (failure.error or "")


def test_refuted_and_unverifiable_are_reasked_within_their_own_cap(fake_clock: FakeClock) -> None:
    script = Script(failed(None))
    verify = retry(max_tries=5, jitter=None, max_reasks=1)(script)
    with pytest.raises(VerificationFailed) as caught:
        verify("q")
    assert script.calls == 2
    assert caught.value.outcome is Outcome.REFUTED
    unverifiable = Script(failed("SymPy verification failed: bad"), ok())
    assert retry(jitter=None)(unverifiable)("q").verified
    assert unverifiable.calls == 2


def test_retry_on_narrows_what_is_retried(fake_clock: FakeClock) -> None:
    script = Script(failed(None), ok())
    verify = retry(retry_on=["transient"], jitter=None)(script)
    with pytest.raises(VerificationFailed):
        verify("q")
    assert script.calls == 1


def test_retry_after_replaces_the_wait_unjittered_and_capped(fake_clock: FakeClock) -> None:
    def told_to_wait(result: Any) -> Diagnosis:
        if result.verified:
            return Diagnosis(Outcome.VERIFIED)
        return Diagnosis(Outcome.TRANSIENT, retry_after=result.value)

    script = Script(
        VerificationResult(verified=False, value=7.5, error="x"),
        VerificationResult(verified=False, value=500.0, error="x"),
        ok(),
    )
    verify = retry(max_tries=3, max_delay=30.0, classifier=told_to_wait)(script)
    verify("q")
    assert fake_clock.waits == [7.5, 30.0]


def test_max_time_is_a_deadline(fake_clock: FakeClock) -> None:
    starts: list[float] = []

    def slow(query: str) -> VerificationResult:
        starts.append(fake_clock.monotonic())
        fake_clock.advance(1.5)  # each attempt takes 1.5 s
        return failed(OVERLOADED)

    begin = fake_clock.monotonic()
    verify = retry(max_tries=10, jitter=None, max_time=6.0)(slow)
    with pytest.raises(VerificationFailed) as caught:
        verify("q")
    # attempt 1 at 0 s, 2 at 2.5 s, 3 at 6.0 s; a 4 s wait would pass the deadline.
    assert [s - begin for s in starts] == [0.0, 2.5, 6.0]
    assert "max_time" in (caught.value.reason or "")


@settings(max_examples=60, deadline=None)
@given(
    max_tries=st.integers(1, 8),
    base=st.floats(0, 5),
    factor=st.floats(1, 4),
    max_delay=st.floats(0, 20),
    max_time=st.one_of(st.none(), st.floats(0, 30)),
    attempt_cost=st.floats(0, 3),
    replies=st.lists(st.sampled_from(["503", "401", "wrong", "sympy", "ok", "raise"]), min_size=1),
)
def test_properties(
    max_tries: int,
    base: float,
    factor: float,
    max_delay: float,
    max_time: float | None,
    attempt_cost: float,
    replies: list[str],
) -> None:
    made = {
        "503": failed(OVERLOADED),
        "401": failed(BAD_KEY),
        "wrong": failed(None),
        "sympy": failed("SymPy verification failed: x"),
        "ok": ok(),
        "raise": TimeoutError("slow"),
    }
    with fake_time() as clock:
        starts: list[float] = []
        kinds: list[str] = []
        pending = list(replies)

        def verifier(query: str) -> VerificationResult:
            starts.append(clock.monotonic())
            kind = pending.pop(0) if pending else "503"
            kinds.append(kind)
            clock.advance(attempt_cost)
            reply = made[kind]
            if isinstance(reply, BaseException):
                raise reply
            return reply

        verify = retry(
            max_tries=max_tries, base=base, factor=factor, max_delay=max_delay, max_time=max_time
        )(verifier)
        begin = clock.monotonic()
        with contextlib.suppress(VerificationFailed):
            verify("q")
    assert 1 <= len(starts) <= max_tries
    if max_time is not None:
        assert all(start - begin <= max_time + 1e-9 for start in starts)
    assert all(0.0 <= wait <= max_delay for wait in clock.waits)
    if "401" in kinds:
        # A permanent outcome ends the call at once.
        assert kinds[-1] == "401" and kinds.count("401") == 1


async def test_async_retry_uses_the_async_sleep(fake_clock: FakeClock) -> None:
    replies = [failed(OVERLOADED), ok("25")]

    @retry(jitter=None)
    async def verify(query: str) -> VerificationResult:
        await asyncio.sleep(0)
        return replies.pop(0)

    assert (await verify("What is 5 * 5?")).value == "25"
    assert fake_clock.waits == [1.0]


async def test_async_gives_up_with_verification_failed(fake_clock: FakeClock) -> None:
    @retry(max_tries=2, jitter=None)
    async def verify(query: str) -> VerificationResult:
        raise ConnectionError("down")

    with pytest.raises(VerificationFailed) as caught:
        await verify("q")
    assert len(caught.value.attempts) == 2


def test_methods_keep_self_and_signature(fake_clock: FakeClock) -> None:
    import inspect

    class Verifier:
        def __init__(self) -> None:
            self.calls = 0

        @retry(jitter=None)
        def verify(self, query: str, *, strict: bool = True) -> VerificationResult:
            """Verify one query."""
            self.calls += 1
            return ok() if self.calls == 2 else failed(OVERLOADED)

    verifier = Verifier()
    assert verifier.verify("q").verified
    assert verifier.calls == 2
    assert inspect.signature(Verifier.verify) == inspect.signature(
        Verifier.verify.__wrapped__  # type: ignore[attr-defined]
    )
    assert list(inspect.signature(Verifier.verify).parameters) == ["self", "query", "strict"]
    assert Verifier.verify.__doc__ == "Verify one query."
    assert Verifier.verify.__name__ == "verify"


def test_threads_do_not_share_attempt_state(fake_clock: FakeClock) -> None:
    # Both threads are inside their first attempt at the same time.
    first_attempts = threading.Barrier(2)
    per_thread: dict[str, int] = {"a": 0, "b": 0}
    needed = {"a": 2, "b": 3}

    @retry(max_tries=3, jitter=None)
    def verify(name: str) -> VerificationResult:
        per_thread[name] += 1
        if per_thread[name] == 1:
            first_attempts.wait(timeout=5)
        return ok() if per_thread[name] == needed[name] else failed(OVERLOADED)

    results: dict[str, bool] = {}

    def run(name: str) -> None:
        results[name] = verify(name).verified

    threads = [threading.Thread(target=run, args=(name,)) for name in needed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {"a": True, "b": True}
    assert per_thread == needed


async def test_tasks_do_not_share_attempt_state(fake_clock: FakeClock) -> None:
    counts: dict[str, int] = {}

    @retry(max_tries=3, jitter=None)
    async def verify(name: str, succeed_on: int) -> VerificationResult:
        counts[name] = counts.get(name, 0) + 1
        await asyncio.sleep(0)
        return ok() if counts[name] == succeed_on else failed(OVERLOADED)

    a, b = await asyncio.gather(verify("a", 1), verify("b", 3))
    assert a.verified and b.verified
    assert counts == {"a": 1, "b": 3}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_tries": 0}, ValueError, "max_tries: must be >= 1, got 0"),
        ({"max_tries": 10_000}, ValueError, "max_tries: must be <= 100, got 10000"),
        ({"retry_on": 5}, TypeError, "retry_on: must be a list of outcome names, got int"),
        ({"max_tries": 2.5}, TypeError, "max_tries: must be an int"),
        ({"base": -1}, ValueError, "base: must be >= 0"),
        ({"max_delay": -0.5}, ValueError, "max_delay: must be >= 0"),
        ({"max_time": -1}, ValueError, "max_time: must be >= 0"),
        ({"factor": 0.5}, ValueError, "factor: must be >= 1"),
        ({"retry_on": ["flaky"]}, ValueError, "retry_on: unknown outcome 'flaky'"),
        ({"retry_on": ["permanent"]}, ValueError, "permanent outcomes are never retried"),
        ({"jitter": "wild"}, ValueError, "jitter: must be one of"),
        ({"max_reasks": -1}, ValueError, "max_reasks: must be >= 0"),
    ],
)
def test_bad_arguments_fail_at_decoration(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        retry(**kwargs)


def test_jitter_none_can_be_spelled_as_data(fake_clock: FakeClock) -> None:
    verify = retry(jitter="none")(Script(failed(OVERLOADED), ok()))
    verify("q")
    assert fake_clock.waits == [1.0]


def test_bare_decorator_and_describe() -> None:
    @retry
    def verify(query: str) -> VerificationResult:
        return ok()

    assert verify("q").verified
    layer = verify.guard_layers[0]  # type: ignore[attr-defined]
    assert layer.describe().startswith("retry(max_tries=3; waits 1 s, 2 s;")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("base", 1e308),
        ("base", float("nan")),
        ("max_delay", float("inf")),
        ("max_delay", 1e308),
        ("factor", 1e6),
        ("max_time", float("nan")),
        ("max_time", 1e12),
    ],
)
def test_numbers_are_bounded_and_finite(param: str, value: float) -> None:
    with pytest.raises(ValueError, match=param):
        retry(**{param: value})
