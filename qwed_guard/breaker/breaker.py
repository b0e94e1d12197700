"""`Breaker`: one breaker's rules applied to its state in a `StateStore`, and what it shows."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from qwed_guard import clock
from qwed_guard.alerts.record import Alert, AlertHistory
from qwed_guard.alerts.send import alert_failed, raise_alert
from qwed_guard.breaker import machine
from qwed_guard.breaker.machine import FIRST_TICKET, BreakerState, Rules, Ticket, Transition
from qwed_guard.context import CallContext
from qwed_guard.hooks import BreakerChanged
from qwed_guard.outcomes import Diagnosis, Outcome, scrub
from qwed_guard.state import MemoryStore, State, StateStore
from qwed_guard.state.base import AsyncStateStore, SharedStore

if TYPE_CHECKING:
    from qwed_guard.alerts.delivery import Worker

__all__ = ["PENDING", "Breaker"]

PENDING: Any = object()
"""What `Breaker.try_report` returns when the report must be awaited (`areport`)."""

_STORE_PREFIX = "breaker:"
_DEDUP_PREFIX = "qwed-guard:breaker:"


class Breaker:
    """One breaker: its rules, where its state lives, and what `fn.breaker` shows.

    `state`, the counts and `reset()` read and change the shared state under `key`, so every
    function (and, with a shared store, every process) using the same key sees the same values.
    """

    def __init__(
        self,
        key: str,
        store: StateStore,
        rules: Rules,
        workers: Sequence[Worker] = (),
    ) -> None:
        self.key = key
        self.store = store
        self.rules = rules
        self._store_key = _STORE_PREFIX + key
        self._successes_key = _STORE_PREFIX + key + ":successes"
        self._refused_key = _STORE_PREFIX + key + ":short_circuited"
        # A shared store (Redis) is read through its view on the success path, and counts the
        # successes of a closed breaker with its next round trip; async code awaits it.
        self._shared: SharedStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, SharedStore) else None
        )
        self._async: AsyncStateStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, AsyncStateStore) else None
        )
        # Where successes counted beside the state go (see `_counts_only`): the shared store,
        # or the in-process one itself.
        self._counters: MemoryStore | SharedStore | None = (
            store if type(store) is MemoryStore else self._shared
        )
        self._workers = tuple(workers)
        self._alerts = AlertHistory() if self._workers else None

    def _view(self) -> State:
        s = machine.load(self.store.get(self._store_key))
        counters = self._counters
        if counters is not None:
            successes, refused = counters.counts([self._successes_key, self._refused_key])
            s["successes"] += successes
            s["short_circuited"] += refused
        return s

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
        return machine.retry_in(self.rules, self._view(), clock.wall())

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
        transition = self.store.update(self._store_key, machine.reset)
        if self._counters is not None:
            counters = [self._successes_key, self._refused_key]
            for counter, value in zip(counters, self._counters.counts(counters), strict=True):
                self._counters.add(counter, -value)
        if transition is not None:
            self.announce(None, transition, None)

    def __repr__(self) -> str:
        s = self._view()
        return (
            f"<Breaker {self.key!r} {s['state']}: {s['failures']} failures, "
            f"{s['successes']} successes, {s['short_circuited']} short-circuited, "
            f"opened {s['opened']}x>"
        )

    # The two decisions every attempt goes through, and what a state change sets off.
    def admit(self) -> Ticket:
        store = self.store
        if type(store) is MemoryStore:
            # A closed breaker admits without writing anything: with the in-process store
            # that is seen without its lock (stored states are replaced, never mutated).
            ticket = _closed(store.peek(self._store_key))
            if ticket is not None:
                return ticket
        elif self._shared is not None:
            # One round trip (or none, within the store's `cache`) while closed.
            ticket = self._quick(self._shared.view(self._store_key, self._shared.cache))
            if ticket is not None:
                return ticket
        return self.store.update(self._store_key, machine.admit(self.rules, clock.wall()))

    def _quick(self, state: State | None) -> Ticket | None:
        """The ticket a shared store's view decides alone: a call while closed, a refusal while
        open and not yet due to probe (counted with the store's next round trip, so workers
        refused during an outage do not contend for the key); None when an `update` must."""
        ticket = _closed(state)
        if ticket is not None or state is None or state["state"] != BreakerState.OPEN:
            return ticket
        wait = machine.retry_in(self.rules, state, clock.wall())
        if wait <= 0:
            return None
        assert self._shared is not None
        self._shared.add(self._refused_key, 1)
        return Ticket("rejected", state["gen"], None, wait)

    def try_admit(self) -> Ticket | None:
        """`admit` when it needs no I/O; None when it must be awaited (`aadmit`)."""
        if self._async is None:
            return self.admit()  # in-process state: no I/O to await
        if self._shared is not None:
            hit, state = self._shared.cached(self._store_key, self._shared.cache)
            if hit:
                return self._quick(state)
        return None

    async def aadmit(self) -> Ticket:
        """`admit`, awaited on the store's async client."""
        store = self._async
        assert store is not None
        if self._shared is not None:
            ticket = self._quick(await self._shared.aview(self._store_key, self._shared.cache))
            if ticket is not None:
                return ticket
        return await store.aupdate(self._store_key, machine.admit(self.rules, clock.wall()))

    def report(self, ticket: Ticket, failed: bool | None, error: str | None) -> Transition | None:
        if failed is False and ticket.kind == "call" and self.rules.failure_rate is None:
            # The success path: count it, reset the streak; it cannot trip or move anything.
            if self._counts_only(ticket):
                return None
            return self.store.update(self._store_key, partial(machine.count_success, ticket.gen))
        change = machine.report(self.rules, ticket, failed, clock.wall(), error)
        return self.store.update(self._store_key, change)

    def try_report(self, ticket: Ticket, failed: bool | None, error: str | None) -> Any:
        """`report` when it needs no I/O; `PENDING` when it must be awaited (`areport`)."""
        if self._async is None:
            return self.report(ticket, failed, error)
        if (
            failed is False
            and ticket.kind == "call"
            and self.rules.failure_rate is None
            and self._counts_only(ticket)
        ):
            return None
        return PENDING

    async def areport(
        self, ticket: Ticket, failed: bool | None, error: str | None
    ) -> Transition | None:
        """`report`, awaited on the store's async client."""
        store = self._async
        assert store is not None
        if failed is False and ticket.kind == "call" and self.rules.failure_rate is None:
            if self._counts_only(ticket):
                return None
            counted = partial(machine.count_success, ticket.gen)
            return await store.aupdate(self._store_key, counted)
        change = machine.report(self.rules, ticket, failed, clock.wall(), error)
        return await store.aupdate(self._store_key, change)

    def _counts_only(self, ticket: Ticket) -> bool:
        """True when a success of `ticket` only adds to the count (the streak is 0 in the view
        it was admitted on): a counter beside the state takes it, the state is not rewritten
        (a shared store adds it with its next round trip). A success seen so is ordered
        before any failure reported meanwhile: counts add up either way."""
        store = self.store
        if type(store) is MemoryStore:
            state = store.peek(self._store_key)
            counters: MemoryStore | SharedStore = store
        else:
            shared = self._shared
            if shared is None:
                return False
            hit, state = shared.cached(self._store_key, _FOREVER)
            if not hit:
                return False
            counters = shared
        if state is None:
            if ticket.gen != 0:
                return False
        elif (
            state["state"] != BreakerState.CLOSED
            or state["gen"] != ticket.gen
            or state.get("consecutive", 0) != 0
        ):
            return False
        counters.add(self._successes_key, 1)
        return True

    def announce(
        self, ctx: CallContext | None, transition: Transition, diagnosis: Diagnosis | None
    ) -> None:
        """Report a state change: an event for the audit trail, a log line, maybe an alert."""
        if ctx is not None and ctx.wants(BreakerChanged):
            event = BreakerChanged(
                ctx.attempt,
                clock.wall(),
                self.key,
                transition.old,
                transition.new,
                transition.reason,
                self.rules.recovery_timeout,
            )
            ctx.send(event)
        _log(self.key, transition)
        opened = transition.old is BreakerState.CLOSED and transition.new is BreakerState.OPEN
        # A failed probe re-opens the same outage: one alert when it starts, one when it ends.
        if self._alerts is None or not (opened or transition.new is BreakerState.CLOSED):
            return
        message = (
            f"{self.key}: circuit breaker opened after {transition.reason}; calls fail "
            f"fast for {self.rules.recovery_timeout:g} s, then probe"
            if opened
            else f"{self.key}: circuit breaker closed ({transition.reason})"
        )
        try:
            raise_alert(
                ctx,
                self._alerts,
                self._workers,
                key=self.key,
                kind="triggered" if opened else "resolved",
                reason="rate" if transition.rule == "rate" else "consecutive",
                message=message,
                failures=transition.failures,
                outcome=diagnosis.outcome if diagnosis is not None else Outcome.VERIFIED,
                error=diagnosis.error if opened and diagnosis is not None else None,
                now=clock.wall(),
                dedup_key=_DEDUP_PREFIX + self.key,
                failure_rate=transition.rate,
            )
        except Exception as exc:  # alerting must never break the call it watches
            alert_failed(f"breaker alert for {self.key}", exc)


_FOREVER = float("inf")


def _closed(state: State | None) -> Ticket | None:
    """The ticket of a closed breaker (None when it is not closed: an `update` decides)."""
    if state is None:
        return FIRST_TICKET
    if state["state"] == BreakerState.CLOSED:
        return Ticket("call", state["gen"], None, None)
    return None


def _log(key: str, transition: Transition) -> None:
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
