"""@circuit_breaker: each transition under a fake clock, counting rules, keys, events, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from loguru import logger

from qwed_guard import GuardedResult, VerificationFailed, fallback, retry
from qwed_guard.breaker import (
    BreakerState,
    CircuitBreakerLayer,
    CircuitOpen,
    circuit_breaker,
)
from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.errors import ParameterError, QwedGuardError
from qwed_guard.hooks import AlertSent, BreakerChanged, Event
from qwed_guard.layer import observed
from qwed_guard.outcomes import Outcome
from qwed_guard.state import MemoryStore

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass
class Result:
    """Shaped like QWED's VerificationResult, as far as the classifier looks."""

    verified: bool
    value: Any = None
    error: str | None = None


class Provider:
    """A scripted provider: each call takes the next step ("ok", "fail", "refuted", "denied")."""

    def __init__(self, *steps: str) -> None:
        self.steps = list(steps)
        self.calls = 0

    def __call__(self, *args: Any) -> Result:
        self.calls += 1
        step = self.steps.pop(0) if self.steps else "ok"
        if step == "fail":
            raise ConnectionError("provider down")
        if step == "denied":
            return Result(False, error="LLM call failed: Error code: 401 - Incorrect API key")
        if step == "refuted":
            return Result(False)
        return Result(True, 42)


class Capture:
    """A hook that keeps each call's events, as the audit trail receives them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, ctx: CallContext) -> Callable[[Event], None]:
        return self.events.append

    def changes(self) -> list[tuple[str, str]]:
        return [(str(e.old), str(e.new)) for e in self.events if isinstance(e, BreakerChanged)]


def call(fn: Callable[..., Any]) -> str:
    """Call and name what happened: "ok", "failed" or "short_circuited"."""
    try:
        fn()
    except CircuitOpen:
        return "short_circuited"
    except ConnectionError:
        return "failed"
    return "ok"


def test_closed_until_threshold_consecutive_failures_then_open(fake_clock: FakeClock) -> None:
    provider = Provider("fail", "fail", "ok", "fail", "fail", "fail", "ok")
    fn = circuit_breaker(failure_threshold=3, recovery_timeout=10)(provider)

    # A success in between resets the count: two, then three in a row.
    assert [call(fn) for _ in range(5)] == ["failed", "failed", "ok", "failed", "failed"]
    assert fn.breaker.state is CLOSED
    assert fn.breaker.consecutive_failures == 2
    assert call(fn) == "failed"
    assert fn.breaker.state is OPEN
    assert fn.breaker.opened == 1

    # Open: no call is made.
    calls = provider.calls
    assert [call(fn) for _ in range(4)] == ["short_circuited"] * 4
    assert provider.calls == calls
    assert fn.breaker.short_circuited == 4
    assert (fn.breaker.failures, fn.breaker.successes) == (5, 1)


def test_circuit_open_error_says_when_probes_resume(fake_clock: FakeClock) -> None:
    fn = circuit_breaker(failure_threshold=1, recovery_timeout=10)(Provider("fail"))
    call(fn)
    fake_clock.advance(4)
    with pytest.raises(CircuitOpen) as caught:
        fn()
    refusal = caught.value
    assert isinstance(refusal, QwedGuardError)
    assert refusal.outcome is Outcome.SHORT_CIRCUITED
    assert refusal.retry_in == pytest.approx(6)
    assert refusal.state is OPEN
    assert refusal.error == f"circuit breaker {fn.breaker.key!r} is open; probing again in 6 s"
    assert fn.breaker.retry_in == pytest.approx(6)


def test_open_to_half_open_only_after_recovery_timeout(fake_clock: FakeClock) -> None:
    provider = Provider("fail")
    fn = circuit_breaker(failure_threshold=1, recovery_timeout=10)(provider)
    call(fn)
    fake_clock.advance(9.999)
    assert call(fn) == "short_circuited"
    assert provider.calls == 1
    fake_clock.advance(0.001)
    assert call(fn) == "ok"  # the probe got through and succeeded
    assert provider.calls == 2
    assert fn.breaker.state is CLOSED


def test_half_open_closes_after_success_threshold(fake_clock: FakeClock) -> None:
    capture = Capture()
    provider = Provider("fail")
    fn = observed(capture)(
        circuit_breaker(failure_threshold=1, recovery_timeout=5, success_threshold=2)(provider)
    )
    call(fn)
    fake_clock.advance(5)
    assert call(fn) == "ok"
    assert fn.breaker.state is HALF_OPEN  # one success of two
    assert call(fn) == "ok"
    assert fn.breaker.state is CLOSED
    assert capture.changes() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_half_open_reopens_on_a_failed_probe_and_restarts_the_timer(
    fake_clock: FakeClock,
) -> None:
    capture = Capture()
    provider = Provider("fail", "fail")
    fn = observed(capture)(circuit_breaker(failure_threshold=1, recovery_timeout=5)(provider))
    call(fn)
    fake_clock.advance(5)
    assert call(fn) == "failed"  # the probe
    assert fn.breaker.state is OPEN
    assert fn.breaker.opened == 2
    fake_clock.advance(4.9)
    assert call(fn) == "short_circuited"  # the timer restarted at the failed probe
    fake_clock.advance(0.1)
    assert call(fn) == "ok"
    assert capture.changes() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    # The event says which breaker changed and why.
    opened = next(e for e in capture.events if isinstance(e, BreakerChanged))
    assert opened.key == fn.breaker.key
    assert opened.new is OPEN
    assert "1 consecutive failures" in opened.reason
    assert "provider down" in opened.reason


def test_counting_starts_afresh_after_closing(fake_clock: FakeClock) -> None:
    fn = circuit_breaker(failure_threshold=2, recovery_timeout=1)(Provider("fail", "fail", "ok"))
    call(fn), call(fn)
    fake_clock.advance(1)
    assert call(fn) == "ok"
    assert fn.breaker.state is CLOSED
    assert fn.breaker.consecutive_failures == 0


def test_failure_rate_over_a_window_catches_flapping(fake_clock: FakeClock) -> None:
    flapping = ["fail", "ok"] * 10
    consecutive_only = circuit_breaker(failure_threshold=2)(Provider(*flapping))
    rate = circuit_breaker(failure_threshold=None, failure_rate=0.5, window=6, min_calls=6)(
        Provider(*flapping)
    )
    for _ in range(5):
        call(consecutive_only), call(rate)
    assert consecutive_only.breaker.state is CLOSED
    assert rate.breaker.state is CLOSED  # only 5 calls: below min_calls
    call(consecutive_only), call(rate)
    assert rate.breaker.state is OPEN  # 3 of the last 6 failed
    for _ in range(14):
        call(consecutive_only)
    assert consecutive_only.breaker.state is CLOSED
    assert consecutive_only.breaker.opened == 0


def test_the_count_rule_applies_unless_only_a_rate_is_given(fake_clock: FakeClock) -> None:
    steps = ["ok"] * 10 + ["fail"] * 5
    default = circuit_breaker(recovery_timeout=10)(Provider(*steps))
    rate_only = circuit_breaker(failure_rate=0.8, window=20, min_calls=10)(Provider(*steps))
    both = circuit_breaker(failure_threshold=5, failure_rate=0.8)(Provider(*steps))
    for _ in steps:
        call(default), call(rate_only), call(both)
    assert default.breaker.state is OPEN  # 5 in a row, the rule when none is given
    assert both.breaker.state is OPEN
    assert rate_only.breaker.state is CLOSED  # 5 of the last 15 failed: 33% < 80%
    assert "failure_threshold" not in rate_only.guard_layers[0].describe()


def test_failure_rate_only_looks_at_the_window(fake_clock: FakeClock) -> None:
    steps = ["ok"] * 6 + ["fail"] * 2
    fn = circuit_breaker(failure_rate=0.5, window=4, min_calls=4, failure_threshold=None)(
        Provider(*steps)
    )
    for _ in range(7):
        call(fn)
    assert fn.breaker.state is CLOSED  # last four: ok, ok, ok, fail
    call(fn)
    # Last four: ok, ok, fail, fail. Over all eight calls the rate would be 25%.
    assert fn.breaker.state is OPEN


def test_refuted_answers_do_not_open_the_breaker_unless_asked(fake_clock: FakeClock) -> None:
    default = circuit_breaker(failure_threshold=2)(Provider("refuted", "refuted", "refuted"))
    strict = circuit_breaker(failure_threshold=2, failure_on=["transient", "refuted"])(
        Provider("refuted", "refuted")
    )
    for _ in range(3):
        default()
    strict(), strict()
    assert default.breaker.state is CLOSED
    assert (default.breaker.failures, default.breaker.successes) == (0, 3)
    assert strict.breaker.state is OPEN


def test_permanent_failures_count_by_default(fake_clock: FakeClock) -> None:
    fn = circuit_breaker(failure_threshold=2)(Provider("denied", "denied"))
    fn(), fn()
    assert fn.breaker.state is OPEN
    transient_only = circuit_breaker(failure_threshold=2, failure_on="transient")(
        Provider("denied", "denied")
    )
    transient_only(), transient_only()
    assert transient_only.breaker.state is CLOSED


def test_retry_does_not_retry_a_short_circuit(fake_clock: FakeClock) -> None:
    with pytest.raises(ParameterError, match="short_circuited outcomes are never retried"):
        retry(retry_on=["transient", "short_circuited"])
    provider = Provider("fail", "fail", "fail", "fail")
    fn = retry(max_tries=5, jitter=None)(
        circuit_breaker(failure_threshold=2, recovery_timeout=30)(provider)
    )
    with pytest.raises(VerificationFailed) as caught:
        fn()
    failure = caught.value
    # Two real attempts opened the breaker; the third was refused and retry stopped there.
    assert [a.outcome for a in failure.attempts] == [
        Outcome.TRANSIENT,
        Outcome.TRANSIENT,
        Outcome.SHORT_CIRCUITED,
    ]
    assert failure.outcome is Outcome.SHORT_CIRCUITED
    assert failure.reason == "short_circuited outcomes are not retried"
    assert fake_clock.waits == [1.0, 2.0]
    assert provider.calls == 2

    fake_clock.waits.clear()
    with pytest.raises(VerificationFailed) as caught:
        fn()
    assert [a.outcome for a in caught.value.attempts] == [Outcome.SHORT_CIRCUITED]
    assert fake_clock.waits == []
    assert provider.calls == 2


def test_fallback_answers_a_short_circuited_call(fake_clock: FakeClock) -> None:
    provider = Provider("fail")
    fn = fallback(value=100.0)(
        retry(max_tries=3)(circuit_breaker(failure_threshold=1, recovery_timeout=60)(provider))
    )
    first = fn()  # the failure opens the breaker; the retry is refused
    assert (first.source, first.attempts, first.outcome) == (
        "fallback",
        2,
        Outcome.SHORT_CIRCUITED,
    )
    result = fn()
    assert isinstance(result, GuardedResult)
    assert (result.source, result.value, result.verified) == ("fallback", 100.0, False)
    assert (result.attempts, result.outcome) == (1, Outcome.SHORT_CIRCUITED)
    assert result.reason is not None
    assert result.reason.startswith("short_circuited: circuit breaker")
    assert provider.calls == 1


def test_breaker_state_is_per_function_by_default(fake_clock: FakeClock) -> None:
    def make() -> Callable[[], str]:
        @circuit_breaker(failure_threshold=1)
        def ask() -> str:
            raise ConnectionError("down")

        return ask

    first, second = make(), make()  # one qualified name, two functions
    # The second live function of a name gets `name#2`: in order, so stable across processes.
    assert first.breaker.key.endswith("make.<locals>.ask")
    assert second.breaker.key == first.breaker.key + "#2"
    call(first)
    assert first.breaker.state is OPEN
    assert second.breaker.state is CLOSED


def test_a_shared_key_shares_one_breaker(fake_clock: FakeClock) -> None:
    key = "test-shared-provider"
    first = circuit_breaker(failure_threshold=2, recovery_timeout=5, key=key)(Provider("fail"))
    second_provider = Provider("fail")
    second = circuit_breaker(failure_threshold=2, recovery_timeout=5, key=key)(second_provider)
    try:
        call(first), call(second)
        assert first.breaker.state is second.breaker.state is OPEN
        assert call(second) == "short_circuited"
        fake_clock.advance(5)
        assert call(first) == "ok"  # one probe through either function closes both
        assert second.breaker.state is CLOSED
        assert first.breaker.key == second.breaker.key == key
    finally:
        first.breaker.reset()


def test_an_explicit_store_holds_the_state(fake_clock: FakeClock) -> None:
    store = MemoryStore()
    a = circuit_breaker(failure_threshold=1, state=store, key="llm")(Provider("fail"))
    b = circuit_breaker(failure_threshold=1, state=store, key="llm")(Provider())
    call(a)
    assert call(b) == "short_circuited"
    saved = store.get("breaker:llm")
    assert saved is not None
    assert saved["state"] == "open"
    assert saved["short_circuited"] == 1


def test_reset_closes_and_clears(fake_clock: FakeClock) -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO", format="{message}")
    try:
        fn = circuit_breaker(failure_threshold=1)(Provider("fail"))
        call(fn), call(fn)
        fn.breaker.reset()
    finally:
        logger.remove(sink)
    assert fn.breaker.snapshot() == {
        "key": fn.breaker.key,
        "state": "closed",
        "since": None,
        "reason": None,
        "consecutive_failures": 0,
        "probes_in_flight": 0,
        "failures": 0,
        "successes": 0,
        "short_circuited": 0,
        "opened": 0,
    }
    assert call(fn) == "ok"
    name = fn.breaker.key
    assert messages[0].startswith(f"circuit breaker {name}: closed -> open (1 consecutive")
    assert messages[1].strip() == f"circuit breaker {name}: open -> closed (reset())"


def test_a_late_result_from_before_the_breaker_opened_changes_nothing(
    fake_clock: FakeClock,
) -> None:
    key = "test-late-result"
    other = circuit_breaker(failure_threshold=3, recovery_timeout=5, key=key)(
        Provider("fail", "fail", "fail")
    )

    def slow() -> None:
        # While this call is in flight the breaker opens, probes and closes again.
        for _ in range(3):
            call(other)
        fake_clock.advance(5)
        assert call(other) == "ok"
        raise ConnectionError("late failure")

    fn = circuit_breaker(failure_threshold=3, recovery_timeout=5, key=key)(slow)
    try:
        assert call(fn) == "failed"
        assert fn.breaker.state is CLOSED
        assert fn.breaker.consecutive_failures == 0  # not counted toward the new period
        assert fn.breaker.failures == 4  # but still in the totals
    finally:
        fn.breaker.reset()


def test_methods_expose_their_breaker(fake_clock: FakeClock) -> None:
    class Client:
        @circuit_breaker(failure_threshold=1)
        def ask(self) -> str:
            raise ConnectionError("down")

    client = Client()
    call(client.ask)
    assert client.ask.breaker.state is OPEN


async def test_async_functions_open_and_short_circuit(fake_clock: FakeClock) -> None:
    calls = 0

    @circuit_breaker(failure_threshold=2, recovery_timeout=3)
    async def ask() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("down")
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await ask()
    with pytest.raises(CircuitOpen):
        await ask()
    assert calls == 2
    fake_clock.advance(3)
    assert await ask() == "ok"
    assert ask.breaker.state is CLOSED


async def test_a_cancelled_probe_frees_its_slot_without_counting(fake_clock: FakeClock) -> None:
    started = asyncio.Event()
    mode = "fail"

    @circuit_breaker(failure_threshold=1, recovery_timeout=1)
    async def ask() -> str:
        if mode == "fail":
            raise ConnectionError("down")
        if mode == "hang":
            started.set()
            await asyncio.Event().wait()
        return "ok"

    with pytest.raises(ConnectionError):
        await ask()
    fake_clock.advance(1)
    mode = "hang"
    probe = asyncio.create_task(ask())
    await started.wait()
    with pytest.raises(CircuitOpen):
        await ask()  # the only probe slot is taken
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert ask.breaker.state is HALF_OPEN
    assert (ask.breaker.failures, ask.breaker.successes) == (1, 0)
    mode = "ok"
    assert await ask() == "ok"
    assert ask.breaker.state is CLOSED


def test_describe_lists_the_rules() -> None:
    layer = CircuitBreakerLayer(failure_threshold=4, failure_rate=0.5, recovery_timeout=20)
    assert layer.describe() == (
        "circuit_breaker(failure_threshold=4; failure_rate=0.5 of 20 (min 10); "
        "recovery_timeout=20 s; half_open_probes=1; success_threshold=1; "
        "failure_on=permanent,transient)"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold: must be >= 1, got 0"),
        ({"failure_threshold": 2.5}, "failure_threshold: must be an int, got float"),
        ({"half_open_probes": 0}, "half_open_probes: must be >= 1, got 0"),
        ({"success_threshold": -1}, "success_threshold: must be >= 1, got -1"),
        ({"window": 0, "failure_rate": 0.5}, "window: must be >= 1, got 0"),
        ({"min_calls": 0}, "min_calls: must be >= 1, got 0"),
        ({"failure_rate": 0}, "failure_rate: must be in (0, 1], got 0"),
        ({"failure_rate": 1.5}, "failure_rate: must be in (0, 1], got 1.5"),
        ({"failure_rate": -0.1}, "failure_rate: must be in (0, 1], got -0.1"),
        ({"failure_rate": "half"}, "failure_rate: must be a number, got str"),
        (
            {"failure_rate": 0.5, "window": 5, "min_calls": 6},
            "min_calls: must be <= window (5), got 6",
        ),
        ({"recovery_timeout": -1}, "recovery_timeout: must be >= 0, got -1"),
        ({"recovery_timeout": "30s"}, "recovery_timeout: must be a number of seconds, got str"),
        ({"failure_on": ["verified"]}, "failure_on: verified cannot count as a failure"),
        ({"failure_on": ["short_circuited"]}, "failure_on: short_circuited cannot count"),
        ({"failure_on": ["boom"]}, "failure_on: unknown outcome 'boom'"),
        ({"failure_on": []}, "failure_on: needs at least one outcome"),
        ({"key": ""}, "key: must be a non-empty string"),
        ({"state": "etcd://localhost"}, "state: unsupported store URL"),
        ({"state": 3}, "state: expected a URL or a StateStore, got int"),
    ],
)
def test_bad_parameters_are_refused_at_decoration(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        circuit_breaker(**params)
    assert str(caught.value).startswith(message)
    assert caught.value.param == message.split(":")[0]


def test_notify_alerts_once_when_opened_and_once_when_closed(fake_clock: FakeClock) -> None:
    from qwed_guard.alerts import Alert, flush

    received: list[Alert] = []
    capture = Capture()
    provider = Provider("fail", "fail", "fail", "ok")
    fn = observed(capture)(
        circuit_breaker(failure_threshold=2, recovery_timeout=5, notify=[received.append])(provider)
    )
    call(fn), call(fn)  # opens: triggered
    fake_clock.advance(5)
    call(fn)  # the probe fails and re-opens: the same outage, no new alert
    fake_clock.advance(5)
    call(fn)  # the probe succeeds: resolved
    assert flush(5.0)
    assert [a.kind for a in received] == ["triggered", "resolved"]
    assert list(fn.breaker.alerts) == received
    triggered, resolved = received
    key = fn.breaker.key
    assert triggered.dedup_key == resolved.dedup_key == f"qwed-guard:breaker:{key}"
    assert triggered.message == (
        f"{key}: circuit breaker opened after 2 consecutive failures (threshold 2); "
        "last: ConnectionError: provider down; calls fail fast for 5 s, then probe"
    )
    assert (triggered.failures, triggered.outcome, triggered.reason) == (
        2,
        Outcome.TRANSIENT,
        "consecutive",
    )
    assert triggered.error == "ConnectionError: provider down"
    assert resolved.message == f"{key}: circuit breaker closed (1 probe call succeeded)"
    assert [e.alert.kind for e in capture.events if isinstance(e, AlertSent)] == [
        "triggered",
        "resolved",
    ]


def test_reset_of_an_open_breaker_resolves_its_alert(fake_clock: FakeClock) -> None:
    from qwed_guard.alerts import Alert, flush

    received: list[Alert] = []
    fn = circuit_breaker(failure_threshold=1, notify=[received.append])(Provider("fail"))
    call(fn)
    fn.breaker.reset()
    fn.breaker.reset()  # already closed: nothing more to say
    assert flush(5.0)
    assert [(a.kind, a.message) for a in received] == [
        ("triggered", received[0].message),
        ("resolved", f"{fn.breaker.key}: circuit breaker closed (reset())"),
    ]


def test_notify_is_checked_at_decoration() -> None:
    with pytest.raises(ParameterError, match=r"notify: .*unknown channel 'pager'"):
        circuit_breaker(notify=["pager"])


def test_successes_counted_beside_the_state_add_up_and_reset_clears_them(
    fake_clock: FakeClock,
) -> None:
    # A healthy breaker's successes go to a counter beside its state (nothing is rewritten);
    # they must still show in every count, and reset() must clear them too.
    store = MemoryStore()
    fn = circuit_breaker(failure_threshold=3, state=store, key="counted")(
        Provider("ok", "ok", "fail", "ok", "fail", "fail", "ok")
    )
    outcomes = [call(fn) for _ in range(9)]
    assert outcomes == ["ok", "ok", "failed", "ok", "failed", "failed", "ok", "ok", "ok"]
    assert (fn.breaker.failures, fn.breaker.successes) == (3, 6)
    assert fn.breaker.consecutive_failures == 0  # the success after two failures ended the streak
    assert fn.breaker.snapshot()["successes"] == 6
    fn.breaker.reset()
    assert (fn.breaker.failures, fn.breaker.successes) == (0, 0)
    assert call(fn) == "ok"
    assert fn.breaker.successes == 1


def test_counts_from_many_threads_lose_nothing(fake_clock: FakeClock) -> None:
    import threading

    # Every third call fails, never three in a row per thread: the breaker stays closed
    # unless interleaving strings failures together, which a high threshold rules out.
    threads, calls = 8, 300
    providers = [Provider(*(["ok", "ok", "fail"] * (calls // 3))) for _ in range(threads)]
    guarded = [
        circuit_breaker(failure_threshold=10_000, key="threads")(provider) for provider in providers
    ]
    start = threading.Barrier(threads)

    def work(fn: Callable[..., Any]) -> None:
        start.wait()
        for _ in range(calls):
            call(fn)

    workers = [threading.Thread(target=work, args=(fn,)) for fn in guarded]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    breaker = guarded[0].breaker
    assert breaker.state is CLOSED
    assert (breaker.failures, breaker.successes) == (threads * calls // 3, threads * calls * 2 // 3)
