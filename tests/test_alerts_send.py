"""The one routine that raises an alert, for `@alert_on_failures` and `@circuit_breaker` alike."""

from __future__ import annotations

from typing import Any

from loguru import logger

from qwed_guard.alerts.record import Alert, AlertHistory
from qwed_guard.alerts.send import alert_failed, raise_alert
from qwed_guard.context import CallContext
from qwed_guard.hooks import AlertSent
from qwed_guard.outcomes import Outcome

SECRET = "sk-live0123456789abcdef"


def a_call(function: str, policy_hash: str | None) -> CallContext:
    """A call's context that keeps its events."""
    ctx = CallContext(function, (), {})
    ctx.policy_hash = policy_hash
    ctx.keep_events()
    return ctx


class Submitted:
    """Stands in for a delivery worker: keeps what it is handed."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alert: Alert) -> bool:
        self.alerts.append(alert)
        return True


def send(ctx: CallContext | None, **changes: Any) -> tuple[Alert, AlertHistory, list[Submitted]]:
    history, workers = AlertHistory(), [Submitted(), Submitted()]
    given: dict[str, Any] = {
        "key": "app.verify",
        "kind": "triggered",
        "reason": "consecutive",
        "message": lambda error: f"app.verify: 2 consecutive failures (last: {error})",
        "failures": 2,
        "outcome": Outcome.TRANSIENT,
        "error": f"AuthenticationError: bad key {SECRET}",
        "now": 1767225600.25,
        "dedup_key": "qwed-guard:app.verify",
    }
    given.update(changes)
    alert = raise_alert(ctx, history, workers, **given)  # type: ignore[arg-type]
    return alert, history, workers


def test_builds_keeps_emits_and_submits_one_alert() -> None:
    ctx = a_call("app.verify", "abc123")
    alert, history, workers = send(ctx, failure_rate=0.5)
    assert alert == Alert(
        timestamp="2026-01-01T00:00:00.250Z",
        key="app.verify",
        kind="triggered",
        message="app.verify: 2 consecutive failures (last: AuthenticationError: bad key sk-***)",
        failures=2,
        outcome=Outcome.TRANSIENT,
        error="AuthenticationError: bad key sk-***",
        function="app.verify",
        policy_hash="abc123",
        dedup_key="qwed-guard:app.verify",
        reason="consecutive",
        failure_rate=0.5,
    )
    assert list(history) == [alert]
    assert [w.alerts for w in workers] == [[alert], [alert]]
    assert ctx.events is not None
    assert [(type(e), e.alert) for e in ctx.events if isinstance(e, AlertSent)] == [
        (AlertSent, alert)
    ]
    assert len(ctx.events) == 1


def test_without_a_call_the_key_names_the_function() -> None:
    # A breaker's reset() raises its resolved alert outside any call.
    alert, history, _ = send(
        None, kind="resolved", message="app.verify: closed", error=None, outcome=Outcome.VERIFIED
    )
    assert (alert.function, alert.policy_hash, alert.error, alert.message) == (
        "app.verify",
        None,
        None,
        "app.verify: closed",
    )
    assert list(history) == [alert]


def test_an_empty_error_is_none() -> None:
    alert, _, _ = send(None, error="", message=lambda error: f"error={error!r}")
    assert (alert.error, alert.message) == (None, "error=None")


def test_a_failure_to_alert_is_logged_scrubbed() -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, format="{level}: {message}")
    try:
        alert_failed("alerting for app.verify", RuntimeError(f"channel refused {SECRET}"))
    finally:
        logger.remove(sink)
    assert [line.strip() for line in lines] == [
        "ERROR: alerting for app.verify failed: RuntimeError: channel refused sk-***"
    ]
