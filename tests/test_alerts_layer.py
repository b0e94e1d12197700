"""@alert_on_failures: when it alerts, what an alert says, and bad arguments (fake clock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qwed_guard.alerts import Alert, AlertLayer, alert_on_failures
from qwed_guard.alerts.delivery import shutdown
from qwed_guard.alerts.layer import DEFAULT_STORE, Rules, decide
from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.errors import ParameterError, VerificationFailed
from qwed_guard.fallback import fallback
from qwed_guard.hooks import AlertSent, Event
from qwed_guard.layer import Layer
from qwed_guard.outcomes import Outcome
from qwed_guard.retry import retry
from qwed_guard.state import MemoryStore


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    DEFAULT_STORE.clear()
    yield
    shutdown(2.0)
    DEFAULT_STORE.clear()


class Answer:
    """A stand-in for QWED's VerificationResult."""

    def __init__(self, verified: bool, error: str | None = None) -> None:
        self.verified = verified
        self.value = "4" if verified else None
        self.error = error


OK = Answer(True)
DOWN = Answer(False, "LLM call failed: Error code: 503 - Service Unavailable")
BAD_KEY = Answer(
    False, "LLM call failed: Error code: 401 - Incorrect API key provided: sk-proj-abcd1234"
)


def scripted(replies: list[Any]) -> Callable[[], Any]:
    """A function that returns (or raises) the next scripted reply on each call."""
    queue = list(replies)

    def call() -> Any:
        reply = queue.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return call


def run(fn: Callable[[], Any], times: int = 1) -> None:
    for _ in range(times):
        with contextlib.suppress(Exception):
            fn()


def alerting(**params: Any) -> tuple[Callable[[Any], Any], list[Alert]]:
    """A function returning its argument, decorated, and the list its callable channel fills."""
    received: list[Alert] = []
    params.setdefault("notify", [received.append])

    @alert_on_failures(**params)
    def verify(reply: Any) -> Any:
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return verify, received


def kinds(fn: Any) -> list[str]:
    return [alert.kind for alert in fn.alerts]


# ---------------------------------------------------------------- threshold, repeat, resolve


def test_threshold_minus_one_failures_send_nothing_the_nth_sends_one(
    fake_clock: FakeClock,
) -> None:
    verify, received = alerting(threshold=5)
    for _ in range(4):
        assert verify(DOWN) is DOWN  # results pass through unchanged
    assert len(verify.alerts) == 0
    verify(DOWN)
    assert kinds(verify) == ["triggered"]
    alert = verify.alerts[-1]
    assert alert.failures == 5 and alert.outcome is Outcome.TRANSIENT
    assert alert.reason == "consecutive"
    assert "5 consecutive failures" in alert.message
    verify.find_layer("alert_on_failures").flush(2.0)
    assert received == [alert]


def test_failures_inside_repeat_interval_send_nothing_after_it_one_repeat(
    fake_clock: FakeClock,
) -> None:
    verify, _ = alerting(threshold=3, repeat_interval=600)
    run(lambda: verify(DOWN), 3)
    fake_clock.advance(599)
    run(lambda: verify(DOWN), 10)
    assert kinds(verify) == ["triggered"]
    fake_clock.advance(1)
    verify(DOWN)
    verify(DOWN)
    assert kinds(verify) == ["triggered", "repeat"]
    repeat = verify.alerts[-1]
    assert repeat.failures == 14  # the updated count, not the one at the trigger
    assert "still failing since 2026-01-01T00:00:00.000Z" in repeat.message
    fake_clock.advance(600)
    verify(DOWN)
    assert kinds(verify) == ["triggered", "repeat", "repeat"]


def test_repeat_interval_none_never_repeats(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1, repeat_interval=None)
    for _ in range(5):
        verify(DOWN)
        fake_clock.advance(10_000)
    assert kinds(verify) == ["triggered"]


def test_one_success_sends_exactly_one_resolved(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=2)
    run(lambda: verify(DOWN), 7)
    assert verify(OK) is OK
    verify(OK)
    verify(OK)
    assert kinds(verify) == ["triggered", "resolved"]
    resolved = verify.alerts[-1]
    assert resolved.failures == 7 and resolved.outcome is Outcome.VERIFIED
    assert resolved.error is None
    assert resolved.message.endswith("recovered after 7 consecutive failures")
    assert resolved.dedup_key == verify.alerts[0].dedup_key
    # Healthy again: nothing is stored, and the next streak alerts afresh.
    assert verify.find_layer("alert_on_failures").state() is None
    run(lambda: verify(DOWN), 2)
    assert kinds(verify) == ["triggered", "resolved", "triggered"]


def test_a_success_resets_the_count(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=3)
    for _ in range(5):
        verify(DOWN)
        verify(DOWN)
        verify(OK)
    assert len(verify.alerts) == 0


def test_resolve_false_sends_no_resolved_but_rearms(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1, resolve=False)
    verify(DOWN)
    verify(OK)
    verify(DOWN)
    assert kinds(verify) == ["triggered", "triggered"]


def test_exceptions_count_as_failures_and_pass_through_unchanged(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=2)
    error = TimeoutError("read timed out")
    for _ in range(2):
        with pytest.raises(TimeoutError) as caught:
            verify(error)
        assert caught.value is error
    assert kinds(verify) == ["triggered"]
    assert verify.alerts[0].error == "TimeoutError: read timed out"
    assert verify.alerts[0].outcome is Outcome.TRANSIENT


def test_interrupts_are_not_counted(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1)
    with pytest.raises(KeyboardInterrupt):
        verify(KeyboardInterrupt())
    assert len(verify.alerts) == 0


def test_plain_return_values_are_successes(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1)
    assert verify(42) == 42
    assert len(verify.alerts) == 0


# ---------------------------------------------------------------- permanent and rate


def test_permanent_outcome_alerts_at_once_with_the_key_scrubbed(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=5)
    verify(BAD_KEY)
    assert kinds(verify) == ["triggered"]
    alert = verify.alerts[0]
    assert alert.reason == "permanent" and alert.outcome is Outcome.PERMANENT
    assert alert.failures == 1
    assert "abcd1234" not in alert.error and "abcd1234" not in alert.message
    assert "sk-***" in alert.error
    assert "permanent failure" in alert.message


def test_permanent_alert_can_be_turned_off(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=3, alert_on_permanent=False)
    verify(BAD_KEY)
    verify(BAD_KEY)
    assert len(verify.alerts) == 0
    verify(BAD_KEY)
    assert [a.reason for a in verify.alerts] == ["consecutive"]


def test_flapping_never_reaches_five_in_a_row(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=5)
    for _ in range(50):
        verify(DOWN)
        verify(DOWN)
        verify(OK)
    assert len(verify.alerts) == 0


def test_flapping_trips_the_rate_window_and_resolves_when_the_rate_drops(
    fake_clock: FakeClock,
) -> None:
    verify, _ = alerting(threshold=5, rate_threshold=0.5, rate_window=20, repeat_interval=300)
    replies = [DOWN, DOWN, OK] * 6  # 12 of 18 failed: not yet a full window
    for reply in replies:
        verify(reply)
    assert len(verify.alerts) == 0
    verify(DOWN)  # 19 calls
    verify(DOWN)  # 20 calls, 14 failed: 70%
    assert kinds(verify) == ["triggered"]
    alert = verify.alerts[0]
    assert alert.reason == "rate" and alert.failure_rate == pytest.approx(0.7)
    assert "70% of the last 20 calls failed (threshold 50%)" in alert.message
    # Still flapping: successes do not resolve a rate alert while the rate stays high.
    for reply in [OK, DOWN, DOWN] * 3:
        verify(reply)
    assert kinds(verify) == ["triggered"]
    fake_clock.advance(300)
    verify(DOWN)
    assert kinds(verify) == ["triggered", "repeat"]
    # Recovery: successes bring the rate under 50%, and exactly one resolved goes out.
    for _ in range(15):
        verify(OK)
    assert kinds(verify) == ["triggered", "repeat", "resolved"]
    assert verify.alerts[-1].failure_rate is not None
    assert verify.alerts[-1].failure_rate < 0.5


def test_min_calls_lets_the_rate_trip_before_the_window_is_full(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=5, rate_threshold=0.5, rate_window=20, min_calls=4)
    for reply in [OK, DOWN, OK, DOWN]:
        verify(reply)
    assert [a.reason for a in verify.alerts] == ["rate"]


# ---------------------------------------------------------------- keys, state, history, events


def test_key_defaults_to_the_qualified_name_and_is_stable(fake_clock: FakeClock) -> None:
    import gc

    # Functions of the same name from earlier tests may survive in a traceback's reference
    # cycle until the collector runs; while alive they hold `name`, and this one gets name#2.
    gc.collect()
    verify, _ = alerting(threshold=1)
    verify(DOWN)
    alert = verify.alerts[0]
    expected = f"{__name__}.alerting.<locals>.verify"
    assert alert.key == alert.function == expected
    assert alert.dedup_key == f"qwed-guard:{expected}"


def test_one_decorator_on_two_functions_keeps_their_counts_apart(fake_clock: FakeClock) -> None:
    decorate = alert_on_failures(threshold=2, notify=[])

    @decorate
    def first() -> Any:
        return DOWN

    @decorate
    def second() -> Any:
        return DOWN

    first()
    second()
    assert len(first.alerts) == len(second.alerts) == 0
    first()
    assert kinds(first) == ["triggered"] and len(second.alerts) == 0


def test_a_shared_key_groups_functions(fake_clock: FakeClock) -> None:
    @alert_on_failures(threshold=3, key="llm-provider", notify=[])
    def ask() -> Any:
        return DOWN

    @alert_on_failures(threshold=3, key="llm-provider", notify=[])
    def check() -> Any:
        return DOWN

    ask()
    check()
    ask()
    assert kinds(ask) == ["triggered"] and len(check.alerts) == 0
    assert ask.alerts[0].key == "llm-provider"
    assert ask.alerts[0].dedup_key == "qwed-guard:llm-provider"
    assert ask.alerts[0].function.endswith("ask")


def test_state_lives_in_the_given_store_as_json(fake_clock: FakeClock) -> None:
    store = MemoryStore()
    verify, _ = alerting(threshold=2, state=store, key="svc", rate_threshold=0.5, rate_window=4)
    verify(DOWN)
    verify(DOWN)
    state = store.get("alerts:svc")
    assert state is not None
    assert json.loads(json.dumps(state)) == state
    assert state["open"] is True and state["failures"] == 2 and state["window"] == [1, 1]
    assert state["last_sent"] == fake_clock.wall()
    assert DEFAULT_STORE.get("alerts:svc") is None


def test_a_second_layer_on_the_same_store_continues_the_count() -> None:
    """What a shared store gives many processes: the count survives a new decorator."""
    store = MemoryStore()
    first, _ = alerting(threshold=3, key="svc", state=store)
    first(DOWN)
    first(DOWN)
    second, _ = alerting(threshold=3, key="svc", state=store)
    second(DOWN)
    assert kinds(second) == ["triggered"]
    second(DOWN)
    third, _ = alerting(threshold=3, key="svc", state=store)
    third(OK)
    assert kinds(third) == ["resolved"]


def test_alerts_are_events_on_the_call_context(fake_clock: FakeClock) -> None:
    seen: list[Event] = []

    class Stamp(Layer):
        kind = "stamp"

        def enter(self, ctx: CallContext) -> None:
            ctx.policy_hash = "ph-123"

    from qwed_guard.layer import guard, observed

    verify, _ = alerting(threshold=1, notify=[])
    listened = observed(lambda ctx: seen.append)(guard(verify, Stamp()))
    listened(DOWN)
    sent = [event for event in seen if isinstance(event, AlertSent)]
    assert len(sent) == 1
    assert sent[0].alert is verify.alerts[0]
    assert verify.alerts[0].policy_hash == "ph-123"


def test_history_is_bounded_and_most_recent_last(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1, repeat_interval=0, history_size=3)
    for _ in range(5):
        verify(DOWN)
    assert len(verify.alerts) == 3
    assert [a.failures for a in verify.alerts] == [3, 4, 5]
    assert verify.alerts[-1].failures == 5
    assert verify.alerts[1:] == list(verify.alerts)[1:]


def test_alert_record_is_frozen_and_serialises(fake_clock: FakeClock) -> None:
    verify, _ = alerting(threshold=1)
    verify(DOWN)
    alert = verify.alerts[0]
    with pytest.raises(AttributeError):
        alert.kind = "resolved"  # type: ignore[misc]
    data = alert.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["outcome"] == "transient"
    assert data["timestamp"] == "2026-01-01T00:00:00.000Z"


def test_async_functions_are_counted(fake_clock: FakeClock) -> None:
    @alert_on_failures(threshold=2, notify=[])
    async def verify(reply: Any) -> Any:
        await asyncio.sleep(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def main() -> None:
        assert await verify(DOWN) is DOWN
        with pytest.raises(ConnectionError):
            await verify(ConnectionError("refused"))
        assert await verify(OK) is OK

    asyncio.run(main())
    assert kinds(verify) == ["triggered", "resolved"]


def test_a_broken_store_never_breaks_the_call(fake_clock: FakeClock) -> None:
    class Broken(MemoryStore):
        def update(self, key: str, change: Any, *, ttl: float | None = None) -> Any:
            raise RuntimeError("store unreachable")

    verify, _ = alerting(threshold=1, state=Broken())
    assert verify(DOWN) is DOWN
    assert verify(OK) is OK


def test_describe_names_channels_without_secrets() -> None:
    layer = AlertLayer(
        threshold=3,
        notify=["log", {"slack": {"webhook_url": "https://hooks.slack.com/services/T0/B0/xyz"}}],
        rate_threshold=0.5,
    )
    text = layer.describe()
    assert "threshold=3" in text and "log, slack" in text and "rate>=50% of 20 calls" in text
    assert "hooks.slack.com" not in text


# ---------------------------------------------------------------- the pure decision


def test_decide_is_pure_and_deletes_healthy_state() -> None:
    rules = Rules(threshold=2)
    state: dict[str, Any] | None = None
    state, decision = decide(state, failed=True, permanent=False, now=10.0, rules=rules)
    assert decision is None and state == {"failures": 1, "since": 10.0, "open": False}
    frozen = dict(state)
    again = decide(state, failed=True, permanent=False, now=11.0, rules=rules)
    assert state == frozen  # the input is never modified: an optimistic store may rerun it
    assert again == decide(frozen, failed=True, permanent=False, now=11.0, rules=rules)
    state, decision = again
    assert decision is not None and decision["kind"] == "triggered" and decision["since"] == 10.0
    state, decision = decide(state, failed=False, permanent=False, now=12.0, rules=rules)
    assert state == {"failures": 0, "since": None, "open": False, "settling": True}
    assert decision is not None and decision["kind"] == "resolved"
    state, decision = decide(state, failed=False, permanent=False, now=13.0, rules=rules)
    assert state is None and decision is None  # a call that ran: healthy, nothing kept


def test_calls_refused_during_the_recovery_probe_page_no_second_time() -> None:
    """Under threads, calls the breaker refused while its half-open probe was in flight end
    after the probe resolved the outage: they must not open a new one."""
    rules = Rules(threshold=2)
    refused = {"failed": True, "permanent": False, "short_circuited": True, "rules": rules}
    state, pages = None, []
    for now in (1.0, 2.0):
        state, decision = decide(state, failed=True, permanent=False, now=now, rules=rules)
        pages.append(decision and decision["kind"])
    for now in (3.0, 4.0):  # the breaker is open: refused calls keep the outage open
        state, decision = decide(state, now=now, **refused)
        pages.append(decision and decision["kind"])
    state, decision = decide(state, failed=False, permanent=False, now=5.0, rules=rules)
    pages.append(decision and decision["kind"])  # the probe succeeded
    for now in (5.1, 5.2, 5.3):  # refused while the probe was in flight, observed after it
        state, decision = decide(state, now=now, **refused)
        pages.append(decision and decision["kind"])
    assert pages == [None, "triggered", None, None, "resolved", None, None, None]
    for now in (6.0, 7.0):  # a new outage, seen by calls that really ran, pages again
        state, decision = decide(state, failed=True, permanent=False, now=now, rules=rules)
        pages.append(decision and decision["kind"])
    assert pages[-2:] == [None, "triggered"]


# ---------------------------------------------------------------- the canonical stack


def test_counts_calls_after_retries_not_attempts(fake_clock: FakeClock) -> None:
    attempts = scripted([DOWN, DOWN, OK, DOWN, DOWN, DOWN, DOWN, DOWN, DOWN])

    @fallback(value="conservative")
    @alert_on_failures(threshold=2, notify=[])
    @retry(max_tries=3, jitter=None)
    def verify() -> Any:
        return attempts()

    assert verify().source == "verified"  # two failed attempts, then verified: no failure
    assert len(verify.alerts) == 0
    first = verify()
    assert first.source == "fallback"
    assert len(verify.alerts) == 0
    verify()
    assert kinds(verify) == ["triggered"]
    assert verify.alerts[0].failures == 2


def test_verification_failed_from_retry_is_counted_and_reraised(fake_clock: FakeClock) -> None:
    @alert_on_failures(threshold=1, notify=[])
    @retry(max_tries=2, jitter=None)
    def verify() -> Any:
        return DOWN

    with pytest.raises(VerificationFailed):
        verify()
    assert verify.alerts[0].outcome is Outcome.TRANSIENT
    assert "503" in (verify.alerts[0].error or "")


# ---------------------------------------------------------------- concurrency


def test_eight_threads_failing_together_raise_exactly_one_trigger(fake_clock: FakeClock) -> None:
    received: list[Alert] = []
    verify, received = alerting(threshold=5)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            verify(DOWN)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kinds(verify) == ["triggered"]
    assert verify.find_layer("alert_on_failures").state()["failures"] == 400
    verify.find_layer("alert_on_failures").flush(2.0)
    assert len(received) == 1


def test_a_hundred_tasks_failing_together_raise_exactly_one_trigger(
    fake_clock: FakeClock,
) -> None:
    received: list[Alert] = []

    @alert_on_failures(threshold=5, notify=[received.append])
    async def verify() -> Any:
        await asyncio.sleep(0)
        raise ConnectionError("refused")

    async def task() -> None:
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await verify()

    async def main() -> None:
        await asyncio.gather(*(task() for _ in range(100)))

    asyncio.run(main())
    assert kinds(verify) == ["triggered"]
    verify.find_layer("alert_on_failures").flush(2.0)
    assert len(received) == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 0}, "threshold: must be >= 1, got 0"),
        ({"threshold": 2.5}, "threshold: must be an int"),
        ({"repeat_interval": -1}, "repeat_interval: must be >= 0, got -1"),
        ({"rate_threshold": 0}, "rate_threshold: must be in (0, 1], got 0"),
        ({"rate_threshold": 1.5}, "rate_threshold: must be in (0, 1], got 1.5"),
        ({"rate_threshold": 0.5, "rate_window": 0}, "rate_window: must be >= 1, got 0"),
        (
            {"rate_threshold": 0.5, "rate_window": 10, "min_calls": 11},
            "min_calls: must be <= rate_window (10), got 11",
        ),
        ({"rate_window": 10}, "rate_window: needs rate_threshold"),
        ({"key": ""}, "key: must be a non-empty string"),
        ({"state": "sqlite:state.db"}, "state: unsupported store URL"),
        ({"notify": ["pager"]}, "notify: [0]: unknown channel 'pager'"),
        ({"notify": ["slack"]}, "notify: [0]: unknown channel 'slack' (it needs settings"),
        ({"notify": [{"teams": {}}]}, "notify: [0] teams: unknown channel 'teams'"),
        ({"notify": [{"webhook": {"url": "ftp://example.com/x"}}]}, "must be an http:// or"),
        ({"notify": [{"webhook": {"url": "not a url"}}]}, "must be an http:// or"),
        ({"notify": [{"webhook": {}}]}, "url (or url_env) is required"),
        (
            {"notify": [{"slack": {"webhook_url_env": "QWED_GUARD_TEST_UNSET"}}]},
            "environment variable QWED_GUARD_TEST_UNSET is not set",
        ),
        (
            {"notify": [{"email": {"host": "localhost", "sender": "a@example.com"}}]},
            "to must list at least one recipient",
        ),
        (
            {"notify": [{"email": {"host": "localhost", "sender": "a@x.com", "to": []}}]},
            "to must list at least one recipient",
        ),
        (
            {"notify": [{"pagerduty": {"routing_key": "k" * 32, "severity": "high"}}]},
            "severity must be one of critical, error, warning, info",
        ),
        ({"notify": ["no_such_module_xyz:fn"]}, "cannot import no_such_module_xyz"),
        ({"notify": [{"webhook": {"url": "http://h", "verify": False}}]}, "unknown setting(s)"),
        ({"notify": [42]}, "cannot make a channel from int"),
    ],
)
def test_bad_arguments_are_refused_at_decoration(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        alert_on_failures(**params)
    assert message in str(caught.value)


def test_malformed_url_error_does_not_echo_the_secret() -> None:
    with pytest.raises(ParameterError) as caught:
        alert_on_failures(notify=[{"webhook": {"url": "hxxp://secret-token-value"}}])
    assert "secret-token-value" not in str(caught.value)
    assert caught.value.param == "notify"


def test_channels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWED_GUARD_TEST_HOOK", "https://hooks.example.com/hooks/abc")
    layer = AlertLayer(notify={"webhook": {"url_env": "QWED_GUARD_TEST_HOOK"}})
    assert [c.name for c in layer.channels] == ["webhook(hooks.example.com)"]


def test_dotted_path_channel_is_imported() -> None:
    layer = AlertLayer(notify=["json:dumps"])
    assert layer.channels[0].name == "dumps"
