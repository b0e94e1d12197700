"""Hooks: the typed events of a call, who receives them, and what a failing hook cannot do."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from loguru import logger

from qwed_guard import (
    AuditError,
    CircuitOpen,
    GuardedResult,
    Outcome,
    Policy,
    VerificationFailed,
    add_hook,
    audited,
    circuit_breaker,
    fallback,
    observed,
    remove_hook,
    retry,
)
from qwed_guard.audit.sinks.memory import MemorySink
from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.hooks import (
    AlertSent,
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    RetryScheduled,
    lazy,
)
from tests.trails import attempts_of

CANARY = "sk-hookcanary0123456789abcdef"


@dataclass
class Result:
    verified: bool
    value: Any = None
    error: str | None = None


OK = Result(True, 42)
DOWN = Result(False, error="Error code: 503 - service unavailable")
WRONG = Result(False, 7)


class Recorder:
    """A hook that keeps every call's events, per call."""

    def __init__(self, ignores: frozenset[type] = frozenset()) -> None:
        self.calls: list[tuple[CallContext, list[Event]]] = []
        self.ignores = ignores
        self.lock = threading.Lock()

    def __call__(self, ctx: CallContext) -> Callable[[Event], None]:
        events: list[Event] = []
        with self.lock:
            self.calls.append((ctx, events))
        recorder = self

        class Watch:
            ignores = recorder.ignores

            def __call__(self, event: Event) -> None:
                events.append(event)

        return Watch()

    def kinds(self, call: int = 0) -> list[str]:
        return [e.kind for e in self.calls[call][1]]


def replies(*items: Any) -> Callable[..., Any]:
    queue = list(items)

    def verify(query: str) -> Any:
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return verify


@pytest.fixture
def process_hook() -> Iterator[Recorder]:
    recorder = Recorder()
    add_hook(recorder)
    try:
        yield recorder
    finally:
        remove_hook(recorder)


def test_a_verified_call_is_three_events(process_hook: Recorder, fake_clock: FakeClock) -> None:
    verify = retry(max_tries=3)(replies(OK))
    assert verify("2+2") is OK
    assert process_hook.kinds() == ["attempt_started", "attempt_ended", "call_ended"]
    ctx, events = process_hook.calls[0]
    assert ctx.function.endswith("replies.<locals>.verify")
    assert ctx.args == ("2+2",)
    ended = events[1]
    assert isinstance(ended, AttemptEnded)
    assert ended.record.outcome is Outcome.VERIFIED and ended.result is OK
    final = events[2]
    assert isinstance(final, CallEnded)
    assert final.diagnosis.outcome is Outcome.VERIFIED
    assert (final.result, final.exception) == (OK, None)


def test_a_retried_call_then_a_fallback(process_hook: Recorder, fake_clock: FakeClock) -> None:
    verify = fallback(value=0)(retry(max_tries=2, jitter=None)(replies(DOWN, WRONG)))
    result = verify("q")
    assert result.source == "fallback"
    assert process_hook.kinds() == [
        "attempt_started",
        "attempt_ended",
        "retry_scheduled",
        "attempt_started",
        "attempt_ended",
        "gave_up",
        "fallback_used",
        "call_ended",
    ]
    events = process_hook.calls[0][1]
    scheduled = events[2]
    assert isinstance(scheduled, RetryScheduled)
    assert (scheduled.attempt, scheduled.wait, scheduled.outcome) == (1, 1.0, Outcome.TRANSIENT)
    second = events[3]
    assert isinstance(second, AttemptStarted) and (second.attempt, second.wait_before) == (2, 1.0)
    gave_up = events[5]
    assert isinstance(gave_up, GaveUp) and gave_up.reason == "max_tries=2 reached"
    used = events[6]
    assert isinstance(used, FallbackUsed) and used.value == 0 and used.outcome is Outcome.REFUTED
    final = events[7]
    assert isinstance(final, CallEnded) and isinstance(final.result, GuardedResult)
    # The call's diagnosis stays the failure's: a fallback is never reported as verified.
    assert final.diagnosis.outcome is Outcome.REFUTED and final.exception is None


def test_a_short_circuited_call_and_the_breaker_change(
    process_hook: Recorder, fake_clock: FakeClock
) -> None:
    verify = circuit_breaker(failure_threshold=1, recovery_timeout=10)(
        replies(ConnectionError("down"))
    )
    with pytest.raises(ConnectionError):
        verify("q")
    with pytest.raises(CircuitOpen):
        verify("q")
    first = process_hook.calls[0][1]
    changed = [e for e in first if isinstance(e, BreakerChanged)]
    assert [(str(e.old), str(e.new)) for e in changed] == [("closed", "open")]
    # The refused call never starts an attempt; it ends one, short-circuited.
    assert process_hook.kinds(1) == ["attempt_ended", "call_ended"]
    final = process_hook.calls[1][1][-1]
    assert isinstance(final, CallEnded) and isinstance(final.exception, CircuitOpen)
    assert final.diagnosis.outcome is Outcome.SHORT_CIRCUITED


def test_an_alert_reaches_the_hooks(process_hook: Recorder, fake_clock: FakeClock) -> None:
    from qwed_guard import alert_on_failures

    verify = alert_on_failures(threshold=1, notify=[])(replies(DOWN))
    verify("q")
    sent = [e for e in process_hook.calls[0][1] if isinstance(e, AlertSent)]
    assert len(sent) == 1 and sent[0].alert is verify.alerts[0]


def test_observed_anywhere_in_a_stack_sees_the_whole_call_once(fake_clock: FakeClock) -> None:
    inner = Recorder()
    verify = retry(max_tries=3, jitter=None)(observed(inner)(replies(DOWN, DOWN, OK)))
    assert verify("q") is OK
    assert len(inner.calls) == 1
    assert inner.kinds().count("attempt_ended") == 3
    assert inner.kinds()[-1] == "call_ended"


def test_audited_anywhere_in_a_stack_records_every_attempt_and_the_call(
    fake_clock: FakeClock,
) -> None:
    sinks = MemorySink(), MemorySink()
    outer = audited(sink=sinks[0])(fallback(value=0)(retry(max_tries=2)(replies(DOWN, OK))))
    middle = fallback(value=0)(audited(sink=sinks[1])(retry(max_tries=2)(replies(DOWN, OK))))
    assert outer("q").verified and middle("q").verified

    def shape(sink: MemorySink) -> list[tuple[Any, ...]]:
        return [(r["event"], r["attempt"], r["outcome"], r["verified"]) for r in sink.records]

    def answered(sink: MemorySink) -> list[tuple[Any, ...]]:
        return [(a["attempt"], a["outcome"], a["verified"]) for a in attempts_of(sink.records)]

    # The failed attempt, then the call record carrying the verified attempt inline.
    assert (
        shape(sinks[0])
        == shape(sinks[1])
        == [
            ("attempt", 1, "transient", False),
            ("call", 2, "verified", True),
        ]
    )
    assert (
        answered(sinks[0]) == answered(sinks[1]) == [(1, "transient", False), (2, "verified", True)]
    )
    assert sinks[1].records[-1]["source"] == "verified"


def test_a_raising_hook_never_breaks_the_call_and_its_error_is_scrubbed(
    fake_clock: FakeClock,
) -> None:
    def broken_start(ctx: CallContext) -> None:
        raise RuntimeError(f"start failed with {CANARY}")

    def broken_watch(ctx: CallContext) -> Callable[[Event], None]:
        def watch(event: Event) -> None:
            raise ValueError(f"watch failed with {CANARY}")

        return watch

    after = Recorder()
    logged: list[str] = []
    handler = logger.add(logged.append, format="{message}")
    try:
        verify = observed(broken_start, broken_watch, after)(retry(max_tries=2)(replies(DOWN, OK)))
        assert verify("q") is OK
    finally:
        logger.remove(handler)
    # The hooks after the broken ones still saw every event.
    assert after.kinds()[-1] == "call_ended" and after.kinds().count("attempt_ended") == 2
    assert logged and all(CANARY not in line for line in logged)
    assert any("start failed" in line for line in logged)
    assert any("watch failed" in line for line in logged)


def test_an_unwritable_trail_fails_the_call_closed_even_under_fallback(
    fake_clock: FakeClock,
) -> None:
    class Full(MemorySink):
        def append(self, records: Any) -> None:
            raise OSError(28, "No space left on device")

    after = Recorder()
    verify = observed(after)(audited(sink=Full())(fallback(value=0)(replies(OK))))
    with pytest.raises(AuditError, match="not audited: OSError"):
        verify("q")
    # Other hooks still hear how the call ended.
    assert after.kinds()[-1] == "call_ended"


def test_a_hook_that_ignores_an_event_type_is_not_sent_it(fake_clock: FakeClock) -> None:
    quiet = Recorder(ignores=frozenset({AttemptStarted, RetryScheduled}))
    verify = retry(max_tries=2, jitter=None)(observed(quiet)(replies(DOWN, OK)))
    verify("q")
    assert quiet.kinds() == ["attempt_ended", "attempt_ended", "call_ended"]
    # With a second hook that wants them, both get them: `ignores` only skips building.
    loud = Recorder()
    verify = retry(max_tries=2, jitter=None)(observed(quiet, loud)(replies(DOWN, OK)))
    verify("q")
    assert loud.kinds().count("attempt_started") == 2
    assert "retry_scheduled" in loud.kinds()


def test_a_hook_may_sit_a_call_out(fake_clock: FakeClock) -> None:
    seen: list[str] = []

    def only_slow(ctx: CallContext) -> Callable[[Event], None] | None:
        if ctx.args != ("slow",):
            return None
        return lambda event: seen.append(event.kind)

    verify = observed(only_slow)(replies(OK, OK))
    verify("fast"), verify("slow")
    assert seen == ["attempt_started", "attempt_ended", "call_ended"]


def test_a_lazy_hook_is_made_once_on_the_first_call_under_8_threads() -> None:
    made: list[Recorder] = []
    barrier = threading.Barrier(8)

    def make() -> Recorder:
        recorder = Recorder()
        made.append(recorder)
        return recorder

    hook = lazy(make)
    verify = observed(hook)(lambda q: (barrier.wait(), OK)[1])
    assert made == []  # nothing made before a call
    threads = [threading.Thread(target=verify, args=("q",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(made[0].calls) == 8


async def test_100_tasks_each_get_their_own_events(fake_clock: FakeClock) -> None:
    recorder = Recorder()

    @observed(recorder)
    @retry(max_tries=2, jitter=None)
    async def verify(query: str) -> Result:
        await asyncio.sleep(0)
        return DOWN if query.endswith("-0") else OK

    results = await asyncio.gather(
        *(verify(f"q{i}-{i % 2}") for i in range(100)), return_exceptions=True
    )
    assert sum(isinstance(r, VerificationFailed) for r in results) == 50
    assert len(recorder.calls) == 100
    for ctx, events in recorder.calls:
        final = events[-1]
        assert isinstance(final, CallEnded)
        expected = 2 if ctx.args[0].endswith("-0") else 1
        assert [e.kind for e in events].count("attempt_ended") == expected
        assert all(e.attempt <= expected for e in events)


def test_a_policy_with_hooks_keeps_its_hash_and_watches_its_functions(
    fake_clock: FakeClock,
) -> None:
    policy = Policy.from_dict({"retry": {"max_tries": 2}, "fallback": {"value": 0}})
    recorder = Recorder()
    hooked = policy.with_hooks(recorder)
    assert hooked == policy and hooked.hash == policy.hash and hooked.hooks == (recorder,)
    verify = hooked(replies(DOWN, OK))
    assert verify("q").verified
    assert recorder.kinds().count("attempt_ended") == 2
    assert recorder.calls[0][0].policy_hash == policy.hash
    with pytest.raises(TypeError, match="a hook is a callable"):
        policy.with_hooks("not a hook")  # type: ignore[arg-type]


def test_remove_hook_stops_it(fake_clock: FakeClock) -> None:
    recorder = Recorder()
    add_hook(recorder)
    verify = replies(OK, OK)
    guarded = retry(max_tries=1)(verify)
    guarded("a")
    remove_hook(recorder)
    guarded("b")
    assert [ctx.args for ctx, _ in recorder.calls] == [("a",)]
