"""`@circuit_breaker`: stop calling a provider that is down, and probe it gently until it heals.

Without a breaker every call during an outage still waits out its whole retry schedule before
it falls back, and every worker keeps hammering a dead API. The breaker counts the outcome of
every attempt (it sits inside `@retry`); once failures cross a threshold it *opens*: calls fail
at once with the `short_circuited` outcome, which retry does not retry and `@fallback` turns into
its fallback value. After `recovery_timeout` it lets a few probe calls through (*half-open*) and
closes again after enough of them succeed, or re-opens on a failure.

All decisions are pure functions over a small JSON-able dict (`qwed_guard.breaker.machine`),
applied through the state store's one atomic `update`, so breakers sharing a key (in one
process, or across processes in Redis) see one state and admit exactly the configured number
of probes.
"""

from __future__ import annotations

from qwed_guard.breaker.breaker import Breaker
from qwed_guard.breaker.layer import (
    DEFAULT_FAILURE_ON,
    DEFAULT_FAILURE_THRESHOLD,
    BreakerOptions,
    CircuitBreakerLayer,
    CircuitOpen,
    circuit_breaker,
)
from qwed_guard.breaker.machine import BreakerState

__all__ = [
    "DEFAULT_FAILURE_ON",
    "DEFAULT_FAILURE_THRESHOLD",
    "Breaker",
    "BreakerOptions",
    "BreakerState",
    "CircuitBreakerLayer",
    "CircuitOpen",
    "circuit_breaker",
]
