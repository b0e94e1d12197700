"""The default store: this process's state in a dict under a lock."""

from __future__ import annotations

import threading
from typing import TypeVar

from qwed_guard.state.base import Change, State

__all__ = ["MemoryStore"]

T = TypeVar("T")


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
