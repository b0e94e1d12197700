"""Shared guard state (alert counters, breaker state) behind one atomic primitive.

Every piece of state is a small JSON-able dict under a string key, changed only through
`update(key, change)`: the store reads the current value, calls `change(value)`, writes what it
returns and hands back the decision, all atomically. The in-memory store does that under a lock;
a networked store (Redis) can do the same with an optimistic transaction, so many worker
processes behave as one. Time inside state is wall time (`clock.wall()`), which processes share.

The stores: `MemoryStore` (`qwed_guard.state.memory`, the default) and `RedisStore`
(`qwed_guard.state.redis`, extra "fleet"); `store_from_url` picks one from plain data.
"""

from __future__ import annotations

from qwed_guard.errors import bad_parameter
from qwed_guard.state.base import Change, State, StateStore, freeze
from qwed_guard.state.memory import MemoryStore

__all__ = [
    "Change",
    "MemoryStore",
    "State",
    "StateStore",
    "configured_store",
    "freeze",
    "store_for",
    "store_from_url",
]


def store_from_url(url: str | StateStore | None) -> StateStore:
    """A store from plain data: None or `"memory:"` for a new in-process store, a `redis://`
    URL for the process's shared `RedisStore` of that URL, or a store."""
    if url is None or url == "memory:":
        return MemoryStore()
    if isinstance(url, StateStore):
        return url
    if isinstance(url, str) and url.startswith(("redis://", "rediss://")):
        # Imported on use: redis is an optional dependency (extra "fleet").
        try:
            from qwed_guard.state.redis import redis_store
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


def configured_store(state: str | StateStore | None) -> StateStore | None:
    """The store a layer's `state=` names, or None; a bad one is refused at decoration."""
    if state is None:
        return None
    try:
        return store_from_url(state)
    except (TypeError, ValueError) as error:
        problem = str(error).removeprefix("state: ")
        raise bad_parameter("state", problem, wrong_type=isinstance(error, TypeError)) from None


def store_for(configured: StateStore | None, key: str | None, shared: StateStore) -> StateStore:
    """Where one decorated function keeps its state: the store it was given; else, with a
    `key=`, `shared` (one per pattern and process, so one key means one state); else a
    store of its own, so two functions that happen to share a qualified name (closures,
    re-definitions in tests) never share state by accident."""
    if configured is not None:
        return configured
    if key is not None:
        return shared
    return MemoryStore()
