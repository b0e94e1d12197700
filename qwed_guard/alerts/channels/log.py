"""The default channel: a loguru record per alert, with the alert bound as `extra["alert"]`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, Channel, Options
from qwed_guard.alerts.record import Alert

_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class LogChannel(Channel):
    name = "log"

    def __init__(self, level: str = "ERROR", resolved_level: str = "INFO") -> None:
        self.level = level
        self.resolved_level = resolved_level

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> LogChannel:
        opts = Options(where, data, {"level", "resolved_level"})
        levels = []
        for name, default in (("level", "ERROR"), ("resolved_level", "INFO")):
            level = (opts.text(name, default) or default).upper()
            if level not in _LEVELS:
                opts.fail(f"{where}: {name} must be one of {', '.join(_LEVELS)}, got {level!r}")
            levels.append(level)
        return cls(*levels)

    def send(self, alert: Alert) -> None:
        from loguru import logger

        level = self.resolved_level if alert.kind == "resolved" else self.level
        # The text goes through `{}` so braces in an error message are not format fields.
        logger.bind(alert=alert.to_dict()).log(level, "{}", alert.text())
