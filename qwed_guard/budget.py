"""`@retry_budget`: retries capped at a share of the calls, per key, across the fleet.

When a provider degrades, every worker retrying each call up to `max_tries` multiplies the load
exactly when it hurts. A retry budget (Finagle's and Envoy's, gRPC's retry throttling) allows
retries only while they stay under `ratio` of the calls made over the last `window` seconds,
plus `min_per_second` so a quiet function can still retry. It watches the call (wherever it
sits in the stack) and counts it once when it starts; the retry loop asks it before each wait,
and a spent budget ends the call the way `max_tries` does: `VerificationFailed`, whose reason
(and the audit record's) starts with "retry budget spent".

State: a sliding window of two `window`-long buckets. Retries are counted with the store's
atomic `update`, so the bound holds across processes sharing a store. Calls are counted in the
in-process store under its lock; in a shared store (Redis) as a counter sent with the store's
next round trip, so a call costs no extra trip: other processes' calls may be seen a little
late, which only makes the budget stricter.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from qwed_guard import clock
from qwed_guard.context import CallContext
from qwed_guard.hooks import (
    AlertSent,
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    RetryScheduled,
)
from qwed_guard.layer import Layer
from qwed_guard.options import (
    STRING,
    Options,
    data,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    text,
)
from qwed_guard.state import MemoryStore, State, StateStore, configured_store, store_for
from qwed_guard.state.base import AsyncStateStore, SharedStore

__all__ = ["RetryBudget", "RetryBudgetLayer", "RetryBudgetOptions", "budget_of", "retry_budget"]


_PREFIX = "budget:"
_SHARED_STORE = MemoryStore()
"""Budgets given a `key=` but no `state=` share this store, so one key means one budget."""
_CALLS: dict[int, tuple[CallContext, RetryBudget]] = {}
"""The calls under way that have a budget, by context id (each removed when its call ends)."""
_MAX_WINDOW = 86400.0


class RetryBudget:
    """One key's budget: `ratio` of the calls over `window` seconds, plus `min_per_second`."""

    def __init__(
        self, key: str, store: StateStore, ratio: float, min_per_second: float, window: float
    ) -> None:
        self.key = key
        self.store = store
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._state_key = _PREFIX + key
        self._shared: SharedStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, SharedStore) else None
        )
        self._async: AsyncStateStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, AsyncStateStore) else None
        )

    def _calls_counter(self, bucket: int) -> str:
        return f"{self._state_key}:calls:{bucket}"

    def _now(self) -> tuple[int, float]:
        """The current bucket, and how far into it we are (0..1)."""
        position = clock.wall() / self.window
        bucket = math.floor(position)
        return bucket, position - bucket

    def count_call(self) -> None:
        """One more call (no I/O with a shared store: the count goes with its next trip)."""
        bucket, _ = self._now()
        if self._shared is not None:
            self._shared.add(self._calls_counter(bucket), 1, ttl=2 * self.window + 1)
        else:
            self.store.update(self._state_key, partial(_count_call, bucket))

    def spend(self) -> str | None:
        """Take one retry: None when the budget allows it, else why not."""
        bucket, into = self._now()
        calls = None
        if self._shared is not None:
            counters = [self._calls_counter(bucket - 1), self._calls_counter(bucket)]
            calls = tuple(self._shared.counts(counters))
        return self.store.update(self._state_key, self._change(bucket, into, calls))

    async def aspend(self) -> str | None:
        """`spend`, awaited on a shared store's async client."""
        store = self._async
        if store is None:
            return self.spend()
        bucket, into = self._now()
        calls = None
        if self._shared is not None:
            counters = [self._calls_counter(bucket - 1), self._calls_counter(bucket)]
            calls = tuple(await self._shared.acounts(counters))
        return await store.aupdate(self._state_key, self._change(bucket, into, calls))

    @property
    def awaits(self) -> bool:
        """True when spending is I/O an async call awaits."""
        return self._async is not None

    def snapshot(self) -> dict[str, Any]:
        """Calls and retries in the current window, and the retries it allows."""
        bucket, into = self._now()
        s = _roll(self.store.get(self._state_key), bucket)
        calls = s["calls"]
        if self._shared is not None:
            counters = [self._calls_counter(bucket - 1), self._calls_counter(bucket)]
            calls = self._shared.counts(counters)
        seen = calls[0] * (1 - into) + calls[1]
        return {
            "key": self.key,
            "calls": seen,
            "retries": s["retries"][0] * (1 - into) + s["retries"][1],
            "allowed": self.min_per_second * self.window + self.ratio * seen,
        }

    def _change(
        self, bucket: int, into: float, calls: tuple[int, ...] | None
    ) -> Callable[[State | None], tuple[State | None, str | None]]:
        def change(state: State | None) -> tuple[State | None, str | None]:
            s = _roll(state, bucket)
            prev, cur = calls if calls is not None else s["calls"]
            seen = prev * (1 - into) + cur
            retries = s["retries"][0] * (1 - into) + s["retries"][1]
            allowed = self.min_per_second * self.window + self.ratio * seen
            if retries + 1 > allowed:
                reason = (
                    f"retry budget spent: {retries:.0f} retries for {seen:.0f} calls in the "
                    f"last {self.window:g} s (allowed: {self.ratio:.0%} of the calls + "
                    f"{self.min_per_second:g}/s)"
                )
                return state, reason  # nothing changes: no write
            s["retries"] = [s["retries"][0], s["retries"][1] + 1]
            return s, None

        return change


def _roll(state: State | None, bucket: int) -> State:
    """The state moved on to `bucket`: the buckets before the previous one are forgotten."""
    if state is None or state.get("bucket", bucket - 2) < bucket - 1:
        return {"bucket": bucket, "calls": [0, 0], "retries": [0, 0]}
    if state["bucket"] == bucket - 1:
        return {
            "bucket": bucket,
            "calls": [state["calls"][1], 0],
            "retries": [state["retries"][1], 0],
        }
    return {"bucket": bucket, "calls": list(state["calls"]), "retries": list(state["retries"])}


def _count_call(bucket: int, state: State | None) -> tuple[State | None, None]:
    s = _roll(state, bucket)
    s["calls"] = [s["calls"][0], s["calls"][1] + 1]
    return s, None


def budget_of(ctx: CallContext) -> RetryBudget | None:
    """The retry budget of the call `ctx` (set by its `@retry_budget` layer), if any."""
    if not _CALLS:
        return None
    found = _CALLS.get(id(ctx))
    if found is None or found[0] is not ctx:
        return None
    return found[1]


_ALL_BUT_THE_END: frozenset[type] = frozenset(
    {AttemptStarted, AttemptEnded, RetryScheduled, GaveUp, FallbackUsed, BreakerChanged, AlertSent}
)


class _Watch:
    """Counts the call when it starts and forgets it when it ends."""

    __slots__ = ("number",)
    ignores = _ALL_BUT_THE_END

    def __init__(self, number: int) -> None:
        self.number = number

    def __call__(self, event: Event) -> None:
        if type(event) is CallEnded:
            _CALLS.pop(self.number, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetOptions(Options):
    """`@retry_budget`'s parameters (see `retry_budget`)."""

    ratio: float = number(0.2, 0, 100, "Retries allowed per call over the window (0.2: 1 in 5).")
    min_per_second: float = number(1.0, 0, 1e6, "Retries allowed per second besides the ratio.")
    window: float = number(
        10.0, 0, _MAX_WINDOW, "Seconds the calls and retries are counted over.", above=True
    )
    key: str | None = text(None, "Names the budget; functions with one key share it.")
    state: str | StateStore | None = data(None, "Where the counts live (a store URL).", STRING)


class RetryBudgetLayer(Layer):
    """The budget's parameters; `bind` gives each decorated function its `RetryBudget`."""

    kind = "retry_budget"
    options_type = RetryBudgetOptions
    __signature__ = layer_signature(RetryBudgetOptions)

    def __init__(self, options: RetryBudgetOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(RetryBudgetOptions, options, params)
        self.ratio = float(o.ratio)
        self.min_per_second = float(o.min_per_second)
        self.window = float(o.window)
        key, state = o.key, o.state
        self.key = key
        self._store = configured_store(state)
        self._budget: RetryBudget | None = None
        self.hooks = (self._hook,)

    @property
    def budget(self) -> RetryBudget:
        """This function's budget (a layer gets one when it decorates a function)."""
        if self._budget is None:
            raise AttributeError("this retry_budget layer has not decorated a function yet")
        return self._budget

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> RetryBudgetLayer:
        bound = copy.copy(self)
        store = store_for(self._store, self.key, _SHARED_STORE)
        bound._budget = RetryBudget(
            self.key or key, store, self.ratio, self.min_per_second, self.window
        )
        bound.hooks = (bound._hook,)
        return bound

    def describe(self) -> str:
        parts = [
            f"ratio={self.ratio:g}",
            f"min_per_second={self.min_per_second:g}",
            f"window={self.window:g} s",
        ]
        if self.key is not None:
            parts.append(f"key={self.key}")
        return "retry_budget(" + "; ".join(parts) + ")"

    def _hook(self, ctx: CallContext) -> _Watch:
        budget = self.budget
        budget.count_call()
        _CALLS[id(ctx)] = (ctx, budget)
        return _Watch(id(ctx))


@layer_decorator(RetryBudgetOptions, RetryBudgetLayer)
def retry_budget() -> None:
    """Let the `@retry` inside retry only while retries stay under a share of the calls.

    Over the last `window` seconds, retries may number `ratio` of the calls (0.2: one retry per
    five calls) plus `min_per_second` x `window`. When the budget is spent, a retryable failure
    is not retried: the call ends with `VerificationFailed`, reason "retry budget spent: ...".
    State is kept per `key` (default: the function's qualified name); `state` is where it
    lives: `"redis://..."` makes it one budget for the whole fleet. It may sit anywhere in the
    stack: it watches the whole call, as `@observed` hooks do.
    """
