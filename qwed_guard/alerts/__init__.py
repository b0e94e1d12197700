"""Alerting on failed guarded calls: `@alert_on_failures`, its `Alert` records and channels.

    from qwed_guard.alerts import alert_on_failures

    @alert_on_failures(threshold=5, notify=["log", {"slack": {"webhook_url_env": "SLACK_URL"}}])
    def verify(query): ...

Delivery runs on background threads; `flush(timeout)` waits for what is pending.
"""

from __future__ import annotations

from qwed_guard.alerts.channels import Channel, DeliveryError
from qwed_guard.alerts.delivery import flush
from qwed_guard.alerts.layer import AlertLayer, alert_on_failures
from qwed_guard.alerts.record import Alert, AlertHistory

__all__ = [
    "Alert",
    "AlertHistory",
    "AlertLayer",
    "Channel",
    "DeliveryError",
    "alert_on_failures",
    "flush",
]
