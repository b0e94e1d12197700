"""Alert channels, built from plain data.

`notify` items: `"log"`, a callable, `"package.module:function"`, a `Channel`, or a one-key
mapping naming the channel: `{"webhook": {...}}`, `{"slack": {...}}`, `{"pagerduty": {...}}`,
`{"email": {...}}`, `{"log": {...}}`. Each channel module is imported only when used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, Channel, DeliveryError
from qwed_guard.errors import bad_parameter

__all__ = ["CHANNEL_NAMES", "Channel", "DeliveryError", "build_channel", "build_channels"]

CHANNEL_NAMES = ("log", "webhook", "slack", "pagerduty", "email")


def _from_mapping(where: str, name: str, data: Any, timeout: float) -> Channel:
    settings: Mapping[str, Any] = {} if data is None else data
    if not isinstance(settings, Mapping):
        raise bad_parameter(
            "notify", f"{where}: {name} settings must be a mapping, got {type(data).__name__}"
        )
    where = f"{where} {name}"
    if name == "log":
        from qwed_guard.alerts.channels.log import LogChannel

        return LogChannel.from_options(where, settings)
    if name == "webhook":
        from qwed_guard.alerts.channels.webhook import WebhookChannel

        return WebhookChannel.from_options(where, settings, timeout)
    if name == "slack":
        from qwed_guard.alerts.channels.slack import SlackChannel

        return SlackChannel.from_options(where, settings, timeout)
    if name == "pagerduty":
        from qwed_guard.alerts.channels.pagerduty import PagerDutyChannel

        return PagerDutyChannel.from_options(where, settings, timeout)
    if name == "email":
        from qwed_guard.alerts.channels.email import EmailChannel

        return EmailChannel.from_options(where, settings, timeout)
    raise bad_parameter(
        "notify", f"{where}: unknown channel {name!r}; choose from {', '.join(CHANNEL_NAMES)}"
    )


def build_channel(item: Any, index: int = 0, timeout: float = DEFAULT_TIMEOUT) -> Channel:
    """One channel from one `notify` item."""
    where = f"[{index}]"
    if isinstance(item, Channel):
        return item
    if isinstance(item, str):
        if ":" in item:
            from qwed_guard.alerts.channels.function import CallableChannel, import_callable

            return CallableChannel(import_callable(item))
        if item == "log":
            from qwed_guard.alerts.channels.log import LogChannel

            return LogChannel()
        hint = f" (it needs settings: {{{item!r}: {{...}}}})" if item in CHANNEL_NAMES else ""
        raise bad_parameter(
            "notify",
            f"{where}: unknown channel {item!r}{hint}; use 'log', a mapping such as "
            "{'slack': {...}}, a callable or 'module:function'",
        )
    if isinstance(item, Mapping):
        if len(item) != 1:
            raise bad_parameter(
                "notify", f"{where}: a channel mapping has exactly one key (the channel's name)"
            )
        ((name, data),) = item.items()
        return _from_mapping(where, str(name), data, timeout)
    if callable(item):
        from qwed_guard.alerts.channels.function import CallableChannel

        fn: Callable[..., Any] = item
        return CallableChannel(fn)
    raise bad_parameter(
        "notify", f"{where}: cannot make a channel from {type(item).__name__}", wrong_type=True
    )


def build_channels(notify: Any, timeout: float = DEFAULT_TIMEOUT) -> list[Channel]:
    """Every channel of a `notify` argument: one item or a list of them."""
    if notify is None:
        return []
    if isinstance(notify, (str, Mapping, Channel)) or callable(notify):
        notify = [notify]
    if not isinstance(notify, Sequence):
        raise bad_parameter(
            "notify", f"must be a list of channels, got {type(notify).__name__}", wrong_type=True
        )
    return [build_channel(item, index, timeout) for index, item in enumerate(notify)]
