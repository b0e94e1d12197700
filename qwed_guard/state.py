"""Shared guard state (alert counters, breaker state) behind one atomic primitive.

Every piece of state is a small JSON-able dict under a string key, changed only through
`update(key, change)`: the store reads the current value, calls `change(value)`, writes what it
returns and hands back the decision, all atomically. The in-memory store does that under a lock;
a networked store (Redis) can do the same with an optimistic transaction, so many worker
processes behave as one. Time inside state is wall time (`clock.wall()`), which processes share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["MemoryStore", "State", "StateStore", "store_from_url"]

T = TypeVar("T")
State = dict[str, Any]
Change = Callable[[State | None], tuple[State | None, T]]


@runtime_checkable
class StateStore(Protocol):
    """Where alerting and the circuit breaker keep what must survive between calls."""

    def update(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        """Atomically replace the state under `key` by `change(state)[0]` (None deletes it)
        and return `change(state)[1]`. `change` may run more than once; it must be pure."""
        ...

    def get(self, key: str) -> State | None:
        """The state under `key`, or None."""
        ...


class MemoryStore:
    """The default store: a dict under a lock, private to this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, State] = {}

    def update(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        with self._lock:
            new, decision = change(self._data.get(key))
            if new is None:
                self._data.pop(key, None)
            else:
                self._data[key] = new
            return decision

    def get(self, key: str) -> State | None:
        with self._lock:
            value = self._data.get(key)
            return dict(value) if value is not None else None

    def peek(self, key: str) -> State | None:
        """The stored state itself, read without the lock (a dict read is atomic): for hot
        paths that only decide whether an `update` is needed. Never mutate what it returns."""
        return self._data.get(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def store_from_url(url: str | StateStore | None) -> StateStore:
    """A store from plain data: None or `"memory:"` for a new in-process store, a `redis://`
    URL for the process's shared `RedisStore` of that URL, or a store."""
    if url is None or url == "memory:":
        return MemoryStore()
    if isinstance(url, StateStore):
        return url
    if isinstance(url, str) and url.startswith(("redis://", "rediss://")):
        # Imported here: redis is an optional dependency (extra "fleet").
        try:
            from qwed_guard.state_redis import redis_store
        except ImportError as error:
            raise ValueError(
                f"state: redis:// needs the redis package ({error}); "
                "install it with: pip install 'qwed-guard[fleet]'"
            ) from None
        return redis_store(url)
    if isinstance(url, str):
        raise ValueError(
            f"state: unsupported store URL {url!r} (supported: 'memory:', 'redis://...')"
        )
    raise TypeError(f"state: expected a URL or a StateStore, got {type(url).__name__}")


def freeze(state: Mapping[str, Any] | None) -> State:
    """A mutable copy of a state to build the next value from."""
    return dict(state) if state is not None else {}
