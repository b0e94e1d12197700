"""Any callable as a channel: `notify=[my_function]` or `notify=["package.module:function"]`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT, Channel, Options
from qwed_guard.alerts.record import Alert
from qwed_guard.errors import bad_parameter
from qwed_guard.registry import import_object


class CallableChannel(Channel):
    """Calls `fn(alert)` on the delivery thread (an `async def` runs in its own event loop).

    A Python callable cannot be interrupted, so `timeout` does not bound it; it runs on its own
    thread, so a slow one delays only its own later alerts.
    """

    def __init__(self, fn: Callable[[Alert], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or type(fn).__name__
        self._is_async = inspect.iscoroutinefunction(fn)

    @classmethod
    def from_options(
        cls, where: str, data: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> CallableChannel:
        # Only a Python object: a dotted path is imported by `build_channel`, where a policy
        # checks it against its allow-list first.
        fn = Options(where, data, {"call"}).data.get("call")
        if not callable(fn):
            raise bad_parameter("notify", f"{where}: call must be a callable", wrong_type=True)
        return cls(fn)

    def send(self, alert: Alert) -> None:
        result = self.fn(alert)
        if self._is_async or inspect.isawaitable(result):
            asyncio.run(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def import_callable(path: str) -> Callable[[Alert], Any]:
    """`"package.module:function"` (or `...:Class.method`) imported now, at decoration time."""
    target = import_object(path, "notify")
    if not callable(target):
        raise bad_parameter("notify", f"{path!r} is not callable", wrong_type=True)
    fn: Callable[[Alert], Any] = target
    return fn
