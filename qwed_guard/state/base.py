"""The `StateStore` protocol every store implements, and the shape of a state.

Every piece of state is a small JSON-able dict under a string key, changed only through
`update(key, change)`: the store reads the current value, calls `change(value)`, writes what it
returns and hands back the decision, all atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Change", "State", "StateStore", "freeze"]

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


def freeze(state: Mapping[str, Any] | None) -> State:
    """A mutable copy of a state to build the next value from."""
    return dict(state) if state is not None else {}
