"""The fleet against a real redis-server: leased probe slots (a SIGKILLed probe holder does not
wedge the breaker), the retry budget and the concurrency limit across processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("redis", reason="the redis package (extra 'fleet') is not installed")

from qwed_guard.breaker import BreakerState, CircuitOpen, circuit_breaker
from qwed_guard.clock import FakeClock

pytestmark = pytest.mark.services

OK = SimpleNamespace(verified=True, value=1, error=None)


def _probing_breaker(state: str, outcome: Any, probing: Any = None) -> Any:
    @circuit_breaker(
        failure_threshold=1, recovery_timeout=0.2, probe_lease=1.0, key="leased", state=state
    )
    def verify() -> Any:
        if probing is not None:
            probing.set()
            time.sleep(3600)  # holds its probe slot until killed
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return verify


def _hold_a_probe(state: str, probing: Any) -> None:
    _probing_breaker(state, OK, probing)()


def test_a_sigkilled_probe_holder_does_not_wedge_the_breaker(
    redis_url: str, redis_prefix: str
) -> None:
    state = f"{redis_url}?prefix={redis_prefix}"
    failing = _probing_breaker(state, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        failing()
    assert failing.breaker.state is BreakerState.OPEN
    time.sleep(0.25)  # recovery_timeout: the next call is a probe

    context = multiprocessing.get_context("spawn")
    probing = context.Event()
    holder = context.Process(target=_hold_a_probe, args=(state, probing))
    holder.start()
    try:
        assert probing.wait(60), "the probe never started"
        os.kill(holder.pid or 0, signal.SIGKILL)  # dies holding the only probe slot
    finally:
        holder.join(10)
    assert holder.exitcode == -signal.SIGKILL

    healthy = _probing_breaker(state, OK)
    assert healthy.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen) as refused:
        healthy()  # the slot is still leased to the dead process
    assert refused.value.retry_in is None
    deadline = time.monotonic() + 5
    while True:  # within the 1 s lease, a probe is admitted again, succeeds and closes it
        try:
            assert healthy() is OK
            break
        except CircuitOpen:
            assert time.monotonic() < deadline, "the dead probe's slot was never freed"
            time.sleep(0.05)
    assert healthy.breaker.state is BreakerState.CLOSED
    assert healthy.breaker.snapshot()["probes_in_flight"] == 0


def test_an_expired_lease_frees_the_slot_in_process(fake_clock: FakeClock) -> None:
    hung = True

    @circuit_breaker(failure_threshold=1, recovery_timeout=10, probe_lease=30)
    def verify() -> Any:
        if hung:
            raise ConnectionError("down")
        return OK

    with pytest.raises(ConnectionError):
        verify()
    fake_clock.advance(10)
    # A probe admitted and never reported (its process died): the slot is taken...
    ticket = verify.breaker.admit()
    assert ticket.kind == "probe" and ticket.lease == pytest.approx(fake_clock.wall() + 30)
    hung = False
    with pytest.raises(CircuitOpen):
        verify()
    fake_clock.advance(29.9)
    with pytest.raises(CircuitOpen):
        verify()
    fake_clock.advance(0.2)  # ...until its lease runs out
    assert verify() is OK
    assert verify.breaker.state is BreakerState.CLOSED
    # The dead probe's late report (had it only hung) changes nothing now.
    assert verify.breaker.report(ticket, False, None) is None
    assert verify.breaker.state is BreakerState.CLOSED


def test_probe_lease_is_validated() -> None:
    from qwed_guard.errors import ParameterError

    for bad in (0, -1, float("nan"), "5", True):
        with pytest.raises(ParameterError, match="probe_lease"):
            circuit_breaker(probe_lease=bad)


# ---------------------------------------------------------------- the retry budget, fleet-wide

WORKERS = 4
THREADS = 16
CALLS = 10


def _budget_worker(state: str, with_budget: bool, start: Any) -> tuple[int, int]:
    import threading

    from qwed_guard import VerificationFailed, clock, retry, retry_budget

    clock.install(FakeClock())  # one window for the whole run, in every process
    requests = 0
    lock = threading.Lock()

    def provider() -> Any:
        nonlocal requests
        with lock:
            requests += 1
        raise ConnectionError("503 Service Unavailable")  # the outage

    guarded = retry(max_tries=4, base=0, jitter=None)(provider)
    if with_budget:
        guarded = retry_budget(ratio=0.1, min_per_second=0, key="fleet-budget", state=state)(
            guarded
        )

    def run() -> None:
        for _ in range(CALLS):
            with contextlib.suppress(VerificationFailed):
                guarded()

    start.wait()
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return THREADS * CALLS, requests


def test_the_retry_budget_holds_to_its_ratio_across_processes(
    redis_url: str, redis_prefix: str
) -> None:
    state = f"{redis_url}?prefix={redis_prefix}"
    context = multiprocessing.get_context("forkserver")
    with context.Manager() as manager, context.Pool(WORKERS) as pool:
        results = {}
        for with_budget in (False, True):
            start = manager.Barrier(WORKERS, timeout=120)
            runs = pool.starmap(_budget_worker, [(state, with_budget, start)] * WORKERS)
            calls = sum(c for c, _ in runs)
            results[with_budget] = sum(r for _, r in runs) - calls  # the retries
    assert calls == WORKERS * THREADS * CALLS == 640
    assert results[False] == 3 * calls  # every call retried to max_tries
    # Fleet-wide, retries never pass 10% of the calls; the budget is used, not just refused.
    assert 0.05 * calls <= results[True] <= 0.1 * calls


# ---------------------------------------------------------------- against the simulator


def _ask(base_url: str) -> Any:
    """One chat completion from the simulator, as a verification result (raw HTTP: no SDK)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        body = json.dumps({"model": "qwed-sim", "messages": [{"role": "user", "content": "2+2"}]})
        conn.request("POST", parts.path + "/chat/completions", body, {"Content-Type": "json"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status >= 500:
        raise ConnectionError(f"{response.status} from the provider")
    return OK


def _limited_worker(base_url: str, state: str, limit: int | None, start: Any) -> int:
    import threading

    from qwed_guard import concurrency_limit, fallback

    def call() -> Any:
        return _ask(base_url)

    guarded: Any = call
    if limit is not None:
        guarded = concurrency_limit(limit=limit, wait=30, key="fleet-limit", state=state)(call)
    guarded = fallback(value=None)(guarded)
    done = []

    def run() -> None:
        for _ in range(CALLS // 2):
            done.append(guarded().source == "verified")

    start.wait()
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return sum(done)


def test_the_concurrency_limit_holds_across_processes(redis_url: str, redis_prefix: str) -> None:
    from qwed_guard.sim import SimulatedLLM

    state = f"{redis_url}?prefix={redis_prefix}"
    context = multiprocessing.get_context("forkserver")
    with (
        SimulatedLLM(profile="healthy", seed=3, latency=0.02) as llm,
        context.Manager() as manager,
        context.Pool(WORKERS) as pool,
    ):
        peaks = {}
        for limit in (None, 6):
            llm.reset_stats()
            start = manager.Barrier(WORKERS, timeout=120)
            served = pool.starmap(_limited_worker, [(llm.base_url, state, limit, start)] * WORKERS)
            assert sum(served) == WORKERS * THREADS * (CALLS // 2)  # every call got through
            peaks[limit] = llm.in_flight()["peak"]
    assert peaks[None] > 6  # 64 threads at once, unlimited
    assert 1 <= peaks[6] <= 6  # the simulator never saw more than the limit at once


def _alerting_worker(base_url: str, state: str, barrier: Any, tasks: bool) -> dict[str, Any]:
    import asyncio
    import threading

    from qwed_guard import alert_on_failures, circuit_breaker, fallback
    from qwed_guard.hooks import BreakerChanged
    from qwed_guard.layer import observed

    seen: list[tuple[str, str]] = []

    def hook(ctx: Any) -> Any:
        def watch(event: Any) -> None:
            if isinstance(event, BreakerChanged):
                seen.append((str(event.old), str(event.new)))

        return watch

    @observed(hook)
    @fallback(value=None)
    @alert_on_failures(threshold=5, notify=[], repeat_interval=None, key="fleet-t", state=state)
    @circuit_breaker(failure_threshold=10, recovery_timeout=0.5, key="fleet-t", state=state)
    def verify() -> Any:
        return _ask(base_url)

    @observed(hook)
    @fallback(value=None)
    @alert_on_failures(threshold=5, notify=[], repeat_interval=None, key="fleet-t", state=state)
    @circuit_breaker(failure_threshold=10, recovery_timeout=0.5, key="fleet-t", state=state)
    async def averify() -> Any:
        return await asyncio.to_thread(_ask, base_url)

    async def together(calls: int) -> None:
        async def one() -> None:
            for _ in range(calls):
                await averify()

        await asyncio.gather(*(one() for _ in range(100)))

    def phase(calls: int) -> None:
        if tasks:  # 100 asyncio tasks instead of 16 threads
            asyncio.run(together(max(calls // 2, 1)))
            return
        threads = [
            threading.Thread(target=lambda: [verify() for _ in range(calls)])
            for _ in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    barrier.wait()  # healthy
    phase(2)
    barrier.wait()
    barrier.wait()  # outage
    phase(CALLS)
    barrier.wait()
    barrier.wait()  # healed, recovery_timeout passed: one call each, one of them the probe
    if tasks:
        asyncio.run(averify())
    else:
        verify()
    barrier.wait()
    phase(3)  # closed again: every call goes through
    barrier.wait()
    alerts = verify.alerts if not tasks else averify.alerts
    return {"alerts": [a.kind for a in alerts], "transitions": seen}


@pytest.mark.parametrize("tasks", [False, True], ids=["16 threads", "100 tasks"])
def test_4_processes_page_once_and_trip_once(
    redis_url: str, redis_prefix: str, tasks: bool
) -> None:
    from qwed_guard.sim import SimulatedLLM

    state = f"{redis_url}?prefix={redis_prefix}"
    context = multiprocessing.get_context("forkserver")
    with (
        SimulatedLLM(profile="healthy", seed=4) as llm,
        context.Manager() as manager,
        context.Pool(WORKERS) as pool,
    ):
        barrier = manager.Barrier(WORKERS + 1, timeout=120)
        pending = pool.starmap_async(
            _alerting_worker, [(llm.base_url, state, barrier, tasks)] * WORKERS
        )
        barrier.wait()
        barrier.wait()
        llm.outage(3_600)
        barrier.wait()
        barrier.wait()
        llm.end_outage()
        time.sleep(0.6)
        barrier.wait()
        barrier.wait()
        barrier.wait()
        results = pending.get(timeout=120)
    alerts = sorted(kind for r in results for kind in r["alerts"])
    transitions = sorted(t for r in results for t in r["transitions"])
    assert alerts == ["resolved", "triggered"]
    assert transitions.count(("closed", "open")) == 1
    assert transitions.count(("half_open", "closed")) == 1
    # Failed probes re-open it during the outage; it ends closed all the same. (Refusals are
    # failures to the alerter: a burst refused while the probe ran but reported after other
    # workers' successes would be a new streak, so the recovery starts with one call each.)
    assert transitions.count(("open", "half_open")) == 1 + transitions.count(("half_open", "open"))
