"""`@circuit_breaker`: stop calling a provider that is down, and probe it gently until it heals.

Without a breaker every call during an outage still waits out its whole retry schedule before
it falls back, and every worker keeps hammering a dead API. The breaker counts the outcome of
every attempt (it sits inside `@retry`); once failures cross a threshold it *opens*: calls fail
at once with the `short_circuited` outcome, which retry does not retry and `@fallback` turns into
its fallback value. After `recovery_timeout` it lets a few probe calls through (*half-open*) and
closes again after enough of them succeed, or re-opens on a failure.

All decisions are pure functions over a small JSON-able dict, applied through the state store's
one atomic `update`, so breakers sharing a key (in one process, or later across processes in
Redis) see one state and admit exactly the configured number of probes.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from qwed_guard import clock
from qwed_guard.context import ALERT_SENT, BREAKER_CHANGED, CallContext
from qwed_guard.errors import QwedGuardError, bad_parameter
from qwed_guard.layer import Layer, call_diagnosis, record_attempt
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
from qwed_guard.outcomes import Diagnosis, Outcome, scrub
from qwed_guard.state import MemoryStore, State, StateStore, store_from_url
from qwed_guard.verdicts import Judge, VerdictRules, as_rules

if TYPE_CHECKING:
    from qwed_guard.alerts import Alert, AlertHistory
    from qwed_guard.alerts.delivery import Worker

__all__ = [
    "DEFAULT_FAILURE_ON",
    "Breaker",
    "BreakerOptions",
    "BreakerState",
    "CircuitBreakerLayer",
    "CircuitOpen",
    "circuit_breaker",
]


class BreakerState(enum.StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    """Calls go through; failures are counted."""
    OPEN = "open"
    """No call is made until `recovery_timeout` has passed."""
    HALF_OPEN = "half_open"
    """A limited number of probe calls go through to test whether the provider has healed."""

    def __str__(self) -> str:
        return self.value


DEFAULT_FAILURE_ON: frozenset[Outcome] = frozenset({Outcome.TRANSIENT, Outcome.PERMANENT})
"""Provider failures. Refuted and unverifiable answers are the model's fault, not an outage."""
DEFAULT_FAILURE_THRESHOLD = 5
"""Failed attempts in a row that open a breaker given no rule at all."""
_COUNTABLE = frozenset(
    {Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.REFUTED, Outcome.UNVERIFIABLE}
)
_STORE_PREFIX = "breaker:"
_DEDUP_PREFIX = "qwed-guard:breaker:"
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


# ---------------------------------------------------------------- the pure state machine


@dataclass(frozen=True, slots=True)
class _Rules:
    failure_threshold: int | None
    failure_rate: float | None
    window: int
    min_calls: int
    recovery_timeout: float
    half_open_probes: int
    success_threshold: int

    def trips(self, s: State) -> _Trip | None:
        """Why a closed breaker must open now, if it must."""
        threshold = self.failure_threshold
        if threshold is not None and s["consecutive"] >= threshold:
            text = f"{s['consecutive']} consecutive failures (threshold {threshold})"
            return _Trip("consecutive", s["consecutive"], None, text)
        if self.failure_rate is not None:
            recent: list[int] = s["recent"]
            if len(recent) >= self.min_calls:
                failed = sum(recent)
                rate = failed / len(recent)
                if rate >= self.failure_rate:
                    text = (
                        f"failure rate {rate:.0%} over the last {len(recent)} calls "
                        f"(threshold {self.failure_rate:.0%})"
                    )
                    return _Trip("rate", failed, rate, text)
        return None


class _Trip(NamedTuple):
    rule: Literal["consecutive", "rate"]
    failures: int
    rate: float | None
    text: str


class _Transition(NamedTuple):
    old: BreakerState
    new: BreakerState
    reason: str
    rule: str | None
    """The rule that opened the breaker this outage: "consecutive" or "rate"."""
    failures: int
    """The failures that made that rule trip."""
    rate: float | None


class _Ticket(NamedTuple):
    """What admission decided for one attempt."""

    kind: str
    """"call" (closed), "probe" (half-open) or "rejected"."""
    gen: int
    """The state generation it was admitted in: a result from an older one changes nothing."""
    transition: _Transition | None
    retry_in: float | None


def _fresh() -> State:
    return {
        "state": BreakerState.CLOSED.value,
        "gen": 0,
        "since": None,
        "reason": None,
        "consecutive": 0,
        "recent": [],
        "probes": 0,
        "probe_ok": 0,
        "failures": 0,
        "successes": 0,
        "short_circuited": 0,
        "opened": 0,
    }


def _load(state: State | None) -> State:
    """A copy of `state` to build the next value from (every key present)."""
    if state is None:
        return _fresh()
    if len(state) >= _KEYS:
        return dict(state)
    loaded = _fresh()
    loaded.update(state)
    return loaded


_KEYS = len(_fresh())


def _move(
    s: State, new: BreakerState, now: float, reason: str, trip: _Trip | None = None
) -> _Transition:
    old = BreakerState(s["state"])
    s.update(state=new.value, gen=s["gen"] + 1, since=now, reason=reason, probes=0, probe_ok=0)
    if new is BreakerState.OPEN:
        s["opened"] += 1
    if trip is not None:
        s.update(trip_rule=trip.rule, trip_failures=trip.failures)
    if new is not BreakerState.HALF_OPEN:
        # Counting starts afresh in every closed period, and nothing is counted while open.
        s.update(consecutive=0, recent=[])
    return _Transition(
        old,
        new,
        reason,
        s.get("trip_rule"),
        int(s.get("trip_failures") or 0),
        trip.rate if trip is not None else None,
    )


def _admit(rules: _Rules, now: float) -> Callable[[State | None], tuple[State | None, _Ticket]]:
    def change(state: State | None) -> tuple[State | None, _Ticket]:
        current = state["state"] if state else BreakerState.CLOSED.value
        if current == BreakerState.CLOSED:
            # The hot path: nothing to write.
            return state, _Ticket("call", state["gen"] if state else 0, None, None)
        s = _load(state)
        if current == BreakerState.OPEN:
            elapsed = now - float(s["since"] or 0.0)
            if elapsed >= rules.recovery_timeout:
                transition = _move(
                    s,
                    BreakerState.HALF_OPEN,
                    now,
                    f"recovery_timeout {rules.recovery_timeout:g} s passed",
                )
                s["probes"] = 1
                return s, _Ticket("probe", s["gen"], transition, None)
            s["short_circuited"] += 1
            retry_in = max(rules.recovery_timeout - elapsed, 0.0)
            return s, _Ticket("rejected", s["gen"], None, retry_in)
        if s["probes"] < rules.half_open_probes:
            s["probes"] += 1
            return s, _Ticket("probe", s["gen"], None, None)
        s["short_circuited"] += 1
        return s, _Ticket("rejected", s["gen"], None, None)

    return change


def _report(
    rules: _Rules, ticket: _Ticket, failed: bool | None, now: float, error: str | None
) -> Callable[[State | None], tuple[State | None, _Transition | None]]:
    """The change for an attempt's end: `failed` is None when it ended without an outcome
    (cancelled, interrupted), which frees a probe slot and counts nothing."""

    def change(state: State | None) -> tuple[State | None, _Transition | None]:
        s = _load(state)
        if failed is not None:
            s["failures" if failed else "successes"] += 1
        if s["gen"] != ticket.gen:
            return s, None
        current = s["state"]
        if ticket.kind == "probe" and current == BreakerState.HALF_OPEN:
            s["probes"] = max(s["probes"] - 1, 0)
            if failed:
                return s, _move(s, BreakerState.OPEN, now, f"probe failed: {error or 'failure'}")
            if failed is False:
                s["probe_ok"] += 1
                if s["probe_ok"] >= rules.success_threshold:
                    count = s["probe_ok"]
                    reason = f"{count} probe call{'s' if count != 1 else ''} succeeded"
                    return s, _move(s, BreakerState.CLOSED, now, reason)
            return s, None
        if ticket.kind == "call" and current == BreakerState.CLOSED and failed is not None:
            s["consecutive"] = s["consecutive"] + 1 if failed else 0
            if rules.failure_rate is not None:
                s["recent"] = [*s["recent"], int(failed)][-rules.window :]
            trip = rules.trips(s)
            if trip is not None:
                reason = trip.text + (f"; last: {error}" if error else "")
                return s, _move(s, BreakerState.OPEN, now, reason, trip)
        return s, None

    return change


def _count_success(gen: int, state: State | None) -> tuple[State | None, _Transition | None]:
    """`_report`'s change for a successful call admitted while closed (no failure rate)."""
    s = _load(state)
    s["successes"] += 1
    if s["gen"] == gen and s["state"] == BreakerState.CLOSED:
        s["consecutive"] = 0
    return s, None


_FIRST_TICKET = _Ticket("call", 0, None, None)


# ---------------------------------------------------------------- the inspectable breaker


class Breaker:
    """One breaker: its rules, where its state lives, and what `fn.breaker` shows.

    `state`, the counts and `reset()` read and change the shared state under `key`, so every
    function (and, with a shared store, every process) using the same key sees the same values.
    """

    def __init__(
        self,
        key: str,
        store: StateStore,
        rules: _Rules,
        workers: Sequence[Worker] = (),
    ) -> None:
        self.key = key
        self.store = store
        self.rules = rules
        self._store_key = _STORE_PREFIX + key
        self._workers = tuple(workers)
        self._alerts: AlertHistory | None = None
        if self._workers:
            from qwed_guard.alerts import AlertHistory

            self._alerts = AlertHistory()

    def _view(self) -> State:
        return _load(self.store.get(self._store_key))

    @property
    def state(self) -> BreakerState:
        """closed, open or half_open (an open breaker turns half-open at its next call)."""
        return BreakerState(self._view()["state"])

    @property
    def failures(self) -> int:
        """Attempts that ended in a failure outcome, in total."""
        return int(self._view()["failures"])

    @property
    def successes(self) -> int:
        """Attempts that ended in any other outcome, in total."""
        return int(self._view()["successes"])

    @property
    def short_circuited(self) -> int:
        """Attempts refused without a call, in total."""
        return int(self._view()["short_circuited"])

    @property
    def opened(self) -> int:
        """How many times the breaker has opened."""
        return int(self._view()["opened"])

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row in the current closed period."""
        return int(self._view()["consecutive"])

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker admits a probe (0 when not open or already due)."""
        s = self._view()
        if s["state"] != BreakerState.OPEN:
            return 0.0
        elapsed = clock.wall() - float(s["since"] or 0.0)
        return max(self.rules.recovery_timeout - elapsed, 0.0)

    @property
    def alerts(self) -> Sequence[Alert]:
        """The `opened`/`closed` alerts this breaker sent (empty without `notify`)."""
        return self._alerts if self._alerts is not None else ()

    def snapshot(self) -> dict[str, Any]:
        """State, reason and counts as one plain dict (for logs, dashboards, the CLI)."""
        s = self._view()
        return {
            "key": self.key,
            "state": s["state"],
            "since": s["since"],
            "reason": s["reason"],
            "consecutive_failures": s["consecutive"],
            "probes_in_flight": s["probes"],
            "failures": s["failures"],
            "successes": s["successes"],
            "short_circuited": s["short_circuited"],
            "opened": s["opened"],
        }

    def reset(self) -> None:
        """Back to closed with every count cleared (after a fix you know has landed)."""
        old = self.store.update(self._store_key, lambda s: (None, _load(s)))
        if old["state"] != BreakerState.CLOSED:
            transition = _Transition(
                BreakerState(old["state"]),
                BreakerState.CLOSED,
                "reset()",
                old.get("trip_rule"),
                int(old.get("trip_failures") or 0),
                None,
            )
            self.announce(None, transition, None)

    def __repr__(self) -> str:
        s = self._view()
        return (
            f"<Breaker {self.key!r} {s['state']}: {s['failures']} failures, "
            f"{s['successes']} successes, {s['short_circuited']} short-circuited, "
            f"opened {s['opened']}x>"
        )

    # The two decisions every attempt goes through, and what a state change sets off.
    def admit(self) -> _Ticket:
        store = self.store
        if type(store) is MemoryStore:
            # A closed breaker admits without writing anything: with the in-process store
            # that is seen without its lock (stored states are replaced, never mutated).
            state = store.peek(self._store_key)
            if state is None:
                return _FIRST_TICKET
            if state["state"] == BreakerState.CLOSED:
                return _Ticket("call", state["gen"], None, None)
        return self.store.update(self._store_key, _admit(self.rules, clock.wall()))

    def report(self, ticket: _Ticket, failed: bool | None, error: str | None) -> _Transition | None:
        if failed is False and ticket.kind == "call" and self.rules.failure_rate is None:
            # The success path: count it, reset the streak; it cannot trip or move anything.
            return self.store.update(self._store_key, partial(_count_success, ticket.gen))
        change = _report(self.rules, ticket, failed, clock.wall(), error)
        return self.store.update(self._store_key, change)

    def announce(
        self, ctx: CallContext | None, transition: _Transition, diagnosis: Diagnosis | None
    ) -> None:
        """Report a state change: an event for the audit trail, a log line, maybe an alert."""
        if ctx is not None:
            ctx.emit(
                BREAKER_CHANGED,
                key=self.key,
                old=transition.old,
                new=transition.new,
                reason=transition.reason,
                recovery_timeout=self.rules.recovery_timeout,
            )
        _log(self.key, transition)
        opened = transition.old is BreakerState.CLOSED and transition.new is BreakerState.OPEN
        # A failed probe re-opens the same outage: one alert when it starts, one when it ends.
        closed = transition.new is BreakerState.CLOSED
        if self._workers and (opened or closed):
            try:
                self._alert(ctx, transition, diagnosis, "triggered" if opened else "resolved")
            except Exception as exc:  # alerting must never break the call it watches
                from loguru import logger

                logger.error("{}", scrub(f"breaker alert for {self.key} failed: {exc!r}"))

    def _alert(
        self,
        ctx: CallContext | None,
        transition: _Transition,
        diagnosis: Diagnosis | None,
        kind: Literal["triggered", "resolved"],
    ) -> None:
        from qwed_guard.alerts import Alert
        from qwed_guard.alerts.record import rfc3339

        outcome = diagnosis.outcome if diagnosis is not None else Outcome.VERIFIED
        error = scrub(diagnosis.error) if diagnosis and diagnosis.error else None
        if kind == "triggered":
            message = (
                f"{self.key}: circuit breaker opened after {transition.reason}; calls fail "
                f"fast for {self.rules.recovery_timeout:g} s, then probe"
            )
        else:
            message = f"{self.key}: circuit breaker closed ({transition.reason})"
            error = None
        alert = Alert(
            timestamp=rfc3339(clock.wall()),
            key=self.key,
            kind=kind,
            message=message,
            failures=transition.failures,
            outcome=outcome,
            error=error,
            function=ctx.function if ctx is not None else self.key,
            policy_hash=ctx.policy_hash if ctx is not None else None,
            dedup_key=_DEDUP_PREFIX + self.key,
            reason="rate" if transition.rule == "rate" else "consecutive",
            failure_rate=transition.rate,
        )
        assert self._alerts is not None
        self._alerts.append(alert)
        if ctx is not None:
            ctx.emit(ALERT_SENT, alert=alert)
        for worker in self._workers:
            worker.submit(alert)


def _log(key: str, transition: _Transition) -> None:
    from loguru import logger  # imported on first state change: it costs tens of ms

    level = "WARNING" if transition.new is BreakerState.OPEN else "INFO"
    logger.log(
        level,
        "{}",
        scrub(
            f"circuit breaker {key}: {transition.old.value} -> {transition.new.value} "
            f"({transition.reason})"
        ),
    )


# ---------------------------------------------------------------- the layer


_MAX_COUNT = 10_000_000
_MAX_RECOVERY = 366 * 86400.0
"""A breaker stays open a year at most: longer waits overflow the timers that use them."""


def _count(default: Any, doc: str, *, optional: bool = False) -> Any:
    return integer(default, 1, _MAX_COUNT, doc, optional=optional)


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
        try:
            self._store: StateStore | None = None if o.state is None else store_from_url(o.state)
        except (TypeError, ValueError) as error:
            raise bad_parameter(
                "state", str(error).removeprefix("state: "), wrong_type=isinstance(error, TypeError)
            ) from None
        self.rules = _Rules(
            threshold,
            None if o.failure_rate is None else float(o.failure_rate),
            o.window,
            o.min_calls,
            float(o.recovery_timeout),
            o.half_open_probes,
            o.success_threshold,
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
        if self.key is not None:
            parts.append(f"key={self.key}")
        if self._workers:
            parts.append("notify=" + ",".join(w.channel.name for w in self._workers))
        return "circuit_breaker(" + "; ".join(parts) + ")"

    def _enter(self, ctx: CallContext) -> _Ticket:
        breaker = self.breaker
        ticket = breaker.admit()
        if ticket.kind == "rejected":
            started = clock.monotonic()  # no call: the attempt takes only this decision
            state = BreakerState.OPEN if ticket.retry_in is not None else BreakerState.HALF_OPEN
            refusal = CircuitOpen(breaker.key, state, ticket.retry_in)
            record_attempt(ctx, Diagnosis(Outcome.SHORT_CIRCUITED, refusal.error), started, refusal)
            raise refusal
        if ticket.transition is not None:
            breaker.announce(ctx, ticket.transition, None)
        return ticket

    def _exit(self, ctx: CallContext, ticket: _Ticket, diagnosis: Diagnosis | None) -> None:
        failed: bool | None = None
        error: str | None = None
        if diagnosis is not None and diagnosis.outcome is not Outcome.SHORT_CIRCUITED:
            # A deterministic refusal is an answer: the provider worked.
            failed = diagnosis.outcome in self.failure_on and not diagnosis.final
            error = diagnosis.error
        breaker = self.breaker
        transition = breaker.report(ticket, failed, error)
        if transition is not None:
            breaker.announce(ctx, transition, diagnosis)

    def around(self, ctx: CallContext, proceed: Callable[[], Any]) -> Any:
        ticket = self._enter(ctx)
        try:
            result = proceed()
        except Exception as exc:
            self._exit(ctx, ticket, call_diagnosis(ctx, exc))
            raise
        except BaseException:
            self._exit(ctx, ticket, None)  # interrupted: free a probe slot, count nothing
            raise
        self._exit(ctx, ticket, call_diagnosis(ctx))
        return result

    async def around_async(self, ctx: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        ticket = self._enter(ctx)
        try:
            result = await proceed()
        except Exception as exc:
            self._exit(ctx, ticket, call_diagnosis(ctx, exc))
            raise
        except BaseException:
            self._exit(ctx, ticket, None)  # cancelled: free a probe slot, count nothing
            raise
        self._exit(ctx, ticket, call_diagnosis(ctx))
        return result


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
