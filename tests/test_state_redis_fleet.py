"""Four worker processes sharing one Redis behave as one process: the same alerts and the same
circuit-breaker transitions, against the simulator, through a healthy spell, an outage and the
recovery. With per-process state the same fleet pages four times."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("redis", reason="the redis package (extra 'fleet') is not installed")

from qwed_guard.clock import FakeClock
from qwed_guard.context import CallContext
from qwed_guard.hooks import BreakerChanged, Event
from qwed_guard.layer import observed
from qwed_guard.sim import SimulatedLLM

pytestmark = pytest.mark.services

WORKERS = 4
QUESTION = "What is 15% of 200?"
# Each phase: name, calls per worker, seconds every clock moves on before it. The parent opens
# and heals the outage in the simulator between phases. 15 failed calls per worker are enough
# for a worker counting alone to page and trip too.
PHASES = (("healthy", 3, 0.0), ("outage", 15, 0.0), ("recovered", 5, 60.0))
_clients: dict[str, Any] = {}


class _Transitions:
    """A hook: keeps every breaker transition the calls report, as the audit trail sees it."""

    def __init__(self) -> None:
        self.phase = ""
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, ctx: CallContext) -> Callable[[Event], None]:
        return self.watch

    def watch(self, event: Event) -> None:
        if isinstance(event, BreakerChanged):
            self.seen.append((self.phase, str(event.old), str(event.new)))


def _guarded(base_url: str, model: str, state: Any) -> tuple[Any, _Transitions]:
    from qwed_guard import fallback, guarded_client
    from qwed_guard.alerts import alert_on_failures
    from qwed_guard.breaker import circuit_breaker

    client = _clients.get(base_url)
    if client is None:  # one per process: building the first costs seconds (qwed_sdk import)
        client = _clients[base_url] = guarded_client(base_url=base_url, model=model, timeout=10)
    recorder = _Transitions()

    @fallback(value=None)
    @alert_on_failures(threshold=5, notify=[], repeat_interval=None, key="fleet", state=state)
    @circuit_breaker(failure_threshold=10, recovery_timeout=30, key="fleet", state=state)
    def verify(query: str) -> Any:
        return client.verify_math(query)

    return observed(recorder)(verify), recorder


def _summary(fn: Any, recorder: _Transitions) -> dict[str, Any]:
    return {
        "alerts": [
            (a.kind, a.reason, a.failures if a.kind == "triggered" else None) for a in fn.alerts
        ],
        "transitions": recorder.seen,
    }


def _worker(base_url: str, model: str, state: str, barrier: Any) -> dict[str, Any]:
    from qwed_guard import clock

    fake = FakeClock()  # the same timeline in every worker: phases move all clocks alike
    clock.install(fake)
    fn, recorder = _guarded(base_url, model, state)
    for phase, calls, advance in PHASES:
        barrier.wait()  # the simulator is set for this phase
        fake.advance(advance)
        recorder.phase = phase
        for _ in range(calls):
            fn(QUESTION)
        barrier.wait()  # every worker is done with it
    return _summary(fn, recorder)


def _fleet(pool: Any, manager: Any, llm: SimulatedLLM, state: str, fake: FakeClock) -> Any:
    barrier = manager.Barrier(WORKERS + 1, timeout=120)
    pending = pool.starmap_async(_worker, [(llm.base_url, llm.model, state, barrier)] * WORKERS)
    for phase, _, _ in PHASES:
        if phase == "outage":
            llm.outage(1_000)
        elif phase == "recovered":
            fake.advance(1_000)
        barrier.wait()
        barrier.wait()
    results = pending.get(timeout=120)
    alerts = sorted(alert for r in results for alert in r["alerts"])
    transitions = sorted(t for r in results for t in r["transitions"])
    return alerts, transitions


def test_four_workers_sharing_redis_alert_and_trip_as_one_process(
    redis_url: str, redis_prefix: str, fake_clock: FakeClock
) -> None:
    os.environ.setdefault("QWED_QUIET", "1")
    # Workers fork from a server that imported qwed_sdk once (seconds), while the reference runs.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qwed_sdk", "qwed_guard.alerts", "qwed_guard.breaker"])
    with (
        SimulatedLLM(profile="healthy", seed=1) as llm,
        context.Manager() as manager,
        context.Pool(WORKERS) as pool,
    ):
        # The reference: one process, the same calls in the same phases, in-process state.
        from qwed_guard.state import MemoryStore

        fn, recorder = _guarded(llm.base_url, llm.model, MemoryStore())
        for phase, calls, advance in PHASES:
            if phase == "outage":
                llm.outage(1_000)
            fake_clock.advance(advance + (1_000 if phase == "recovered" else 0))
            recorder.phase = phase
            for _ in range(WORKERS * calls):
                fn(QUESTION)
        single = _summary(fn, recorder)
        assert single["alerts"] == [
            ("triggered", "consecutive", 5),
            ("resolved", "consecutive", None),
        ]
        assert single["transitions"] == [
            ("outage", "closed", "open"),
            ("recovered", "open", "half_open"),
            ("recovered", "half_open", "closed"),
        ]

        shared = _fleet(pool, manager, llm, f"{redis_url}?prefix={redis_prefix}", fake_clock)
        apart = _fleet(pool, manager, llm, "memory:", fake_clock)

    assert shared == (sorted(single["alerts"]), sorted(single["transitions"]))
    # Without the shared store every worker counts alone: four pages, four breakers.
    assert apart[0].count(("triggered", "consecutive", 5)) == WORKERS
    assert apart[1].count(("outage", "closed", "open")) == WORKERS
