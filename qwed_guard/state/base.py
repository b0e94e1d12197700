"""The `StateStore` protocol every store implements, and the shape of a state.

Every piece of state is a small JSON-able dict under a string key, changed only through
`update(key, change)`: the store reads the current value, calls `change(value)`, writes what it
returns and hands back the decision, all atomically. `aupdate` and `aget` are the same for
`async def` code: a networked store awaits its I/O there instead of blocking the event loop.

A store shared by many processes (`SharedStore`, e.g. Redis) also keeps a local *view* of the
keys it read recently and *counters* whose increments travel with its next round trip, so a
guarded call on the success path costs at most one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["AsyncStateStore", "Change", "SharedStore", "State", "StateStore", "freeze"]

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


@runtime_checkable
class AsyncStateStore(Protocol):
    """`update` and `get` for the event loop: awaited, never blocking it."""

    async def aupdate(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        """`update`, awaited."""
        ...

    async def aget(self, key: str) -> State | None:
        """`get`, awaited."""
        ...


@runtime_checkable
class SharedStore(StateStore, AsyncStateStore, Protocol):
    """A store many processes share, read through a short local view.

    `cache` (seconds) is how old a view may be for a success-path decision; 0 means "read in
    this call". Decisions that change state (a failure, a transition) always go through the
    atomic `update`.
    """

    cache: float

    def cached(self, key: str, max_age: float) -> tuple[bool, State | None]:
        """(True, state) when the view of `key` is at most `max_age` seconds old, with no I/O;
        (False, None) when it must be read."""
        ...

    def view(self, key: str, max_age: float) -> State | None:
        """The state under `key` as read at most `max_age` seconds ago (reading it if older).
        Every read also records the pending counter increments and refreshes the other keys
        used recently, in the same round trip."""
        ...

    async def aview(self, key: str, max_age: float) -> State | None:
        """`view`, awaited."""
        ...

    def add(self, counter: str, amount: int, *, ttl: float | None = None) -> None:
        """Add `amount` to the integer `counter`, with the store's next round trip (no I/O);
        it expires `ttl` seconds (default: the store's) after its last change."""
        ...

    def count(self, counter: str) -> int:
        """The value of `counter`, pending increments included."""
        ...

    def counts(self, counters: list[str]) -> list[int]:
        """The values of `counters`, in one round trip."""
        ...

    async def acounts(self, counters: list[str]) -> list[int]:
        """`counts`, awaited."""
        ...


def freeze(state: Mapping[str, Any] | None) -> State:
    """A mutable copy of a state to build the next value from."""
    return dict(state) if state is not None else {}
