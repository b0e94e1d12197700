"""Raising one alert: the routine `@alert_on_failures` and `@circuit_breaker` share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from qwed_guard import clock
from qwed_guard.alerts.record import Alert, AlertHistory, AlertKind, Reason, rfc3339
from qwed_guard.context import CallContext
from qwed_guard.hooks import AlertSent
from qwed_guard.outcomes import Outcome, scrub

if TYPE_CHECKING:
    from qwed_guard.alerts.delivery import Worker

__all__ = ["alert_failed", "raise_alert"]


def raise_alert(
    ctx: CallContext | None,
    history: AlertHistory,
    workers: Iterable[Worker],
    *,
    key: str,
    kind: AlertKind,
    reason: Reason,
    message: str | Callable[[str | None], str],
    failures: int,
    outcome: Outcome,
    error: str | None,
    now: float,
    dedup_key: str,
    failure_rate: float | None = None,
) -> Alert:
    """Build the alert, keep it in `history`, send `AlertSent` to the call's watchers (if any:
    a breaker's `reset()` has none) and hand it to every delivery worker.

    `error` is scrubbed of secrets first; a callable `message` is given the scrubbed error.
    """
    error = scrub(error) if error else None
    alert = Alert(
        timestamp=rfc3339(now),
        key=key,
        kind=kind,
        message=message if isinstance(message, str) else message(error),
        failures=failures,
        outcome=outcome,
        error=error,
        function=ctx.function if ctx is not None else key,
        policy_hash=ctx.policy_hash if ctx is not None else None,
        dedup_key=dedup_key,
        reason=reason,
        failure_rate=failure_rate,
    )
    history.append(alert)
    if ctx is not None and ctx.wants(AlertSent):
        ctx.send(AlertSent(ctx.attempt, clock.wall(), alert))
    for worker in workers:
        worker.submit(alert)
    return alert


def alert_failed(what: str, exc: Exception) -> None:
    """Log that alerting failed, secrets scrubbed: it must never break the call it watches."""
    from loguru import logger  # imported on first failure: it costs tens of ms

    logger.opt(exception=False).error("{}", scrub(f"{what} failed: {type(exc).__name__}: {exc}"))
