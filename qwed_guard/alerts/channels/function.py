"""Any callable as a channel: `notify=[my_function]` or `notify=["package.module:function"]`."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from qwed_guard.alerts.channels.base import Channel
from qwed_guard.alerts.record import Alert
from qwed_guard.errors import bad_parameter


class CallableChannel(Channel):
    """Calls `fn(alert)` on the delivery thread (an `async def` runs in its own event loop).

    A Python callable cannot be interrupted, so `timeout` does not bound it; it runs on its own
    thread, so a slow one delays only its own later alerts.
    """

    def __init__(self, fn: Callable[[Alert], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or type(fn).__name__
        self._is_async = inspect.iscoroutinefunction(fn)

    def send(self, alert: Alert) -> None:
        result = self.fn(alert)
        if self._is_async or inspect.isawaitable(result):
            asyncio.run(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def import_callable(path: str) -> Callable[[Alert], Any]:
    """`"package.module:function"` (or `...:Class.method`) imported now, at decoration time."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise bad_parameter("notify", f"{path!r}: a dotted path must look like 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise bad_parameter("notify", f"{path!r}: cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise bad_parameter("notify", f"{path!r}: {module_name} has no {attribute}") from None
    if not callable(target):
        raise bad_parameter("notify", f"{path!r} is not callable", wrong_type=True)
    fn: Callable[[Alert], Any] = target
    return fn
