"""PagerDuty Events API v2: `trigger` on the alert's `dedup_key`, then `resolve` on the same key.

Repeats are sent as further `trigger` events on the open alert's key, which PagerDuty records
on that alert without opening another. After a resolve, the next trigger on the same key opens
a new incident, so one stable key per alerting function is right.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, HttpChannel, Options
from qwed_guard.alerts.record import Alert
from qwed_guard.redact import register_secret

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")
_SUMMARY_MAX = 1024
_DEDUP_MAX = 255


class PagerDutyChannel(HttpChannel):
    name = "pagerduty"

    def __init__(
        self,
        routing_key: str,
        *,
        url: str = EVENTS_URL,
        severity: str = "error",
        source: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(url, timeout)
        self.routing_key = routing_key
        register_secret(routing_key)  # however the channel was built
        self.severity = severity
        self.source = source or socket.gethostname()

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> PagerDutyChannel:
        opts = Options(
            where,
            data,
            {"routing_key", "routing_key_env", "url", "severity", "source", "timeout"},
        )
        routing_key = opts.secret("routing_key")
        assert routing_key is not None
        severity = opts.text("severity", "error")
        if severity not in SEVERITIES:
            opts.fail(f"{where}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        return cls(
            routing_key,
            url=opts.url("url", default=EVENTS_URL),
            severity=severity,
            source=opts.text("source"),
            timeout=opts.number("timeout", timeout, positive=True),
        )

    def event(self, alert: Alert) -> dict[str, Any]:
        """The Events API v2 body for `alert`."""
        dedup_key = alert.dedup_key[:_DEDUP_MAX]
        if alert.kind == "resolved":
            return {
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": dedup_key,
            }
        details = alert.to_dict()
        details.pop("message")
        return {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "client": "qwed-guard",
            "payload": {
                "summary": alert.message[:_SUMMARY_MAX],
                "source": self.source,
                "severity": self.severity,
                "timestamp": alert.timestamp,
                "component": alert.function,
                "group": alert.key,
                "class": alert.outcome.value,
                "custom_details": details,
            },
        }

    def send(self, alert: Alert) -> None:
        self.post(self.event(alert))
