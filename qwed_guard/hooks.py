"""Hooks: what a guarded call did, as typed, immutable events, for anyone who listens.

A hook is called once when a guarded call starts, with the call (`CallContext`: function name,
call id, arguments, audit fields, policy hash, its attempts so far). It returns a *watcher* for
that call (a callable that receives each event) or None to sit the call out. Register a hook
for one function (`@observed(hook)`), for every function a policy wraps (`Policy(...,
hooks=[hook])`) or for the whole process (`add_hook(hook)`). The audit trail is such a hook;
metrics and traces are others.

A watcher that raises never breaks the call: the error is logged, scrubbed. The one exception
is `AuditError`, the audit trail's promise that no unaudited answer is returned: it fails the
call closed once the call has ended.

Nothing is built for a call nobody watches. A watcher may name, in `ignores`, the event types
it has no use for; when every watcher of a call ignores one, it is not even built.

Some things happen outside any call: an alert delivered by a channel's worker thread, audit
records committed by a sink's writer, the shared state store degraded. They go to *listeners*
(`add_listener`), process-wide, as `AlertDelivered`, `AuditCommitted` and `StoreDegraded`;
with nobody listening they cost one check of `listeners`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from qwed_guard.outcomes import Diagnosis, Outcome

if TYPE_CHECKING:
    from qwed_guard.alerts.record import Alert
    from qwed_guard.context import CallContext

__all__ = [
    "AlertDelivered",
    "AlertSent",
    "Attempt",
    "AttemptEnded",
    "AttemptStarted",
    "AuditCommitted",
    "BreakerChanged",
    "CallEnded",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "Hook",
    "Listener",
    "ProcessEvent",
    "RetryScheduled",
    "StoreDegraded",
    "Watcher",
    "add_hook",
    "add_listener",
    "emit",
    "lazy",
    "listeners",
    "process_hooks",
    "remove_hook",
    "remove_listener",
]


class Attempt(NamedTuple):
    """One try at the guarded function, as retry, hooks and the audit trail report it."""

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


# Every event carries the attempt running when it happened and the wall time, first.
# NamedTuples: immutable, and about three times cheaper to build than frozen dataclasses.


class AttemptStarted(NamedTuple):
    attempt: int
    wall: float
    wait_before: float

    @property
    def kind(self) -> str:
        return "attempt_started"


class AttemptEnded(NamedTuple):
    attempt: int
    wall: float
    record: Attempt
    result: Any
    """What the function returned, or the exception it raised."""
    diagnosis: Diagnosis

    @property
    def kind(self) -> str:
        return "attempt_ended"


class RetryScheduled(NamedTuple):
    attempt: int
    wall: float
    wait: float
    outcome: Outcome

    @property
    def kind(self) -> str:
        return "retry_scheduled"


class GaveUp(NamedTuple):
    attempt: int
    wall: float
    reason: str
    attempts: int

    @property
    def kind(self) -> str:
        return "gave_up"


class FallbackUsed(NamedTuple):
    attempt: int
    wall: float
    value: Any
    reason: str
    outcome: Outcome

    @property
    def kind(self) -> str:
        return "fallback_used"


class BreakerChanged(NamedTuple):
    attempt: int
    wall: float
    key: str
    old: str
    new: str
    reason: str
    recovery_timeout: float

    @property
    def kind(self) -> str:
        return "breaker_changed"


class AlertSent(NamedTuple):
    attempt: int
    wall: float
    alert: Alert

    @property
    def kind(self) -> str:
        return "alert_sent"


class CallEnded(NamedTuple):
    """The last event of a call: how it ended, after every layer had its say."""

    attempt: int
    wall: float
    diagnosis: Diagnosis
    result: Any
    """What the caller receives (a `GuardedResult` under `@fallback`), or None."""
    exception: BaseException | None
    """What the caller receives raised instead, if anything."""

    @property
    def kind(self) -> str:
        return "call_ended"


Event = (
    AttemptStarted
    | AttemptEnded
    | RetryScheduled
    | GaveUp
    | FallbackUsed
    | BreakerChanged
    | AlertSent
    | CallEnded
)


class Watcher(Protocol):
    """Receives one call's events, in order."""

    def __call__(self, event: Event, /) -> None: ...


Hook = Callable[["CallContext"], "Watcher | Callable[[Event], None] | None"]
"""Called when a guarded call starts; returns the call's watcher, or None."""


def lazy(factory: Callable[[], Hook]) -> Hook:
    """A hook made by `factory()` on the first call it sees, not before.

    For hooks whose setup costs (an exporter, a connection) and should cost nothing in a
    process that never makes a guarded call.
    """
    made: list[Hook] = []
    lock = threading.Lock()

    def hook(call: CallContext) -> Watcher | Callable[[Event], None] | None:
        if not made:
            with lock:
                if not made:
                    made.append(factory())
        return made[0](call)

    return hook


_process: tuple[Hook, ...] = ()
_process_lock = threading.Lock()


def add_hook(hook: Hook) -> Hook:
    """Watch every guarded call of this process with `hook`; returns it (for `remove_hook`)."""
    global _process
    if not callable(hook):
        raise TypeError(f"a hook is a callable, got {type(hook).__name__}")
    with _process_lock:
        _process = (*_process, hook)
    return hook


def remove_hook(hook: Hook) -> None:
    """Stop watching with a hook given to `add_hook` (a hook not added is ignored)."""
    global _process
    with _process_lock:
        _process = tuple(h for h in _process if h is not hook)


def process_hooks() -> tuple[Hook, ...]:
    """The hooks added with `add_hook`, in order."""
    return _process


# --- process events: what happens outside any call -------------------------------------


class AlertDelivered(NamedTuple):
    """A channel's worker thread finished with an alert (or dropped it)."""

    channel: str
    """The channel's name (`slack`, `webhook`, ...)."""
    result: str
    """`sent`, `failed` (given up) or `dropped` (queue full, or at shutdown)."""
    alerts: int = 1
    """How many alerts this reports (several dropped at shutdown)."""

    @property
    def kind(self) -> str:
        return "alert_delivered"


class AuditCommitted(NamedTuple):
    """A chained sink committed records (the caller's thread, or its group-commit writer)."""

    sink: str
    """The sink's kind: `jsonl`, `sqlite`, `postgres`."""
    fsync: str
    """Its fsync mode: `always`, `batch` or `none`."""
    events: tuple[str, ...]
    """The `event` field of each record committed (`attempt`, `call`)."""
    duration: float
    """Seconds the commit took, fsync included."""

    @property
    def kind(self) -> str:
        return "audit_committed"


class StoreDegraded(NamedTuple):
    """The shared state store became unreachable (`degraded`) or reachable again."""

    store: str
    """The store's kind (`redis`)."""
    degraded: bool
    reason: str

    @property
    def kind(self) -> str:
        return "store_degraded"


ProcessEvent = AlertDelivered | AuditCommitted | StoreDegraded
Listener = Callable[[ProcessEvent], None]

listeners: tuple[Listener, ...] = ()
"""The listeners of process events. Emitters check it before they build an event."""


def add_listener(listener: Listener) -> Listener:
    """Receive every process event (`AlertDelivered`, ...); returns it (for `remove_listener`)."""
    global listeners
    if not callable(listener):
        raise TypeError(f"a listener is a callable, got {type(listener).__name__}")
    with _process_lock:
        listeners = (*listeners, listener)
    return listener


def remove_listener(listener: Listener) -> None:
    """Stop a listener given to `add_listener` (one not added is ignored)."""
    global listeners
    with _process_lock:
        listeners = tuple(item for item in listeners if item is not listener)


def emit(event: ProcessEvent) -> None:
    """Hand a process event to every listener; a listener's error is logged, never raised."""
    for listener in listeners:
        try:
            listener(event)
        except Exception as exc:
            from loguru import logger

            from qwed_guard.redact import scrub

            name = getattr(listener, "__qualname__", type(listener).__qualname__)
            text = f"qwed_guard listener {name} failed: {type(exc).__name__}: {exc}"
            logger.error("{}", scrub(text))
