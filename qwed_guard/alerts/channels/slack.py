"""Slack incoming webhooks: `{"text": ...}`, about one message a second, honouring Retry-After."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, HttpChannel, Options
from qwed_guard.alerts.record import Alert

_ICONS = {"triggered": ":rotating_light:", "repeat": ":warning:", "resolved": ":white_check_mark:"}


def slack_text(alert: Alert) -> str:
    """The message text: a bold heading line, then the alert's text."""
    head, _, rest = alert.text().partition("\n")
    return f"{_ICONS[alert.kind]} *{head}*\n{rest}"


class SlackChannel(HttpChannel):
    name = "slack"

    def __init__(
        self, webhook_url: str, *, timeout: float = DEFAULT_TIMEOUT, min_interval: float = 1.0
    ) -> None:
        super().__init__(webhook_url, timeout)
        # Slack allows about one message per second per webhook and answers 429 beyond it.
        self.min_interval = min_interval

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> SlackChannel:
        opts = Options(where, data, {"webhook_url", "webhook_url_env", "timeout", "min_interval"})
        return cls(
            opts.url("webhook_url"),
            timeout=opts.number("timeout", timeout, positive=True),
            min_interval=opts.number("min_interval", 1.0),
        )

    def send(self, alert: Alert) -> None:
        self.post({"text": slack_text(alert)})
