"""Random sequences of simulator faults, outages, passing time and calls through the production
policy, with every chaos invariant checked after every step.

The simulator replays a random script of replies (5xx, 429 with Retry-After, quota, 401,
wrong answers, unevaluable code, malformed bodies) before its flaky profile (at its own 5xx
rate or a worse one) takes over; rules
open outages and move the fake clock past retry waits, the breaker's recovery timeout and the
alert reminder interval. Nothing really waits.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from benchmarks.chaos import (
    AsyncVerifier,
    CallResult,
    DecisionLog,
    Evidence,
    call_async,
    call_sync,
    chaos_policy,
    check_invariants,
    delivered,
    watch_alerts,
)
from qwed_guard import guarded_client
from qwed_guard.audit import read_records, verify_trail
from qwed_guard.clock import FakeClock
from qwed_guard.sim import SimulatedLLM, sample_questions
from qwed_guard.testing import fake_time

_machines = itertools.count(1)
# Every fault the simulator has except "hang", whose wait is real.
REPLIES = ["ok", "500", "502", "503", "429", "quota", "401", "wrong", "unevaluable", "malformed"]
QUESTIONS = [q.text for q in sample_questions(8, seed=11)]
# The production preset's breaker timing; reminders every 2 minutes instead of every hour, so
# that a few calls spaced out in time during an outage meet one.
RECOVERY = 30.0
REPEAT = 120.0


class ChaosMachine(RuleBasedStateMachine):
    """The production stack around `guarded_client(...).verify_math`, called one at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._time = fake_time()
        self.clock: FakeClock = self._time.__enter__()
        self.dir = Path(tempfile.mkdtemp(prefix="qwed-guard-chaos-"))
        self.trail = self.dir / "audit.jsonl"
        self.calls: list[CallResult] = []
        self.llm: SimulatedLLM | None = None
        self.fn: Any = None
        self.decisions = DecisionLog()
        self.key = f"stateful:{next(_machines)}"  # alerts delivered to this example only

    def build(self, llm: SimulatedLLM) -> Any:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5.0)

        def verify(query: str) -> Any:
            return client.verify_math(query)

        return verify

    def call_one(self, index: int, query: str) -> CallResult:
        return call_sync(self.fn, index, query)

    @initialize(
        script=st.lists(st.sampled_from(REPLIES), max_size=30),
        seed=st.integers(0, 2**16),
        error_5xx=st.sampled_from([0.2, 0.5, 0.9]),  # flaky's own rate, then worse
    )
    def start(self, script: list[str], seed: int, error_5xx: float) -> None:
        self.llm = SimulatedLLM(
            profile="flaky", seed=seed, script=script, error_5xx=error_5xx
        ).start()
        policy = chaos_policy(
            self.trail,
            self.key,
            fsync="none",
            base=1.0,
            recovery_timeout=RECOVERY,
            repeat_interval=REPEAT,
            jitter=None,  # waits move the fake clock: keep them reproducible
        )
        self.fn = policy.wrap(self.build(self.llm))
        self.decisions = watch_alerts(self.fn)

    @rule(
        queries=st.lists(st.sampled_from(QUESTIONS), min_size=1, max_size=8),
        gap=st.sampled_from([0.0, 2.0, 15.0]),
    )
    def calls_in_a_row(self, queries: list[str], gap: float) -> None:
        for query in queries:
            self.clock.advance(gap)  # callers arrive over time
            self.calls.append(self.call_one(len(self.calls), query))

    @rule(seconds=st.sampled_from([1.0, 10.0, RECOVERY + 1, REPEAT + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([5.0, 60.0, 5 * REPEAT]))
    def outage(self, seconds: float) -> None:
        assert self.llm is not None
        self.llm.outage(seconds)

    @invariant()
    def promises_hold(self) -> None:
        if self.llm is None:
            return
        assert self.fn.find_layer("alert_on_failures").flush(5.0)
        records = list(read_records(str(self.trail))) if self.trail.exists() else []
        verdict = verify_trail(str(self.trail)) if self.trail.exists() else None
        evidence = Evidence(
            calls=self.calls,
            records=records,
            trail_ok=verdict is None or (verdict.ok and verdict.records == len(records)),
            trail_summary=verdict.summary() if verdict else "empty",
            answer_prompts=int(self.llm.stats()["prompts"]["answer"]),
            breaker_short_circuited=int(self.fn.breaker.short_circuited),
            decisions=self.decisions.order,
            history=list(self.fn.alerts),
            delivered=delivered(self.key),
        )
        broken = [
            f"{c.name}: expected {c.expected!r}, got {c.actual!r}"
            for c in check_invariants(evidence, repeat_interval=REPEAT)
            if not c.ok
        ]
        assert broken == []
        # One call at a time: the alerter judged the calls in the order the trail holds them.
        in_trail = [str(r["call_id"]) for r in records if r["event"] == "call"]
        assert [call_id for call_id, _ in self.decisions.order] == in_trail

    def teardown(self) -> None:
        try:
            if self.fn is not None:
                self.fn.find_layer("audited").close()
                self.fn.find_layer("alert_on_failures").close()
            if self.llm is not None:
                self.llm.stop()
        finally:
            self._time.__exit__(None, None, None)
            shutil.rmtree(self.dir, ignore_errors=True)


class AsyncChaosMachine(ChaosMachine):
    """The same, around an `async def` that asks with `openai.AsyncOpenAI`."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.verifier: AsyncVerifier | None = None

    def build(self, llm: SimulatedLLM) -> Any:
        verifier = self.verifier = AsyncVerifier(llm.base_url, llm.model, timeout=5.0)

        async def verify(query: str) -> Any:
            return await verifier.verify_math(query)

        return verify

    def call_one(self, index: int, query: str) -> CallResult:
        return self.loop.run_until_complete(call_async(self.fn, index, query))

    def teardown(self) -> None:
        try:
            if self.verifier is not None:
                self.loop.run_until_complete(self.verifier.aclose())
            self.loop.close()
        finally:
            super().teardown()


_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChaosSync = ChaosMachine.TestCase
TestChaosSync.settings = _SETTINGS
TestChaosAsync = AsyncChaosMachine.TestCase
TestChaosAsync.settings = _SETTINGS
