"""The per-call context: one value per guarded call, carried by a `contextvars.ContextVar`.

A call enters its outermost layer, which opens the context; every layer below joins it and
reports what it did as events (attempt started and ended, retry scheduled, fallback used, ...).
The audit layer turns those events into records; alerts and metrics read the same events.
Because it lives in a ContextVar, threads and asyncio tasks never share a context.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwed_guard import clock
from qwed_guard.outcomes import Classifier, Diagnosis, Outcome, WireFailure
from qwed_guard.verdicts import DEFAULT_RULES, VerdictRules

if TYPE_CHECKING:
    from qwed_guard.replies import CallReplies

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


@dataclass(slots=True)
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
    reused: int = 0
    """HTTP replies the attempt took from an earlier one instead of asking again (the guarded
    client does that after a transient failure: see `guarded_client(reuse_replies=...)`)."""


@dataclass(slots=True)
class Event:
    """Something a layer did during a call."""

    kind: str
    wall: float
    attempt: int
    data: Mapping[str, Any]


Listener = Callable[[Event], None]

_call_numbers = itertools.count(1)
_NOTHING_MUTED: frozenset[str] = frozenset()
_process_tag = ""


def _reset_process_tag() -> None:
    # Call ids must stay unique across processes appending to one trail, forks included.
    global _process_tag
    _process_tag = f"{os.getpid():x}{int(time.time() * 1000):x}"


_reset_process_tag()
os.register_at_fork(after_in_child=_reset_process_tag)


class CallContext:
    """Everything one guarded call accumulates on its way through the layers.

    A plain slotted class on purpose: one is made per call, on the success path too.
    """

    __slots__ = (
        "_call_id",
        "args",
        "attempt",
        "attempts",
        "classifier",
        "events",
        "fields",
        "function",
        "in_user_code",
        "kwargs",
        "last",
        "last_result",
        "listeners",
        "muted",
        "number",
        "policy_hash",
        "replies",
        "rules",
        "started",
        "wait_before",
        "wire",
    )

    def __init__(self, function: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.number = next(_call_numbers)
        self._call_id: str | None = None
        self.started = clock.monotonic()
        self.listeners: list[Listener] = []
        self.muted: frozenset[str] = _NOTHING_MUTED
        """Event kinds none of the current listeners wants (not even built for them): set by
        a listener that ignores them, cleared by whoever adds a listener that wants them."""
        self.events: list[Event] | None = None
        """Every event of the call, kept only after `keep_events()` (tests, debugging)."""
        self.attempts: list[Attempt] = []
        self.fields: dict[str, Any] = {}
        """Extra audit fields: `audit_context(...)` values and decorator-given context."""
        self.attempt = 1
        """The number of the attempt running now (retry sets it; 1 without retry)."""
        self.wait_before = 0.0
        self.wire: WireFailure | None = None
        """The last failing HTTP response of the current attempt, recorded by the client."""
        self.last: Diagnosis | None = None
        """How the last attempt ended."""
        self.last_result: Any = None
        self.classifier: Classifier | None = None
        self.policy_hash: str | None = None
        self.in_user_code = False
        """True while the wrapped function runs: a guarded call made inside it is its own."""
        self.replies: CallReplies | None = None
        """What the guarded client keeps of this call's HTTP replies, for its next attempts."""
        self.rules: VerdictRules = DEFAULT_RULES
        """How this call's results are judged (the stack's `verdict=`)."""

    @property
    def call_id(self) -> str:
        """Unique across processes and restarts; made only when someone asks for it."""
        if self._call_id is None:
            self._call_id = f"{_process_tag}-{self.number:x}"
        return self._call_id

    def keep_events(self) -> list[Event]:
        """Start keeping this call's events in `events` (from now on) and return the list."""
        if self.events is None:
            self.events = []
        return self.events

    def emit(self, kind: str, **data: Any) -> None:
        """Report an event to every listener (the audit trail, metrics) at once.

        Nothing is built when nobody listens: most calls are unaudited successes.
        """
        if (self.listeners and kind not in self.muted) or self.events is not None:
            event = Event(kind, clock.wall(), self.attempt, data)
            if self.events is not None:
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
