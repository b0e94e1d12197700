"""The chaos suite at small scale: the same runs as `make chaos`, on the fake clock.

Each scenario runs a few hundred calls through the production policy against the flaky
simulator with an outage in the middle, and every invariant must hold. The checks themselves
are shown to fail when a promise is broken, and the reference alert rules are held to the
alerter's own decisions on random outcome sequences.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.chaos import (
    SCENARIOS,
    Check,
    Evidence,
    Report,
    check_invariants,
    expected_alerts,
    run_scenario,
)
from qwed_guard.alerts.layer import Rules, decide
from qwed_guard.testing import fake_time

CALLS = 800
OUTAGE = 10.0  # virtual seconds, as in `make chaos`
RATE = 20.0  # calls per virtual second: the 400 calls after the outage starts span 20 s


def failed(checks: list[Check]) -> list[str]:
    return [f"{c.name}: expected {c.expected!r}, got {c.actual!r}" for c in checks if not c.ok]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Report]]:
    out = tmp_path_factory.mktemp("chaos")
    reports = {}
    for scenario in SCENARIOS:
        with fake_time():
            reports[scenario.name] = run_scenario(
                scenario, CALLS, seed=4, outage=OUTAGE, rate=RATE, out_dir=out
            )
    yield reports


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_small_run_keeps_every_promise(runs: dict[str, Report], name: str) -> None:
    report = runs[name]
    assert failed(report.checks) == []
    metrics = report.metrics
    assert metrics["calls"] == CALLS
    # Not a vacuous pass: the run went through the outage, opened the breaker, fell back,
    # retried, alerted and recovered.
    assert metrics["replies"].get("outage", 0) > 0
    assert metrics["breaker_opened"] >= 1
    assert metrics["breaker_short_circuited"] > 0
    assert metrics["verified"] > 0 and metrics["fallback"] > 0
    assert metrics["attempts_per_call"] > 1.0
    assert metrics["alerts"].get("triggered", 0) >= 1
    assert metrics["alerts"].get("resolved", 0) >= 1


def evidence_of(runs: dict[str, Report], name: str = "sync-16-threads") -> Evidence:
    evidence = runs[name].evidence
    assert evidence is not None
    return copy.deepcopy(evidence)


def broken(evidence: Evidence) -> set[str]:
    return {c.name for c in check_invariants(evidence) if not c.ok}


def test_a_lost_call_record_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    call = next(i for i, r in enumerate(ev.records) if r["event"] == "call")
    ev.records = [r for i, r in enumerate(ev.records) if i != call]
    assert "call records = calls" in broken(ev)


def test_a_lost_inline_attempt_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    # A call record whose answered attempt (inline since schema v2) went missing.
    call = next(i for i, r in enumerate(ev.records) if r["event"] == "call" and r["answered"])
    ev.records = [dict(r, answered=None) if i == call else r for i, r in enumerate(ev.records)]
    assert "calls missing attempt records" in broken(ev)


def test_a_lost_attempt_record_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    sent = next(
        i
        for i, r in enumerate(ev.records)
        if r["event"] == "attempt" and r["outcome"] != "short_circuited"
    )
    ev.records = [r for i, r in enumerate(ev.records) if i != sent]
    assert {
        "calls missing attempt records",
        "attempts that sent a request = answer prompts served",
    } <= broken(ev)


def test_an_uncounted_refusal_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    ev.breaker_short_circuited += 1
    assert broken(ev) == {"short-circuited attempts = breaker's count"}


def test_an_escaped_exception_and_a_lying_fallback_fail(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    calls = list(ev.calls)
    first = calls[0]
    calls[0] = replace(first, result=None, error="RuntimeError: boom")
    fallback = next(i for i, c in enumerate(calls) if c.result and c.result.is_fallback)
    result = calls[fallback].result
    assert result is not None
    calls[fallback] = replace(calls[fallback], result=replace(result, verified=True))
    ev.calls = calls
    assert {
        "unhandled exceptions",
        "verified + fallback = calls",
        "fallback results marked verified",
    } <= broken(ev)


def test_a_missing_or_extra_alert_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    alerted = next(
        r
        for r in ev.records
        if r["event"] == "call" and any(e["event"] == "alert_sent" for e in r["events"])
    )
    silenced = {**alerted, "events": [e for e in alerted["events"] if e["event"] != "alert_sent"]}
    ev.records = [silenced if r is alerted else r for r in ev.records]
    assert "alerts match the rules call by call" in broken(ev)
    ev = evidence_of(runs)
    ev.delivered = list(ev.delivered or ())[1:]
    assert broken(ev) == {"alerts delivered = alerts sent (triggered / repeat / resolved)"}


def test_a_call_replayed_in_another_order_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    # Moving the call that triggered the first alert to the end changes what the rules imply.
    trigger = next(
        str(r["call_id"])
        for r in ev.records
        if r["event"] == "call"
        and any(
            e["event"] == "alert_sent" and e["alert"]["kind"] == "triggered" for e in r["events"]
        )
    )
    moved = [d for d in ev.decisions if d[0] == trigger]
    ev.decisions = [d for d in ev.decisions if d[0] != trigger] + moved
    assert "alerts match the rules call by call" in broken(ev)


def test_a_broken_chain_fails(runs: dict[str, Report]) -> None:
    ev = evidence_of(runs)
    ev.trail_ok = False
    assert broken(ev) == {"hash chain verifies"}


def test_reference_rules_by_hand() -> None:
    t = 0.0
    calls: list[tuple[str, str, float]] = []
    for outcome in ["transient"] * 3 + ["verified"] + ["refuted"] * 4 + ["permanent", "verified"]:
        t += 10.0
        calls.append((f"c{len(calls)}", outcome, t))
    assert expected_alerts(calls, threshold=3, repeat_interval=20.0) == [
        ("c2", "triggered", 3),
        ("c3", "resolved", 3),
        ("c6", "triggered", 3),
        ("c8", "repeat", 5),  # 20 s after the trigger
        ("c9", "resolved", 5),
    ]
    # A permanent failure alerts at once.
    assert expected_alerts([("p", "permanent", 0.0)], threshold=5, repeat_interval=None) == [
        ("p", "triggered", 1)
    ]


OUTCOMES = [
    "verified",
    "verified",
    "refuted",
    "unverifiable",
    "transient",
    "permanent",
    "short_circuited",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(OUTCOMES), st.floats(0, 50)), max_size=60),
    st.integers(1, 6),
    st.one_of(st.none(), st.floats(1, 100)),
    st.booleans(),
)
def test_reference_rules_match_the_alerter(
    steps: list[tuple[str, float]],
    threshold: int,
    repeat_interval: float | None,
    alert_on_permanent: bool,
) -> None:
    rules = Rules(
        threshold=threshold, repeat_interval=repeat_interval, alert_on_permanent=alert_on_permanent
    )
    state: Any = None
    now = 0.0
    calls, sent = [], []
    for index, (outcome, dt) in enumerate(steps):
        now += dt
        calls.append((str(index), outcome, now))
        state, decision = decide(
            state,
            failed=outcome != "verified",
            permanent=outcome == "permanent",
            now=now,
            rules=rules,
            short_circuited=outcome == "short_circuited",
        )
        if decision is not None:
            sent.append((str(index), decision["kind"], decision["failures"]))
    reference = expected_alerts(
        calls,
        threshold=threshold,
        repeat_interval=repeat_interval,
        alert_on_permanent=alert_on_permanent,
    )
    assert reference == sent


def test_scenarios_cover_sync_threads_and_async_tasks() -> None:
    assert [(s.mode, s.concurrency) for s in SCENARIOS] == [
        ("sync", 1),
        ("sync", 16),
        ("async", 100),
    ]
