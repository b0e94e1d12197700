"""`@circuit_breaker` and its layer: check the parameters, give each function its `Breaker`."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwed_guard import clock
from qwed_guard.breaker.breaker import PENDING, Breaker
from qwed_guard.breaker.machine import BreakerState, Rules, Ticket, Transition
from qwed_guard.context import CallContext
from qwed_guard.errors import MAX_COUNT, QwedGuardError
from qwed_guard.layer import CallOutcome, Deferred, Layer, Step, end_attempt
from qwed_guard.options import (
    CHANNELS,
    STRING,
    Options,
    Problem,
    data,
    integer,
    judged_by,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    outcomes,
    text,
)
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.state import MemoryStore, StateStore, configured_store, store_for
from qwed_guard.verdicts import Judge, VerdictRules, as_rules

if TYPE_CHECKING:
    from qwed_guard.alerts.delivery import Worker

__all__ = [
    "DEFAULT_FAILURE_ON",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROBE_LEASE",
    "BreakerOptions",
    "CircuitBreakerLayer",
    "CircuitOpen",
    "circuit_breaker",
]

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


def _count(default: Any, doc: str, *, optional: bool = False) -> Any:
    return integer(default, 1, MAX_COUNT, doc, optional=optional)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOptions(Options):
    """`@circuit_breaker`'s parameters (see `circuit_breaker`)."""

    failure_threshold: int | None = _count(
        None, "Failed attempts in a row that open it.", optional=True
    )
    recovery_timeout: float = number(
        30.0, 0, _MAX_RECOVERY, "Seconds open before probing.", what="a number of seconds"
    )
    failure_rate: float | None = number(
        None,
        0,
        1,
        "Opens when this share of the window failed.",
        above=True,
        optional=True,
        span="in (0, 1]",
    )
    window: int = _count(20, "Attempts the failure rate is computed over.")
    min_calls: int = _count(10, "Attempts seen before the rate rule applies.")
    half_open_probes: int = _count(1, "Probe calls let through at a time while half-open.")
    success_threshold: int = _count(1, "Successful probes that close it.")
    probe_lease: float = number(
        DEFAULT_PROBE_LEASE,
        0,
        _MAX_RECOVERY,
        "Seconds a probe holds its slot at most (a dead process frees it then).",
        above=True,
        what="a number of seconds",
    )
    failure_on: Collection[Outcome | str] = outcomes(
        DEFAULT_FAILURE_ON,
        _COUNTABLE,
        "{} cannot count as a failure",
        "Outcomes counted as failures.",
        nonempty=True,
    )
    key: str | None = text(None, "Names the state; functions with one key share a breaker.")
    state: str | StateStore | None = data(None, "Where the state lives (a store URL).", STRING)
    notify: Any = data(None, "Alert channels told when it opens and closes.", CHANNELS)
    verdict: VerdictRules | Judge | None = judged_by()

    @classmethod
    def relations(cls, values: Mapping[str, Any]) -> Iterator[Problem]:
        window, least = values["window"], values["min_calls"]
        if values["failure_rate"] is not None and least > window:
            yield Problem("min_calls", f"must be <= window ({window}), got {least}")


class CircuitBreakerLayer(Layer):
    """The breaker's parameters; `bind` gives each decorated function its `Breaker`."""

    kind = "circuit_breaker"
    options_type = BreakerOptions
    __signature__ = layer_signature(BreakerOptions)

    def __init__(self, options: BreakerOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(BreakerOptions, options, params)
        self.verdict = as_rules(o.verdict)
        threshold = o.failure_threshold
        if threshold is None and o.failure_rate is None:
            # No rule given: the common one. Given only a rate, only the rate: a policy file
            # (TOML has no null) must be able to ask for a rate rule without a count rule.
            threshold = DEFAULT_FAILURE_THRESHOLD
        self._store = configured_store(o.state)
        self.rules = Rules(
            threshold,
            None if o.failure_rate is None else float(o.failure_rate),
            o.window,
            o.min_calls,
            float(o.recovery_timeout),
            o.half_open_probes,
            o.success_threshold,
            float(o.probe_lease),
        )
        failure_on = [o.failure_on] if isinstance(o.failure_on, str) else o.failure_on
        self.failure_on = frozenset(Outcome(item) for item in failure_on)
        self.key = o.key
        self._workers: list[Worker] = []
        if o.notify is not None:
            # Imported only when asked for: the channels and their delivery threads.
            from qwed_guard.alerts.channels import build_channels
            from qwed_guard.alerts.delivery import Worker

            self._workers = [Worker(channel) for channel in build_channels(o.notify)]
        self._breaker: Breaker | None = None

    @property
    def breaker(self) -> Breaker:
        """This function's breaker (a layer gets one when it decorates a function)."""
        if self._breaker is None:
            raise AttributeError("this circuit_breaker layer has not decorated a function yet")
        return self._breaker

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> CircuitBreakerLayer:
        bound = copy.copy(self)
        store = store_for(self._store, self.key, _SHARED_STORE)
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
        outcome = diagnosis.outcome
        if outcome is _SHORT_CIRCUITED:
            return None, None  # a refusal by a breaker: not the provider's doing
        # A deterministic refusal is an answer: the provider worked.
        return outcome in self.failure_on and not diagnosis.final, diagnosis.error


_SHORT_CIRCUITED = Outcome.SHORT_CIRCUITED  # looked up once: every attempt is judged
_RELEASING: set[asyncio.Task[Any]] = set()
"""Probe slots being freed after a cancellation (a reference, so the task is not collected)."""


@layer_decorator(BreakerOptions, CircuitBreakerLayer)
def circuit_breaker() -> None:
    """Stop calling a failing provider; fail fast with `short_circuited` until it heals.

    Opens after `failure_threshold` failed attempts in a row, or (with `failure_rate`) when at
    least that share of the last `window` attempts failed, once `min_calls` have been seen.
    Without either rule it uses 5 in a row; with only `failure_rate`, only the rate rule.
    While open, calls raise `CircuitOpen` at once without calling the function; `@retry` does
    not retry that and `@fallback` returns its value. After `recovery_timeout` seconds it admits
    up to `half_open_probes` probe calls at a time, closes after `success_threshold` of them
    succeed and re-opens on a failure. `failure_on` says which outcomes are failures (default
    transient and permanent). State is kept per `key` (default: the function's qualified
    name); functions given the same `key` share one breaker; `state` is where it lives.
    `notify` (the alerter's channels: `"log"`, `{"slack": {...}}`, ...) gets one `triggered`
    alert when the breaker opens and one `resolved` when it closes again.
    Place it inside `@retry`, so it counts every attempt. `fn.breaker` shows its state.
    The parameters, their bounds and docs are `BreakerOptions`'s fields.
    """
