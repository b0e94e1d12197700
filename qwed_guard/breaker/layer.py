"""`@circuit_breaker` and its layer: check the parameters, give each function its `Breaker`."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from qwed_guard import clock
from qwed_guard.breaker.breaker import PENDING, Breaker
from qwed_guard.breaker.machine import BreakerState, Rules, Ticket, Transition
from qwed_guard.context import CallContext
from qwed_guard.errors import QwedGuardError, bad_parameter, int_parameter
from qwed_guard.layer import CallOutcome, Deferred, Layer, Step, end_attempt, guard
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.state import MemoryStore, StateStore, store_from_url
from qwed_guard.verdicts import Judge, VerdictRules, as_rules

if TYPE_CHECKING:
    from qwed_guard.alerts.delivery import Worker

__all__ = [
    "DEFAULT_FAILURE_ON",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROBE_LEASE",
    "CircuitBreakerLayer",
    "CircuitOpen",
    "circuit_breaker",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_FAILURE_ON: frozenset[Outcome] = frozenset({Outcome.TRANSIENT, Outcome.PERMANENT})
"""Provider failures. Refuted and unverifiable answers are the model's fault, not an outage."""
DEFAULT_FAILURE_THRESHOLD = 5
"""Failed attempts in a row that open a breaker given no rule at all."""
DEFAULT_PROBE_LEASE = 60.0
"""Seconds a half-open probe holds its slot at most (a longer call loses it to a new probe)."""
_COUNTABLE = frozenset(
    {Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.REFUTED, Outcome.UNVERIFIABLE}
)
# Breakers given a `key=` but no `state=` share this store, so one key means one state.
_SHARED_STORE = MemoryStore()


class CircuitOpen(QwedGuardError):
    """The circuit breaker is open (or half-open with every probe slot taken): no call was made."""

    outcome: Outcome = Outcome.SHORT_CIRCUITED

    def __init__(self, key: str, state: BreakerState, retry_in: float | None) -> None:
        self.key = key
        self.state = state
        self.retry_in = retry_in
        """Seconds until the breaker admits probe calls (None while probes are in flight)."""
        if retry_in is not None:
            text = f"circuit breaker {key!r} is open; probing again in {retry_in:.3g} s"
        else:
            text = f"circuit breaker {key!r} is half-open and its probe calls are in flight"
        self.error: str = text
        super().__init__(text)


_MAX_RECOVERY = 366 * 86400.0
"""A breaker stays open a year at most: longer waits overflow the timers that use them."""


def _parse_failure_on(failure_on: Iterable[Outcome | str]) -> frozenset[Outcome]:
    if isinstance(failure_on, str):
        failure_on = [failure_on]
    names = ", ".join(sorted(o.value for o in _COUNTABLE))
    chosen: set[Outcome] = set()
    for item in failure_on:
        try:
            outcome = Outcome(item)
        except ValueError:
            raise bad_parameter(
                "failure_on", f"unknown outcome {item!r}; choose from {names}"
            ) from None
        if outcome not in _COUNTABLE:
            raise bad_parameter(
                "failure_on", f"{outcome.value} cannot count as a failure (choose from {names})"
            )
        chosen.add(outcome)
    if not chosen:
        raise bad_parameter("failure_on", "needs at least one outcome")
    return frozenset(chosen)


class CircuitBreakerLayer(Layer):
    """The breaker's parameters; `bind` gives each decorated function its `Breaker`."""

    kind = "circuit_breaker"

    def __init__(
        self,
        *,
        failure_threshold: int | None = None,
        recovery_timeout: float = 30.0,
        failure_rate: float | None = None,
        window: int = 20,
        min_calls: int = 10,
        half_open_probes: int = 1,
        success_threshold: int = 1,
        probe_lease: float = DEFAULT_PROBE_LEASE,
        failure_on: Collection[Outcome | str] = DEFAULT_FAILURE_ON,
        key: str | None = None,
        state: str | StateStore | None = None,
        notify: Any = None,
        verdict: VerdictRules | Judge | None = None,
    ) -> None:
        self.verdict = as_rules(verdict)
        if failure_threshold is not None:
            int_parameter("failure_threshold", failure_threshold)
        for name, value in (
            ("window", window),
            ("min_calls", min_calls),
            ("half_open_probes", half_open_probes),
            ("success_threshold", success_threshold),
        ):
            int_parameter(name, value)
        if failure_rate is not None:
            if isinstance(failure_rate, bool) or not isinstance(failure_rate, (int, float)):
                raise bad_parameter(
                    "failure_rate",
                    f"must be a number, got {type(failure_rate).__name__}",
                    wrong_type=True,
                )
            if not 0 < failure_rate <= 1:
                raise bad_parameter("failure_rate", f"must be in (0, 1], got {failure_rate}")
            if min_calls > window:
                raise bad_parameter("min_calls", f"must be <= window ({window}), got {min_calls}")
        if failure_threshold is None and failure_rate is None:
            # No rule given: the common one. Given only a rate, only the rate: a policy file
            # (TOML has no null) must be able to ask for a rate rule without a count rule.
            failure_threshold = DEFAULT_FAILURE_THRESHOLD
        if isinstance(recovery_timeout, bool) or not isinstance(recovery_timeout, (int, float)):
            raise bad_parameter(
                "recovery_timeout",
                f"must be a number of seconds, got {type(recovery_timeout).__name__}",
                wrong_type=True,
            )
        if recovery_timeout < 0:
            raise bad_parameter("recovery_timeout", f"must be >= 0, got {recovery_timeout}")
        if not recovery_timeout <= _MAX_RECOVERY:  # NaN too
            raise bad_parameter(
                "recovery_timeout",
                f"must be at most {_MAX_RECOVERY:g} seconds, got {recovery_timeout}",
            )
        if isinstance(probe_lease, bool) or not isinstance(probe_lease, (int, float)):
            raise bad_parameter(
                "probe_lease",
                f"must be a number of seconds, got {type(probe_lease).__name__}",
                wrong_type=True,
            )
        if not 0 < probe_lease <= _MAX_RECOVERY:  # NaN too
            raise bad_parameter(
                "probe_lease", f"must be > 0 and at most {_MAX_RECOVERY:g} s, got {probe_lease}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise bad_parameter("key", f"must be a non-empty string, got {key!r}", wrong_type=True)
        try:
            self._store: StateStore | None = None if state is None else store_from_url(state)
        except (TypeError, ValueError) as error:
            raise bad_parameter(
                "state", str(error).removeprefix("state: "), wrong_type=isinstance(error, TypeError)
            ) from None
        self.rules = Rules(
            failure_threshold,
            None if failure_rate is None else float(failure_rate),
            window,
            min_calls,
            float(recovery_timeout),
            half_open_probes,
            success_threshold,
            float(probe_lease),
        )
        self.failure_on = _parse_failure_on(failure_on)
        self.key = key
        self._workers: list[Worker] = []
        if notify is not None:
            # Imported only when asked for: the channels and their delivery threads.
            from qwed_guard.alerts.channels import build_channels
            from qwed_guard.alerts.delivery import Worker

            self._workers = [Worker(channel) for channel in build_channels(notify)]
        self._breaker: Breaker | None = None

    @property
    def breaker(self) -> Breaker:
        """This function's breaker (a layer gets one when it decorates a function)."""
        if self._breaker is None:
            raise AttributeError("this circuit_breaker layer has not decorated a function yet")
        return self._breaker

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> CircuitBreakerLayer:
        bound = copy.copy(self)
        if self._store is not None:
            store = self._store
        elif self.key is not None:
            store = _SHARED_STORE
        else:
            # Keyed by function and private to it: two functions that happen to share a
            # qualified name (closures, test re-definitions) never share a breaker by accident.
            store = MemoryStore()
        bound._breaker = Breaker(self.key or key, store, self.rules, self._workers)
        return bound

    def describe(self) -> str:
        r = self.rules
        parts = []
        if r.failure_threshold is not None:
            parts.append(f"failure_threshold={r.failure_threshold}")
        if r.failure_rate is not None:
            parts.append(f"failure_rate={r.failure_rate:g} of {r.window} (min {r.min_calls})")
        parts += [
            f"recovery_timeout={r.recovery_timeout:g} s",
            f"half_open_probes={r.half_open_probes}",
            f"success_threshold={r.success_threshold}",
            "failure_on=" + ",".join(sorted(o.value for o in self.failure_on)),
        ]
        if r.probe_lease != DEFAULT_PROBE_LEASE:
            parts.append(f"probe_lease={r.probe_lease:g} s")
        if self.key is not None:
            parts.append(f"key={self.key}")
        if self._workers:
            parts.append("notify=" + ",".join(w.channel.name for w in self._workers))
        return "circuit_breaker(" + "; ".join(parts) + ")"

    def enter(self, ctx: CallContext) -> Ticket | CallOutcome | Deferred:
        breaker = self.breaker
        if ctx.is_async:
            ticket = breaker.try_admit()
            if ticket is None:  # the shared store must be awaited
                return Deferred(breaker.aadmit, functools.partial(self._admitted, ctx))
        else:
            ticket = breaker.admit()
        return self._admitted(ctx, ticket, None)

    def _admitted(
        self, ctx: CallContext, ticket: Ticket | None, exc: Exception | None
    ) -> Ticket | CallOutcome:
        if exc is not None:
            raise exc
        assert ticket is not None
        breaker = self.breaker
        if ticket.kind == "rejected":
            started = clock.monotonic()  # no call: the attempt takes only this decision
            state = BreakerState.OPEN if ticket.retry_in is not None else BreakerState.HALF_OPEN
            refusal = CircuitOpen(breaker.key, state, ticket.retry_in)
            diagnosis = Diagnosis(Outcome.SHORT_CIRCUITED, refusal.error)
            return end_attempt(ctx, diagnosis, started, None, refusal)
        if ticket.transition is not None:
            breaker.announce(ctx, ticket.transition, None)
        return ticket

    def exit(self, ctx: CallContext, state: Ticket, outcome: CallOutcome) -> Step:
        diagnosis = outcome.diagnosis
        failed, error = self._judge(diagnosis)
        breaker = self.breaker
        if ctx.is_async:
            transition = breaker.try_report(state, failed, error)
            if transition is PENDING:
                return Deferred(
                    functools.partial(breaker.areport, state, failed, error),
                    functools.partial(self._reported, ctx, outcome),
                )
        else:
            transition = breaker.report(state, failed, error)
        if transition is not None:
            breaker.announce(ctx, transition, diagnosis)
        return outcome

    def _reported(
        self,
        ctx: CallContext,
        outcome: CallOutcome,
        transition: Transition | None,
        exc: Exception | None,
    ) -> CallOutcome:
        if exc is not None:
            raise exc
        if transition is not None:
            self.breaker.announce(ctx, transition, outcome.diagnosis)
        return outcome

    def interrupted(self, ctx: CallContext, state: Ticket, exc: BaseException) -> None:
        # Free a probe slot, count nothing. An async call does that without blocking its loop
        # (the slot's lease frees it anyway should the loop stop first).
        breaker = self.breaker
        if ctx.is_async:
            if breaker.try_report(state, None, None) is PENDING:
                task = asyncio.get_running_loop().create_task(breaker.areport(state, None, None))
                _RELEASING.add(task)
                task.add_done_callback(_RELEASING.discard)
            return
        breaker.report(state, None, None)

    def _judge(self, diagnosis: Diagnosis) -> tuple[bool | None, str | None]:
        if diagnosis.outcome is Outcome.SHORT_CIRCUITED:
            return None, None  # a refusal by a breaker: not the provider's doing
        # A deterministic refusal is an answer: the provider worked.
        return diagnosis.outcome in self.failure_on and not diagnosis.final, diagnosis.error


_RELEASING: set[asyncio.Task[Any]] = set()
"""Probe slots being freed after a cancellation (a reference, so the task is not collected)."""


@overload
def circuit_breaker(fn: F, /) -> F: ...


@overload
def circuit_breaker(
    *,
    failure_threshold: int | None = None,
    recovery_timeout: float = 30.0,
    failure_rate: float | None = None,
    window: int = 20,
    min_calls: int = 10,
    half_open_probes: int = 1,
    success_threshold: int = 1,
    probe_lease: float = DEFAULT_PROBE_LEASE,
    failure_on: Collection[Outcome | str] = DEFAULT_FAILURE_ON,
    key: str | None = None,
    state: str | StateStore | None = None,
    notify: Any = None,
    verdict: VerdictRules | Judge | None = None,
) -> Callable[[F], F]: ...


def circuit_breaker(fn: Callable[..., Any] | None = None, /, **params: Any) -> Any:
    """Stop calling a failing provider; fail fast with `short_circuited` until it heals.

    Opens after `failure_threshold` failed attempts in a row, or (with `failure_rate`) when at
    least that share of the last `window` attempts failed, once `min_calls` have been seen.
    Without either rule it uses 5 in a row; with only `failure_rate`, only the rate rule.
    While open, calls raise `CircuitOpen` at once without calling the function; `@retry` does
    not retry that and `@fallback` returns its value. After `recovery_timeout` seconds it admits
    up to `half_open_probes` probe calls at a time, closes after `success_threshold` of them
    succeed and re-opens on a failure. A probe holds its slot for `probe_lease` seconds at
    most: a probe whose process died (or that hangs) frees it then. `failure_on` says which
    outcomes are failures (default transient and permanent). State is kept per `key`
    (default: the function's qualified name); functions given the same `key` share one
    breaker; `state` is where it lives. `notify` (the alerter's channels: `"log"`,
    `{"slack": {...}}`, ...) gets one `triggered` alert when the breaker opens and one
    `resolved` when it closes again.
    Place it inside `@retry`, so it counts every attempt. `fn.breaker` shows its state.
    """
    layer = CircuitBreakerLayer(**params)
    if fn is not None:
        return guard(fn, layer)

    def decorate(func: F) -> F:
        return guard(func, layer)

    return decorate
