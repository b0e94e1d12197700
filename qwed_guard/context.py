"""The per-call context: one value per guarded call, carried by a `contextvars.ContextVar`.

A call enters its outermost layer, which opens the context; every layer below joins it and
reports what it did as events (attempt started and ended, retry scheduled, fallback used, ...).
The audit layer turns those events into records; alerts and metrics read the same events.
Because it lives in a ContextVar, threads and asyncio tasks never share a context.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from qwed_guard import clock
from qwed_guard.outcomes import Classifier, Diagnosis, Outcome, WireFailure

__all__ = [
    "Attempt",
    "CallContext",
    "Event",
    "audit_context",
    "current",
    "current_wire",
]

# Event kinds, as every layer and sink spells them.
ATTEMPT_STARTED = "attempt_started"
ATTEMPT_ENDED = "attempt_ended"
RETRY_SCHEDULED = "retry_scheduled"
GAVE_UP = "gave_up"
FALLBACK_USED = "fallback_used"
BREAKER_CHANGED = "breaker_changed"
ALERT_SENT = "alert_sent"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at the guarded function, as retry and the audit trail report it."""

    number: int
    outcome: Outcome
    error: str | None
    duration: float
    """Seconds the attempt took."""
    wait_before: float
    """Seconds waited before this attempt started (0 for the first)."""
    status: int | None = None
    """The HTTP status behind a failure, when the guarded client saw it."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something a layer did during a call."""

    kind: str
    wall: float
    attempt: int
    data: Mapping[str, Any]


Listener = Callable[[Event], None]

_call_ids = itertools.count(1)
_process_tag = f"{os.getpid():x}"


def _new_call_id() -> str:
    # Unique within the process and across processes sharing a trail; cheap to make.
    return f"{_process_tag}-{clock.wall():.0f}-{next(_call_ids)}"


@dataclass(slots=True, eq=False)
class CallContext:
    """Everything one guarded call accumulates on its way through the layers."""

    function: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    call_id: str = field(default_factory=_new_call_id)
    started: float = field(default_factory=clock.monotonic)
    events: list[Event] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    """Extra audit fields: `audit_context(...)` values and decorator-given context."""
    attempt: int = 1
    """The number of the attempt running now (retry sets it; 1 without retry)."""
    wait_before: float = 0.0
    wire: WireFailure | None = None
    """The last failing HTTP response of the current attempt, recorded by the guarded client."""
    last: Diagnosis | None = None
    """How the last attempt ended."""
    last_result: Any = None
    classifier: Classifier | None = None
    policy_hash: str | None = None
    in_user_code: bool = False
    """True while the wrapped function runs: a guarded call made from inside it is its own call."""

    def emit(self, kind: str, **data: Any) -> None:
        """Report an event: kept on the context and handed to every listener at once."""
        event = Event(kind, clock.wall(), self.attempt, data)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)


_current: ContextVar[CallContext | None] = ContextVar("qwed_guard_call", default=None)
_extra_fields: ContextVar[Mapping[str, Any] | None] = ContextVar("qwed_guard_fields", default=None)


def current() -> CallContext | None:
    """The context of the guarded call running in this thread or task, if any."""
    return _current.get()


def current_wire() -> WireFailure | None:
    """The failing response recorded for the attempt running now, if any."""
    ctx = _current.get()
    return ctx.wire if ctx is not None else None


def record_wire(failure: WireFailure) -> None:
    """Called by the guarded client's response hook for every failing HTTP response."""
    ctx = _current.get()
    if ctx is not None:
        ctx.wire = failure


def open_call(function: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> CallContext:
    ctx = CallContext(function, args, kwargs)
    extra = _extra_fields.get()
    if extra:
        ctx.fields.update(extra)
    return ctx


@contextmanager
def audit_context(**fields: Any) -> Iterator[None]:
    """Attach fields (user_id, session_id, ...) to every guarded call made inside the block.

    Nested blocks add to the outer ones; threads and asyncio tasks each see their own.
    """
    merged = {**(_extra_fields.get() or {}), **fields}
    token = _extra_fields.set(merged)
    try:
        yield
    finally:
        _extra_fields.reset(token)
