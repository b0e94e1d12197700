"""The breaker's state machine as pure functions: each transition at the times given."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from qwed_guard.breaker import machine
from qwed_guard.breaker.machine import BreakerState, Rules, Ticket, Transition
from qwed_guard.state import State

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
T = TypeVar("T")


def rules(**changes: Any) -> Rules:
    given: dict[str, Any] = {
        "failure_threshold": 3,
        "failure_rate": None,
        "window": 4,
        "min_calls": 4,
        "recovery_timeout": 10.0,
        "half_open_probes": 1,
        "success_threshold": 1,
    }
    given.update(changes)
    return Rules(**given)


def apply(
    change: Callable[[State | None], tuple[State | None, T]], state: State | None
) -> tuple[Any, T]:
    """Run a change as a store does, twice over copies: it must not touch its input, must give
    the same answer both times (an optimistic store may rerun it), and keep the state JSON-able."""
    before = copy.deepcopy(state)
    first = change(copy.deepcopy(state))
    second = change(copy.deepcopy(state))
    assert first == second
    result = change(state)
    assert state == before
    assert result == first
    json.dumps(result[0])
    return result


def fail(r: Rules, state: State | None, now: float, error: str = "boom") -> tuple[Any, Any]:
    state, ticket = apply(machine.admit(r, now), state)
    return apply(machine.report(r, ticket, True, now, error), state)


def succeed(r: Rules, state: State | None, now: float) -> tuple[Any, Any]:
    state, ticket = apply(machine.admit(r, now), state)
    return apply(machine.report(r, ticket, False, now, None), state)


def test_a_closed_breaker_admits_without_writing_anything() -> None:
    r = rules()
    assert apply(machine.admit(r, 5.0), None) == (None, machine.FIRST_TICKET)
    state = machine.fresh()
    assert apply(machine.admit(r, 5.0), state) == (state, Ticket("call", 0, None, None))


def test_consecutive_failures_open_at_the_threshold_at_the_time_given() -> None:
    r = rules(failure_threshold=3)
    state, moved = fail(r, None, 1.0)
    state, moved = fail(r, state, 2.0)
    assert moved is None and state["consecutive"] == 2 and state["state"] == CLOSED
    state, moved = fail(r, state, 3.0, "ConnectionError: down")
    assert moved == Transition(
        CLOSED,
        OPEN,
        "3 consecutive failures (threshold 3); last: ConnectionError: down",
        "consecutive",
        3,
        None,
    )
    assert (state["state"], state["since"], state["gen"], state["opened"]) == (OPEN, 3.0, 1, 1)
    assert (state["failures"], state["consecutive"], state["recent"]) == (3, 0, [])


def test_a_success_resets_the_streak() -> None:
    r = rules(failure_threshold=2)
    state, _ = fail(r, None, 1.0)
    state, moved = succeed(r, state, 2.0)
    assert moved is None and state["consecutive"] == 0 and state["successes"] == 1
    state, moved = fail(r, state, 3.0)
    assert moved is None and state["state"] == CLOSED


def test_count_success_is_the_closed_success_path() -> None:
    r = rules(failure_threshold=5)
    state, _ = fail(r, None, 1.0)
    state, moved = apply(lambda s: machine.count_success(0, s), state)
    assert moved is None and (state["consecutive"], state["successes"]) == (0, 1)
    # A success admitted in an older generation counts, but resets nothing.
    state["consecutive"], state["gen"] = 2, 1
    state, _ = apply(lambda s: machine.count_success(0, s), state)
    assert (state["consecutive"], state["successes"]) == (2, 2)


def test_open_rejects_until_recovery_timeout_then_admits_one_probe() -> None:
    r = rules(failure_threshold=1, recovery_timeout=10.0)
    state, _ = fail(r, None, 100.0)
    state, ticket = apply(machine.admit(r, 104.0), state)
    assert ticket == Ticket("rejected", 1, None, 6.0)
    assert state["short_circuited"] == 1 and state["state"] == OPEN
    assert machine.retry_in(r, state, 107.5) == 2.5
    state, ticket = apply(machine.admit(r, 110.0), state)
    assert ticket.kind == "probe" and ticket.gen == 2
    assert ticket.transition == Transition(
        OPEN, HALF_OPEN, "recovery_timeout 10 s passed", "consecutive", 1, None
    )
    assert (state["state"], state["since"], state["probes"]) == (HALF_OPEN, 110.0, 1)
    assert machine.retry_in(r, state, 110.0) == 0.0
    # The one probe slot is taken: the next attempt is rejected with no wait to give.
    state, ticket = apply(machine.admit(r, 111.0), state)
    assert ticket == Ticket("rejected", 2, None, None)
    assert state["short_circuited"] == 2


def test_half_open_admits_exactly_the_configured_probes() -> None:
    r = rules(failure_threshold=1, half_open_probes=3, recovery_timeout=0.0)
    state, _ = fail(r, None, 0.0)
    kinds = []
    for _ in range(5):
        state, ticket = apply(machine.admit(r, 1.0), state)
        kinds.append(ticket.kind)
    assert kinds == ["probe", "probe", "probe", "rejected", "rejected"]
    assert state["probes"] == 3


def test_a_failed_probe_reopens_and_restarts_the_timer() -> None:
    r = rules(failure_threshold=1, recovery_timeout=10.0)
    state, _ = fail(r, None, 0.0)
    state, ticket = apply(machine.admit(r, 10.0), state)
    state, moved = apply(machine.report(r, ticket, True, 12.0, "timed out"), state)
    assert moved == Transition(HALF_OPEN, OPEN, "probe failed: timed out", "consecutive", 1, None)
    assert (state["state"], state["since"], state["opened"], state["probes"]) == (OPEN, 12.0, 2, 0)
    assert machine.retry_in(r, state, 15.0) == 7.0
    state, ticket = apply(machine.admit(r, 21.0), state)
    assert ticket.kind == "rejected"
    _, moved = apply(machine.report(r, ticket, True, 21.0, None), state)
    assert moved is None  # a rejected attempt reports nothing that moves the breaker


def test_probes_close_after_success_threshold() -> None:
    r = rules(failure_threshold=1, recovery_timeout=0.0, half_open_probes=2, success_threshold=2)
    state, _ = fail(r, None, 0.0)
    state, first = apply(machine.admit(r, 1.0), state)
    state, second = apply(machine.admit(r, 1.0), state)
    state, moved = apply(machine.report(r, first, False, 2.0, None), state)
    assert moved is None and (state["state"], state["probe_ok"]) == (HALF_OPEN, 1)
    state, moved = apply(machine.report(r, second, False, 3.0, None), state)
    assert moved == Transition(HALF_OPEN, CLOSED, "2 probe calls succeeded", "consecutive", 1, None)
    assert (state["state"], state["since"], state["consecutive"], state["probes"]) == (
        CLOSED,
        3.0,
        0,
        0,
    )


def test_an_interrupted_probe_frees_its_slot_and_counts_nothing() -> None:
    r = rules(failure_threshold=1, recovery_timeout=0.0)
    state, _ = fail(r, None, 0.0)
    state, ticket = apply(machine.admit(r, 1.0), state)
    counts = (state["failures"], state["successes"])
    state, moved = apply(machine.report(r, ticket, None, 2.0, None), state)
    assert moved is None and state["probes"] == 0 and state["state"] == HALF_OPEN
    assert (state["failures"], state["successes"]) == counts
    _, ticket = apply(machine.admit(r, 3.0), state)
    assert ticket.kind == "probe"


def test_a_result_from_an_older_generation_changes_nothing_but_the_counts() -> None:
    r = rules(failure_threshold=1, recovery_timeout=10.0)
    state, early = apply(machine.admit(r, 0.0), None)
    state, _ = fail(r, state, 1.0)  # opened meanwhile: generation 1
    state, moved = apply(machine.report(r, early, True, 2.0, "late"), state)
    assert moved is None
    assert (state["state"], state["since"], state["opened"], state["failures"]) == (OPEN, 1.0, 1, 2)


def test_the_failure_rate_trips_over_the_window_once_min_calls_are_seen() -> None:
    r = rules(failure_threshold=None, failure_rate=0.75, window=4, min_calls=4)
    state: State | None = None
    for now, failed in enumerate([False, True, True]):
        step = fail if failed else succeed
        state, moved = step(r, state, float(now))
        assert moved is None  # fewer than min_calls seen
    state, moved = succeed(r, state, 3.0)
    assert moved is None and state is not None and state["recent"] == [0, 1, 1, 0]  # 50%
    # Only the last `window` calls count: the first success drops out, [1, 1, 0, 1] is 75%.
    state, moved = fail(r, state, 4.0, "flaky")
    assert moved == Transition(
        CLOSED,
        OPEN,
        "failure rate 75% over the last 4 calls (threshold 75%); last: flaky",
        "rate",
        3,
        0.75,
    )
    assert (state["state"], state["since"], state["recent"]) == (OPEN, 4.0, [])


def test_the_trip_rule_survives_the_probe_cycle() -> None:
    r = rules(failure_threshold=None, failure_rate=1.0, window=2, min_calls=2, recovery_timeout=0)
    state, _ = fail(r, None, 0.0)
    state, _ = fail(r, state, 0.0)
    state, ticket = apply(machine.admit(r, 1.0), state)
    _, moved = apply(machine.report(r, ticket, False, 1.0, None), state)
    assert moved is not None and (moved.new, moved.rule, moved.failures) == (CLOSED, "rate", 2)
    assert moved.rate is None  # the rate is that of the trip, given only when it opens


def test_reset_clears_the_state_and_says_what_it_left() -> None:
    r = rules(failure_threshold=1)
    assert apply(machine.reset, None) == (None, None)
    closed, _ = fail(rules(failure_threshold=5), None, 0.0)
    assert apply(machine.reset, closed) == (None, None)
    opened, _ = fail(r, None, 0.0)
    assert apply(machine.reset, opened) == (
        None,
        Transition(OPEN, CLOSED, "reset()", "consecutive", 1, None),
    )


def test_load_fills_in_keys_an_older_stored_state_lacks() -> None:
    old: State = {"state": "open", "gen": 4, "since": 1.0, "opened": 2}
    loaded = machine.load(old)
    assert loaded == {**machine.fresh(), **old}
    assert loaded is not old and machine.load(None) == machine.fresh()
    assert machine.load(loaded) == loaded and machine.load(loaded) is not loaded


@pytest.mark.parametrize("state", [None, machine.fresh()])
def test_retry_in_is_zero_unless_open(state: State | None) -> None:
    assert machine.retry_in(rules(), machine.load(state), 1e9) == 0.0
