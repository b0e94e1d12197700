"""Alert channels, built from plain data.

`notify` items: `"log"`, a callable, `"package.module:function"`, a `Channel`, or a one-key
mapping naming the channel: `{"webhook": {...}}`, `{"slack": {...}}`, `{"pagerduty": {...}}`,
`{"email": {...}}`, `{"log": {...}}`, `{"function": {"call": callable}}`. A name picks
a row of the channel registry, `name -> "package.module:Class"`, imported only when used;
`register_channel` adds a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, Channel, DeliveryError
from qwed_guard.errors import ParameterError, bad_parameter
from qwed_guard.registry import Registry

__all__ = [
    "CHANNEL_NAMES",
    "Channel",
    "DeliveryError",
    "build_channel",
    "build_channels",
    "register_channel",
]

CHANNELS = Registry(
    "notify",
    "channel",
    {
        "log": "qwed_guard.alerts.channels.log:LogChannel",
        "function": "qwed_guard.alerts.channels.function:CallableChannel",
        "webhook": "qwed_guard.alerts.channels.webhook:WebhookChannel",
        "slack": "qwed_guard.alerts.channels.slack:SlackChannel",
        "pagerduty": "qwed_guard.alerts.channels.pagerduty:PagerDutyChannel",
        "email": "qwed_guard.alerts.channels.email:EmailChannel",
    },
)
CHANNEL_NAMES = tuple(CHANNELS.names())
"""The built-in channels' names."""


def register_channel(name: str, target: str | type[Channel]) -> None:
    """Build `{name: {...}}` items with `target`: `"package.module:Class"` (imported when first
    used) or the class; its `from_options(where, settings, timeout)` reads the settings. See
    "Adding a channel" in the alerts guide."""
    CHANNELS.register(name, target)


def _from_mapping(where: str, name: str, data: Any, timeout: float) -> Channel:
    if data is not None and not isinstance(data, Mapping):
        raise bad_parameter(
            "notify", f"{where}: {name} settings must be a mapping, got {type(data).__name__}"
        )
    cls = CHANNELS.load(name, f"{where} {name}: ")
    channel: Channel = cls.from_options(f"{where} {name}", data or {}, timeout)
    return channel


def build_channel(item: Any, index: int = 0, timeout: float = DEFAULT_TIMEOUT) -> Channel:
    """One channel from one `notify` item."""
    where = f"[{index}]"
    if isinstance(item, Channel):
        return item
    if isinstance(item, str) and ":" in item:
        from qwed_guard.alerts.channels.function import import_callable

        return _from_mapping(where, "function", {"call": import_callable(item)}, timeout)
    if isinstance(item, str):
        hint = ""
        if item in CHANNELS:
            try:
                return _from_mapping(where, item, {}, timeout)
            except ParameterError:
                hint = f" (it needs settings: {{{item!r}: {{...}}}})"
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
        return _from_mapping(where, "function", {"call": item}, timeout)
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
