"""The breaker's state machine: pure functions over a small JSON-able dict.

Nothing here reads a clock or does I/O: every time is passed in. `admit` and `report` return
the change a state store's atomic `update` applies (it may run twice under contention), so
breakers sharing a key, in one process or across processes, see one state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from qwed_guard.state import State


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


@dataclass(frozen=True, slots=True)
class Rules:
    """When a breaker opens, how long it stays open, and how it probes."""

    failure_threshold: int | None
    failure_rate: float | None
    window: int
    min_calls: int
    recovery_timeout: float
    half_open_probes: int
    success_threshold: int
    probe_lease: float = 60.0
    """Seconds a probe slot is held at most: a probe whose process died frees it then."""

    def trips(self, s: State) -> Trip | None:
        """Why a closed breaker must open now, if it must."""
        threshold = self.failure_threshold
        if threshold is not None and s["consecutive"] >= threshold:
            text = f"{s['consecutive']} consecutive failures (threshold {threshold})"
            return Trip("consecutive", s["consecutive"], None, text)
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
                    return Trip("rate", failed, rate, text)
        return None


class Trip(NamedTuple):
    rule: Literal["consecutive", "rate"]
    failures: int
    rate: float | None
    text: str


class Transition(NamedTuple):
    old: BreakerState
    new: BreakerState
    reason: str
    rule: str | None
    """The rule that opened the breaker this outage: "consecutive" or "rate"."""
    failures: int
    """The failures that made that rule trip."""
    rate: float | None


class Ticket(NamedTuple):
    """What admission decided for one attempt."""

    kind: str
    """"call" (closed), "probe" (half-open) or "rejected"."""
    gen: int
    """The state generation it was admitted in: a result from an older one changes nothing."""
    transition: Transition | None
    retry_in: float | None
    lease: float | None = None
    """A probe's lease: the wall time its slot frees itself (the slot's name in `leases`)."""


FIRST_TICKET = Ticket("call", 0, None, None)


def fresh() -> State:
    return {
        "state": BreakerState.CLOSED.value,
        "gen": 0,
        "since": None,
        "reason": None,
        "consecutive": 0,
        "recent": [],
        "probes": 0,
        "leases": [],
        "probe_ok": 0,
        "failures": 0,
        "successes": 0,
        "short_circuited": 0,
        "opened": 0,
    }


_KEYS = len(fresh())


def load(state: State | None) -> State:
    """A copy of `state` to build the next value from (every key present)."""
    if state is None:
        return fresh()
    if len(state) >= _KEYS:
        return dict(state)
    loaded = fresh()
    loaded.update(state)
    return loaded


def retry_in(rules: Rules, s: State, now: float) -> float:
    """Seconds until an open breaker admits a probe (0 when not open or already due)."""
    if s["state"] != BreakerState.OPEN:
        return 0.0
    return max(rules.recovery_timeout - (now - float(s["since"] or 0.0)), 0.0)


def move(
    s: State, new: BreakerState, now: float, reason: str, trip: Trip | None = None
) -> Transition:
    """Change `s` in place to the `new` state, entered at `now`."""
    old = BreakerState(s["state"])
    s.update(
        state=new.value, gen=s["gen"] + 1, since=now, reason=reason, probes=0, leases=[], probe_ok=0
    )
    if new is BreakerState.OPEN:
        s["opened"] += 1
    if trip is not None:
        s.update(trip_rule=trip.rule, trip_failures=trip.failures)
    if new is not BreakerState.HALF_OPEN:
        # Counting starts afresh in every closed period, and nothing is counted while open.
        s.update(consecutive=0, recent=[])
    return Transition(
        old,
        new,
        reason,
        s.get("trip_rule"),
        int(s.get("trip_failures") or 0),
        trip.rate if trip is not None else None,
    )


def admit(rules: Rules, now: float) -> Callable[[State | None], tuple[State | None, Ticket]]:
    """The change for an attempt's start: may it call, probe, or is it rejected?"""

    def change(state: State | None) -> tuple[State | None, Ticket]:
        current = state["state"] if state else BreakerState.CLOSED.value
        if current == BreakerState.CLOSED:
            # The hot path: nothing to write.
            return state, Ticket("call", state["gen"] if state else 0, None, None)
        s = load(state)
        if current == BreakerState.OPEN:
            wait = retry_in(rules, s, now)
            if wait <= 0:
                reason = f"recovery_timeout {rules.recovery_timeout:g} s passed"
                transition = move(s, BreakerState.HALF_OPEN, now, reason)
                lease = _lease(s, rules, now)
                return s, Ticket("probe", s["gen"], transition, None, lease)
            s["short_circuited"] += 1
            return s, Ticket("rejected", s["gen"], None, wait)
        # A slot whose lease ran out was held by a probe that never reported: its process died.
        leases = [t for t in s["leases"] if t > now]
        s["leases"], s["probes"] = leases, len(leases)
        if s["probes"] < rules.half_open_probes:
            lease = _lease(s, rules, now)
            return s, Ticket("probe", s["gen"], None, None, lease)
        s["short_circuited"] += 1
        return s, Ticket("rejected", s["gen"], None, None)

    return change


def _lease(s: State, rules: Rules, now: float) -> float:
    """Take a probe slot until `now + probe_lease` (a distinct time per slot: its name)."""
    lease = now + rules.probe_lease
    while lease in s["leases"]:
        lease += 1e-6
    s["leases"] = [*s["leases"], lease]
    s["probes"] = len(s["leases"])
    return lease


def report(
    rules: Rules, ticket: Ticket, failed: bool | None, now: float, error: str | None
) -> Callable[[State | None], tuple[State | None, Transition | None]]:
    """The change for an attempt's end: `failed` is None when it ended without an outcome
    (cancelled, interrupted), which frees a probe slot and counts nothing."""

    def change(state: State | None) -> tuple[State | None, Transition | None]:
        s = load(state)
        if failed is not None:
            s["failures" if failed else "successes"] += 1
        if s["gen"] != ticket.gen:
            return s, None
        current = s["state"]
        if ticket.kind == "probe" and current == BreakerState.HALF_OPEN:
            # The probe frees its slot (unless its lease ran out and another probe took it).
            leases = [t for t in s["leases"] if t != ticket.lease]
            s["leases"], s["probes"] = leases, len(leases)
            if failed:
                return s, move(s, BreakerState.OPEN, now, f"probe failed: {error or 'failure'}")
            if failed is False:
                s["probe_ok"] += 1
                if s["probe_ok"] >= rules.success_threshold:
                    count = s["probe_ok"]
                    reason = f"{count} probe call{'s' if count != 1 else ''} succeeded"
                    return s, move(s, BreakerState.CLOSED, now, reason)
            return s, None
        if ticket.kind == "call" and current == BreakerState.CLOSED and failed is not None:
            s["consecutive"] = s["consecutive"] + 1 if failed else 0
            if rules.failure_rate is not None:
                s["recent"] = [*s["recent"], int(failed)][-rules.window :]
            trip = rules.trips(s)
            if trip is not None:
                reason = trip.text + (f"; last: {error}" if error else "")
                return s, move(s, BreakerState.OPEN, now, reason, trip)
        return s, None

    return change


def count_success(gen: int, state: State | None) -> tuple[State | None, Transition | None]:
    """`report`'s change for a successful call admitted while closed (no failure rate)."""
    s = load(state)
    s["successes"] += 1
    if s["gen"] == gen and s["state"] == BreakerState.CLOSED:
        s["consecutive"] = 0
    return s, None


def reset(state: State | None) -> tuple[State | None, Transition | None]:
    """The change `Breaker.reset()` applies: back to nothing stored, i.e. closed and cleared.
    Its transition is None when the breaker was closed already."""
    old = load(state)
    if old["state"] == BreakerState.CLOSED:
        return None, None
    rule, failures = old.get("trip_rule"), int(old.get("trip_failures") or 0)
    return None, Transition(
        BreakerState(old["state"]), BreakerState.CLOSED, "reset()", rule, failures, None
    )
