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
    "AlertSent",
    "Attempt",
    "AttemptEnded",
    "AttemptStarted",
    "BreakerChanged",
    "CallEnded",
    "Event",
    "FallbackUsed",
    "GaveUp",
    "Hook",
    "RetryScheduled",
    "Watcher",
    "add_hook",
    "lazy",
    "process_hooks",
    "remove_hook",
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
