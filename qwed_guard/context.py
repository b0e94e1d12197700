"""The per-call context: one value per guarded call, carried by a `contextvars.ContextVar`.

A call's wrapper opens the context; every layer of the stack sees it and reports what it did
as typed events (see `qwed_guard.hooks`) to the call's watchers: the audit trail, metrics,
traces, a user's hook. Because it lives in a ContextVar, threads and asyncio tasks never share
a context.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from qwed_guard import clock
from qwed_guard.hooks import Attempt, Event
from qwed_guard.outcomes import Classifier, WireFailure
from qwed_guard.verdicts import DEFAULT_RULES, VerdictRules

if TYPE_CHECKING:
    from qwed_guard.replies import CallReplies

__all__ = [
    "Attempt",
    "CallContext",
    "audit_context",
    "current",
    "current_wire",
]

Listener = Callable[[Event], None]

_call_numbers = itertools.count(1)
_NOTHING_MUTED: frozenset[type] = frozenset()
_process_tag = ""


def _reset_process_tag() -> None:
    # Call ids must stay unique across processes appending to one trail, forks included.
    global _process_tag
    _process_tag = f"{os.getpid():x}{int(time.time() * 1000):x}"


_reset_process_tag()
os.register_at_fork(after_in_child=_reset_process_tag)


class CallContext:
    """Everything one guarded call accumulates on its way through the layers.

    Hooks receive it when a call starts: read `function`, `call_id`, `args`, `kwargs`,
    `fields`, `policy_hash`, `started` and `attempts`; the rest belongs to the layers.
    A plain slotted class on purpose: one is made per call, on the success path too.
    """

    __slots__ = (
        "_call_id",
        "args",
        "attempt",
        "attempts",
        "classifier",
        "events",
        "failure",
        "fields",
        "function",
        "in_user_code",
        "is_async",
        "kwargs",
        "listeners",
        "muted",
        "number",
        "policy_hash",
        "reasks",
        "replies",
        "rules",
        "started",
        "traceparent",
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
        """This call's watchers (see `qwed_guard.hooks`)."""
        self.muted: frozenset[type] = _NOTHING_MUTED
        """Event types no watcher of this call wants: not even built."""
        self.events: list[Event] | None = None
        """Every event of the call, kept only after `keep_events()` (tests, debugging)."""
        self.failure: BaseException | None = None
        """An `AuditError` a watcher raised: the call fails closed when it ends."""
        self.attempts: list[Attempt] = []
        extra = _extra_fields.get()
        self.fields: dict[str, Any] = dict(extra) if extra else {}
        """Extra audit fields: `audit_context(...)` values and decorator-given context."""
        self.attempt = 1
        """The number of the attempt running now (retry sets it; 1 without retry)."""
        self.wait_before = 0.0
        self.reasks = 0
        """Wrong answers (refuted, unverifiable) retry has asked again after, in its loop."""
        self.wire: WireFailure | None = None
        """The last failing HTTP response of the current attempt, recorded by the client."""
        self.classifier: Classifier | None = None
        self.policy_hash: str | None = None
        self.in_user_code = False
        """True while the wrapped function runs: a guarded call made inside it is its own."""
        self.is_async = False
        self.replies: CallReplies | None = None
        """What the guarded client keeps of this call's HTTP replies, for its next attempts."""
        self.rules: VerdictRules = DEFAULT_RULES
        """How this call's results are judged (the stack's `verdict=`)."""
        self.traceparent: str | None = None
        """The call's W3C trace context, set by the tracing hook; audit records carry it."""

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

    def wants(self, kind: type) -> bool:
        """Whether an event of this type has anyone to receive it (build it only then)."""
        return (bool(self.listeners) and kind not in self.muted) or self.events is not None

    def send(self, event: Event) -> None:
        """Hand `event` to every watcher of the call; a watcher's error never breaks it."""
        if self.events is not None:
            self.events.append(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:
                hook_failed(self, listener, exc)


def hook_failed(ctx: CallContext, listener: Any, exc: Exception) -> None:
    """Log a hook's error (scrubbed); an `AuditError` fails the call closed instead."""
    from qwed_guard.errors import AuditError

    if isinstance(exc, AuditError):
        # The audit trail's promise: the call fails closed, once it has ended.
        if ctx.failure is None:
            ctx.failure = exc
        return
    from loguru import logger

    from qwed_guard.redact import scrub

    name = getattr(listener, "__qualname__", type(listener).__qualname__)
    logger.error("{}", scrub(f"qwed_guard hook {name} failed: {type(exc).__name__}: {exc}"))


CURRENT: ContextVar[CallContext | None] = ContextVar("qwed_guard_call", default=None)
"""The call running in this thread or task; set by the wrapper that opened it."""
_extra_fields: ContextVar[Mapping[str, Any] | None] = ContextVar("qwed_guard_fields", default=None)


def current() -> CallContext | None:
    """The context of the guarded call running in this thread or task, if any."""
    return CURRENT.get()


def current_wire() -> WireFailure | None:
    """The failing response recorded for the attempt running now, if any."""
    ctx = CURRENT.get()
    return ctx.wire if ctx is not None else None


def record_wire(failure: WireFailure) -> None:
    """Called by the guarded client's response hook for every failing HTTP response."""
    ctx = CURRENT.get()
    if ctx is not None:
        ctx.wire = failure


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
