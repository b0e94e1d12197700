"""`@concurrency_limit`: at most `limit` calls in flight per key, across the fleet (a bulkhead).

A provider that slows down keeps every worker's calls waiting on it; with no bound, the calls in
flight pile up until the workers or the provider fall over. The limit takes a slot for each
attempt before it starts and frees it when it ends. A call beyond the limit waits up to `wait`
seconds for a slot, then (or at once, with `wait=0`) ends without calling the function: its
outcome is `short_circuited`, raised as `ConcurrencyLimited`, which `@retry` does not retry and
`@fallback` answers with its value.

Slots are leases in the state store, taken and freed with its atomic `update`, so the bound
holds across every process sharing a store (Redis). A slot whose holder died (or that outlives
`lease` seconds) frees itself: keep `lease` above the longest attempt (`@attempt_timeout`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qwed_guard import clock
from qwed_guard.context import CallContext
from qwed_guard.errors import MAX_COUNT, QwedGuardError
from qwed_guard.layer import CallOutcome, Deferred, Layer, Step, end_attempt
from qwed_guard.options import (
    STRING,
    Options,
    data,
    integer,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    text,
)
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.state import MemoryStore, State, StateStore, configured_store, store_for
from qwed_guard.state.base import AsyncStateStore

__all__ = [
    "ConcurrencyLimitLayer",
    "ConcurrencyLimited",
    "ConcurrencyOptions",
    "Limiter",
    "concurrency_limit",
]


_PREFIX = "concurrency:"
_SHARED_STORE = MemoryStore()
"""Limits given a `key=` but no `state=` share this store, so one key means one limit."""
_MAX_SECONDS = 366 * 86400.0
_FIRST_POLL = 0.002
_LAST_POLL = 0.05
_tokens = itertools.count(1)
_RELEASING: set[asyncio.Task[Any]] = set()


class ConcurrencyLimited(QwedGuardError):
    """Every slot of a concurrency limit was taken (for `wait` seconds): no call was made."""

    outcome: Outcome = Outcome.SHORT_CIRCUITED

    def __init__(self, key: str, limit: int, waited: float) -> None:
        self.key = key
        self.limit = limit
        self.waited = waited
        text = f"concurrency limit {limit} reached for {key!r}"
        if waited > 0:
            text += f" (waited {waited:.3g} s for a slot)"
        self.error: str = text
        super().__init__(text)


def _take(
    limit: int, token: str, now: float, lease: float
) -> Callable[[State | None], tuple[State | None, bool]]:
    def change(state: State | None) -> tuple[State | None, bool]:
        held: dict[str, float] = (state or {}).get("leases", {})
        live = {t: until for t, until in held.items() if until > now}  # dead holders' slots free
        if len(live) >= limit:
            return ({"leases": live} if len(live) != len(held) else state), False
        live[token] = now + lease
        return {"leases": live}, True

    return change


def _free(token: str, state: State | None) -> tuple[State | None, None]:
    held: dict[str, float] = (state or {}).get("leases", {})
    if token not in held:
        return state, None
    rest = {t: until for t, until in held.items() if t != token}
    return ({"leases": rest} if rest else None), None


class Limiter:
    """One key's slots: `limit` leases of `lease` seconds in `store`."""

    def __init__(self, key: str, store: StateStore, limit: int, lease: float) -> None:
        self.key = key
        self.store = store
        self.limit = limit
        self.lease = lease
        self._state_key = _PREFIX + key
        self._async: AsyncStateStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, AsyncStateStore) else None
        )

    @property
    def awaits(self) -> bool:
        """True when taking a slot is I/O an async call awaits."""
        return self._async is not None

    @property
    def in_flight(self) -> int:
        """Slots held now (leases not yet run out)."""
        now = clock.wall()
        held: dict[str, float] = (self.store.get(self._state_key) or {}).get("leases", {})
        return sum(1 for until in held.values() if until > now)

    def _change(self, token: str) -> Callable[[State | None], tuple[State | None, bool]]:
        return _take(self.limit, token, clock.wall(), self.lease)

    def acquire(self, token: str, wait: float) -> bool:
        """Take a slot for `token`, waiting up to `wait` seconds for one."""
        deadline = clock.monotonic() + wait
        poll = _FIRST_POLL
        while True:
            if self.store.update(self._state_key, self._change(token)):
                return True
            left = deadline - clock.monotonic()
            if left <= 0:
                return False
            clock.active().sleep(min(poll, left))
            poll = min(poll * 2, _LAST_POLL)

    async def aacquire(self, token: str, wait: float) -> bool:
        """`acquire`, awaited: the loop runs other tasks while this one waits."""
        store = self._async
        deadline = clock.monotonic() + wait
        poll = _FIRST_POLL
        while True:
            change = self._change(token)
            taken = (
                await store.aupdate(self._state_key, change)
                if store is not None
                else self.store.update(self._state_key, change)
            )
            if taken:
                return True
            left = deadline - clock.monotonic()
            if left <= 0:
                return False
            await clock.active().asleep(min(poll, left))
            poll = min(poll * 2, _LAST_POLL)

    def release(self, token: str) -> None:
        self.store.update(self._state_key, functools.partial(_free, token))

    async def arelease(self, token: str) -> None:
        if self._async is None:
            self.release(token)
            return
        await self._async.aupdate(self._state_key, functools.partial(_free, token))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyOptions(Options):
    """`@concurrency_limit`'s parameters (see `concurrency_limit`)."""

    limit: int = integer(10, 1, MAX_COUNT, "Calls in flight at once, fleet-wide for one key.")
    wait: float = number(0.0, 0, _MAX_SECONDS, "Seconds a call waits for a slot, else refused.")
    lease: float = number(
        60.0,
        0,
        _MAX_SECONDS,
        "Seconds a slot is held at most (a dead process frees it).",
        above=True,
    )
    key: str | None = text(None, "Names the slots; functions with one key share them.")
    state: str | StateStore | None = data(None, "Where the slots live (a store URL).", STRING)


class ConcurrencyLimitLayer(Layer):
    """The limit's parameters; `bind` gives each decorated function its `Limiter`."""

    kind = "concurrency_limit"
    options_type = ConcurrencyOptions
    __signature__ = layer_signature(ConcurrencyOptions)

    def __init__(self, options: ConcurrencyOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(ConcurrencyOptions, options, params)
        self.limit = o.limit
        self.wait = float(o.wait)
        self.lease = float(o.lease)
        key, state = o.key, o.state
        self.key = key
        self._store = configured_store(state)
        self._limiter: Limiter | None = None

    @property
    def limiter(self) -> Limiter:
        """This function's slots (a layer gets them when it decorates a function)."""
        if self._limiter is None:
            raise AttributeError("this concurrency_limit layer has not decorated a function yet")
        return self._limiter

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> ConcurrencyLimitLayer:
        bound = copy.copy(self)
        store = store_for(self._store, self.key, _SHARED_STORE)
        bound._limiter = Limiter(self.key or key, store, self.limit, self.lease)
        return bound

    def describe(self) -> str:
        parts = [f"limit={self.limit}", f"wait={self.wait:g} s", f"lease={self.lease:g} s"]
        if self.key is not None:
            parts.append(f"key={self.key}")
        return "concurrency_limit(" + "; ".join(parts) + ")"

    def enter(self, ctx: CallContext) -> str | CallOutcome | Deferred:
        limiter = self.limiter
        token = f"{os.getpid():x}-{next(_tokens):x}"
        started = clock.monotonic()
        if ctx.is_async and (limiter.awaits or self.wait > 0):
            return Deferred(
                functools.partial(limiter.aacquire, token, self.wait),
                functools.partial(self._acquired, ctx, token, started),
            )
        return self._acquired(ctx, token, started, limiter.acquire(token, self.wait), None)

    def _acquired(
        self, ctx: CallContext, token: str, started: float, taken: bool, exc: Exception | None
    ) -> str | CallOutcome:
        if exc is not None:
            raise exc
        if taken:
            return token
        waited = clock.monotonic() - started if self.wait > 0 else 0.0
        refusal = ConcurrencyLimited(self.limiter.key, self.limit, waited)
        diagnosis = Diagnosis(Outcome.SHORT_CIRCUITED, refusal.error)
        return end_attempt(ctx, diagnosis, started, None, refusal)

    def exit(self, ctx: CallContext, state: str, outcome: CallOutcome) -> Step:
        limiter = self.limiter
        if ctx.is_async and limiter.awaits:
            # A release that fails is healed by the lease: the outcome stands.
            return Deferred(functools.partial(limiter.arelease, state), lambda _v, _e: outcome)
        limiter.release(state)
        return outcome

    def interrupted(self, ctx: CallContext, state: str, exc: BaseException) -> None:
        limiter = self.limiter
        if ctx.is_async and limiter.awaits:
            task = asyncio.get_running_loop().create_task(limiter.arelease(state))
            _RELEASING.add(task)
            task.add_done_callback(_RELEASING.discard)
            return
        limiter.release(state)


@layer_decorator(ConcurrencyOptions, ConcurrencyLimitLayer)
def concurrency_limit() -> None:
    """Allow at most `limit` attempts in flight per `key` (default: the function's qualified
    name), in this process or, with `state="redis://..."`, across the fleet.

    An attempt beyond the limit waits up to `wait` seconds for a slot (polling, awaited in
    async code), then ends with `short_circuited` (`ConcurrencyLimited`) without calling the
    function: `@retry` does not retry it, `@fallback` returns its value. A slot frees itself
    after `lease` seconds if its holder never returns it (a killed process). Place it inside
    `@retry` and `@circuit_breaker`, so it holds a slot only while the provider is called.
    """
