"""`make bench` section 7: state in Redis against in-process state, and the PostgreSQL audit
sink against the JSONL sink, on the servers `make services` starts.

- Calls/s through `fallback(alert_on_failures(circuit_breaker(fn)))`, the layers that keep
  state, with `state="memory:"` and with `state="redis://..."`: once for a function that always
  succeeds (a healthy call reads the state and writes nothing) and once for one that fails
  every other call (every call changes the state: a failure counts, the success after it
  resets).
- Audit records/s of `PostgresSink` (`fsync="batch"`: one transaction, under the chain's
  advisory lock, per batch) against `JsonlSink` (`fsync="batch"`), same records, one thread.

A server that does not answer gives a row saying so (and how to start it) instead of figures.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.run import QUERY, RESULT, Section, audit_record, throughput
from benchmarks.services import HOW_TO_START, postgres_answers, redis_answers, service_url

__all__ = ["run"]


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def _stateful_stack(state: str, fail_every_other: bool) -> Callable[[], Any]:
    from qwed_guard import alert_on_failures, circuit_breaker, fallback

    calls = iter(range(10**12))

    def provider(query: str) -> Any:
        if fail_every_other and next(calls) % 2:
            raise ConnectionError("connection reset by peer")
        return RESULT

    key = f"bench-{uuid.uuid4().hex[:8]}"  # each contender its own alert and breaker state
    # A count the alternating failures never reach: the breaker stays closed and keeps counting.
    wrapped = circuit_breaker(failure_threshold=1000, key=key, state=state)(provider)
    wrapped = alert_on_failures(threshold=5, notify=[], key=key, state=state)(wrapped)
    guarded = fallback(value=0.0)(wrapped)
    return lambda: guarded(QUERY)


def _calls_per_second(call: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return n / (time.perf_counter() - started)


def _state_rows(section: Section, quick: bool, redis_url: str) -> None:
    prefix = f"qwed-guard-bench:{uuid.uuid4().hex[:8]}:"
    redis_state = f"{redis_url}?prefix={prefix}&ttl=600"
    n = 1_000 if quick else 5_000
    repeats = 3 if quick else 5
    places = (
        ("memory", "memory:"),
        ("redis", redis_state),
        ("redis, cache=0.05 s", redis_state + "&cache=0.05"),
    )
    contenders = {
        (workload, where): _stateful_stack(state, fail)
        for workload, fail in (("always succeeds", False), ("fails every other call", True))
        for where, state in places
    }
    for call in contenders.values():  # warm-up: connections, scripts loaded, lazy imports
        _calls_per_second(call, 50)
    samples: dict[tuple[str, str], list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = random.Random(13)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            samples[name].append(_calls_per_second(contenders[name], n))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for workload in ("always succeeds", "fails every other call"):
        memory = medians[(workload, "memory")]
        section.rows.append([f"calls/s, {workload}, state in memory", memory, "1.00x"])
        for where in ("redis", "redis, cache=0.05 s"):
            value = medians[(workload, where)]
            section.rows.append(
                [f"calls/s, {workload}, state in {where}", value, f"{value / memory:.2f}x"]
            )
    section.data["state"] = {f"{w} / {s}": v for (w, s), v in medians.items()}
    memory = medians[("always succeeds", "memory")]
    goal = min(20_000.0, memory / 10)
    for where in ("redis", "redis, cache=0.05 s"):
        value = medians[("always succeeds", where)]
        section.targets.append(
            (
                f"calls/s, state in {where}, >= {goal:,.0f} (20,000 or 10% of in-memory, "
                "the lower)",
                value >= goal,
                f"{value:,.0f} calls/s",
            )
        )
    _forget_keys(redis_url, prefix)


def _async_stack(state: str, seconds: float) -> Callable[[], Any]:
    import asyncio

    from qwed_guard import alert_on_failures, circuit_breaker, fallback

    async def provider(query: str) -> Any:
        await asyncio.sleep(seconds)
        return RESULT

    key = f"bench-async-{uuid.uuid4().hex[:8]}"
    wrapped = circuit_breaker(failure_threshold=1000, key=key, state=state)(provider)
    wrapped = alert_on_failures(threshold=5, notify=[], key=key, state=state)(wrapped)
    guarded = fallback(value=0.0)(wrapped)
    return lambda: guarded(QUERY)


def _async_rows(section: Section, quick: bool, redis_url: str) -> None:
    """100 concurrent async calls of 50 ms each, state in a Redis 2 ms away (1 ms each way)."""
    import asyncio

    from benchmarks.latency import delayed

    tasks, seconds = 100, 0.05
    prefix = f"qwed-guard-bench:{uuid.uuid4().hex[:8]}:"
    repeats = 5 if quick else 9

    async def wall(call: Callable[[], Any]) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(tasks)))
        return time.perf_counter() - started

    async def measure(far: str) -> dict[str, float]:
        contenders = {
            "state in memory": _async_stack("memory:", seconds),
            "state in Redis, 2 ms round trip": _async_stack(f"{far}?prefix={prefix}", seconds),
        }
        for call in contenders.values():
            await wall(call)  # connections made, scripts loaded
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, call in contenders.items():
                samples[name].append(await wall(call))
        return {name: statistics.median(values) for name, values in samples.items()}

    with delayed(redis_url, 0.001) as far:
        medians = asyncio.run(measure(far))
    section.rows.append([f"async wall, {tasks} tasks x 50 ms, ideal", seconds * 1000, "-"])
    for name, value in medians.items():
        section.rows.append(
            [
                f"async wall ms, {tasks} tasks x 50 ms, {name}",
                value * 1000,
                f"{value / seconds:.2f}x",
            ]
        )
    redis_wall = medians["state in Redis, 2 ms round trip"]
    section.targets.append(
        (
            "async wall <= 1.2x ideal (100 tasks x 50 ms, Redis 2 ms away)",
            redis_wall <= 1.2 * seconds,
            f"{redis_wall * 1000:.1f} ms = {redis_wall / seconds:.2f}x",
        )
    )
    section.data["async_wall"] = medians
    _forget_keys(redis_url, prefix)


def _forget_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _audit_rows(section: Section, quick: bool, postgres_url: str, workdir: Path) -> None:
    import psycopg

    from qwed_guard.audit.record import Record
    from qwed_guard.audit.sinks import JsonlSink
    from qwed_guard.audit.sinks.postgres import PostgresSink

    template = audit_record()
    n = 5_000 if quick else 20_000
    repeats = 3 if quick else 5
    counter = iter(range(10**9))
    tables: list[str] = []
    ids = iter(range(10**12))

    def fresh(record: dict[str, Any]) -> Record:
        # PostgreSQL keeps one row per record id (replays are idempotent): every id distinct.
        copy = Record(record)
        copy["id"] = f"bench/{next(ids)}"
        return copy

    def jsonl() -> float:
        path = workdir / f"fleet-audit-{next(counter)}.jsonl"
        sink = JsonlSink(path, fsync="batch")
        try:
            return throughput(lambda r: sink.append((r,)), sink.close, template, n, 1, fresh)
        finally:
            for suffix in ("", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(path) + suffix)

    def postgres() -> float:
        table = f"bench_audit_{os.getpid()}_{next(counter)}"
        tables.append(table)
        spool = workdir / f"{table}.spool.jsonl"
        sink = PostgresSink(postgres_url, fsync="batch", table=table, spool=spool)
        return throughput(lambda r: sink.append((r,)), sink.close, template, n, 1, fresh)

    contenders: dict[str, Callable[[], float]] = {
        "audit records/s, JSONL (fsync=batch)": jsonl,
        "audit records/s, PostgreSQL (fsync=batch)": postgres,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = random.Random(17)
    try:
        for _ in range(repeats):
            rng.shuffle(order)
            for name in order:
                # The server keeps writing (WAL, checkpoints) after a run: on 2 CPUs the next
                # contender would pay for it. Let it settle first.
                time.sleep(1.0)
                samples[name].append(contenders[name]())
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for table in tables:
                conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_checkpoints")
                conn.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians["audit records/s, JSONL (fsync=batch)"]
    for name, value in medians.items():
        section.rows.append([name, value, f"{value / reference:.2f}x"])
    section.data["audit"] = medians


def _budget_rows(section: Section, quick: bool, redis_url: str) -> None:
    """Requests the provider gets during an outage (the simulator's `outage` profile, every
    request a 503), from the same calls with `@retry(max_tries=4)`, without and with a retry
    budget (`ratio=0.2`, kept in Redis)."""
    import http.client
    import json

    from qwed_guard import VerificationFailed, retry, retry_budget
    from qwed_guard.sim import SimulatedLLM

    calls = 200 if quick else 1_000
    prefix = f"qwed-guard-bench:{uuid.uuid4().hex[:8]}:"
    body = json.dumps({"model": "qwed-sim", "messages": [{"role": "user", "content": QUERY}]})
    with SimulatedLLM(profile="outage", seed=5, outage_after=0, outage_seconds=86_400) as llm:
        conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=10)

        def provider() -> Any:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "json"})
            response = conn.getresponse()
            response.read()
            if response.status >= 500:
                raise ConnectionError(f"{response.status} Service Unavailable")
            return RESULT

        plain = retry(max_tries=4, base=0, jitter=None)(provider)
        budgeted = retry_budget(ratio=0.2, key="bench", state=f"{redis_url}?prefix={prefix}")(
            retry(max_tries=4, base=0, jitter=None)(provider)
        )
        requests = {}
        for name, fn in (
            ("without a retry budget", plain),
            ("with retry_budget(ratio=0.2)", budgeted),
        ):
            before = llm.stats()["requests"]
            for _ in range(calls):
                with contextlib.suppress(VerificationFailed):
                    fn()
            requests[name] = llm.stats()["requests"] - before
        conn.close()
    without = requests["without a retry budget"]
    for name, value in requests.items():
        section.rows.append(
            [
                f"provider requests during an outage, {calls} calls, {name}",
                value,
                f"{value / without:.2f}x",
            ]
        )
    section.data["retry_budget"] = {"calls": calls, **requests}
    _forget_keys(redis_url, prefix)


def run(quick: bool, workdir: Path) -> Section:
    section = Section(
        "fleet",
        "7. Fleet: state in Redis, audit trail in PostgreSQL (local servers)",
        ["measure", "value", "x in-process"],
    )
    redis_url = service_url("QWED_GUARD_REDIS_URL")
    postgres_url = service_url("QWED_GUARD_POSTGRES_URL")
    try:
        import psycopg  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        section.rows.append(["not measured", "install the `fleet` extra (redis, psycopg)", "-"])
        return section
    if redis_answers(redis_url):
        _state_rows(section, quick, redis_url)
        _async_rows(section, quick, redis_url)
        _budget_rows(section, quick, redis_url)
    else:
        absent = f"not measured: no Redis at {_where(redis_url)}; {HOW_TO_START}"
        section.rows.append(["state in Redis", absent, "-"])
    if postgres_answers(postgres_url):
        _audit_rows(section, quick, postgres_url, workdir)
    else:
        section.rows.append(
            [
                "PostgreSQL audit",
                f"not measured: no PostgreSQL at {_where(postgres_url)}; {HOW_TO_START}",
                "-",
            ]
        )
    section.notes.append(
        "Async rows: 100 concurrent calls of 50 ms through the same stack, with Redis behind a "
        "proxy that delays each direction by 1 ms (benchmarks/latency.py); ideal is 50 ms. "
        "Outage rows: the simulator's `outage` profile, every request a 503; the budget allows "
        "retries up to 20% of the calls plus 1/s over 10 s."
    )
    section.notes.append(
        "Redis and PostgreSQL run on this machine (127.0.0.1), so every state update and every "
        "batch pays a loopback round trip, not a network's. State rows: "
        "fallback(alert_on_failures(circuit_breaker(fn))), whose alerter and breaker read the "
        "shared state on every call (a healthy call writes nothing; a changed state is one Lua "
        "compare-and-set), interleaved runs, medians. Audit rows: the same records as "
        "section 2, appended one at a time from one thread until the sink is closed; "
        "PostgreSQL commits each batch in one transaction under the chain's advisory lock."
    )
    return section
