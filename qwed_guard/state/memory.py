"""The default store: this process's state in a dict under a lock."""

from __future__ import annotations

import threading
from typing import TypeVar

from qwed_guard.state.base import Change, State

__all__ = ["MemoryStore"]

T = TypeVar("T")


class MemoryStore:
    """The default store: a dict under a lock, private to this process.

    Its `aupdate`/`aget` do no I/O: they are `update`/`get`, for code written against
    `AsyncStateStore`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, State] = {}
        self._counters: dict[str, int] = {}

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

    async def aupdate(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        return self.update(key, change, ttl=ttl)

    async def aget(self, key: str) -> State | None:
        return self.get(key)

    def peek(self, key: str) -> State | None:
        """The stored state itself, read without the lock (a dict read is atomic): for hot
        paths that only decide whether an `update` is needed. Never mutate what it returns."""
        return self._data.get(key)

    def add(self, counter: str, amount: int, *, ttl: float | None = None) -> None:
        """Add `amount` to the integer `counter` (`ttl` is for shared stores: a process's
        counters go with it)."""
        with self._lock:
            self._counters[counter] = self._counters.get(counter, 0) + amount

    def count(self, counter: str) -> int:
        """The value of `counter` (0 when never added to)."""
        return self._counters.get(counter, 0)

    def counts(self, counters: list[str]) -> list[int]:
        """The values of `counters`."""
        return [self._counters.get(counter, 0) for counter in counters]

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._counters.clear()
