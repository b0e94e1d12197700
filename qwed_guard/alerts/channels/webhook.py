"""A generic JSON webhook: the alert's fields (`Alert.to_dict()`) as the request body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, HttpChannel, Options
from qwed_guard.alerts.record import Alert
from qwed_guard.outcomes import register_secret


class WebhookChannel(HttpChannel):
    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(url, timeout)
        self.headers = dict(headers or {})
        for value in self.headers.values():
            register_secret(value)  # an Authorization header is as secret as the URL
        self.name = f"webhook({urlsplit(url).hostname})"

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> WebhookChannel:
        opts = Options(where, data, {"url", "url_env", "headers", "timeout"})
        headers = data.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            opts.fail(f"{where}: headers must map header names to strings")
        return cls(
            opts.url("url"),
            headers=headers,
            timeout=opts.number("timeout", timeout, positive=True),
        )

    def send(self, alert: Alert) -> None:
        self.post(alert.to_dict(), self.headers)
