"""`make chaos`: the production policy under the simulator's worst, every promise checked.

Three runs of 10,000 calls each go through `Policy.preset("production")` (audit trail, fallback,
alerts, retry and circuit breaker) against the simulator's `flaky` profile (20 % 5xx, 5 % 429
with Retry-After, 10 % wrong answers per request), with one 10 s outage (every request 503)
starting at the middle call of each run:

- `sync-1`: `guarded_client(...).verify_math` behind the policy, one call at a time;
- `sync-16-threads`: the same function called from 16 threads;
- `async-100-tasks`: an `async def` doing QWED's two prompts with `openai.AsyncOpenAI` and
  checking the answer in QWED's SymPy engine, called from 100 asyncio tasks.

Then it reads the audit trail back and checks, per run: no exception escaped; every call
returned a verified or a fallback result; the trail holds one call record per call and every
attempt of it, and its hash chain verifies; attempts that sent a request match the answer
prompts the simulator received, one for one; short-circuited attempts match the breaker's own
count; and the alerts sent (in the trail, in `fn.alerts` and at the channel) are exactly those a
small reference implementation of the alert rules derives from the call outcomes in the trail.
It prints a table, writes `benchmarks/results/chaos.json` (and `chaos.md`), and exits 1 on any
FAIL.

Timings are the production preset's scaled down 20 times, so 30,000 calls take minutes: retry
waits `base=0.05` s (preset: 1 s), the simulator's Retry-After 25 ms (its default: 0.5 s),
breaker `recovery_timeout=1.5` s (preset: 30 s), alert reminders every 2 s (preset: 3600 s, so
that the outage produces some). The outage itself lasts 10 real seconds. Workers pause between
calls so that calls arrive at 200 per second at most (`MAX_RATE`): a short-circuited call takes
well under a millisecond, and callers do not arrive faster because the answer came fast.

    python -m benchmarks.chaos                      # what `make chaos` runs
    python -m benchmarks.chaos --calls 1000 --scenario sync-16-threads
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qwed_guard import clock
from qwed_guard.alerts import Alert
from qwed_guard.audit.record import attempts_in
from qwed_guard.context import audit_context, current
from qwed_guard.demo import percentile
from qwed_guard.fallback import GuardedResult
from qwed_guard.policy import Policy, allow_callables
from qwed_guard.state import Change, MemoryStore, State

__all__ = [
    "SCENARIOS",
    "AsyncVerifier",
    "CallResult",
    "Check",
    "DecisionLog",
    "Evidence",
    "Report",
    "Scenario",
    "chaos_policy",
    "check_invariants",
    "expected_alerts",
    "made_request",
    "main",
    "run_scenario",
]

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
CALLS = 10_000
SEED = 7
OUTAGE_SECONDS = 10.0
FALLBACK_VALUE = None

# The production preset's timings, scaled down 20x (see the module docstring).
RETRY_BASE = 0.05
RETRY_AFTER = 0.025
RECOVERY_TIMEOUT = 1.5
REPEAT_INTERVAL = 2.0
ALERT_THRESHOLD = 5
"""The production preset's `alert_on_failures.threshold` (not overridden)."""
MAX_RATE = 200.0
"""Calls per second the workers offer at most: each pauses `concurrency / MAX_RATE` s after a
call. A short-circuited call takes well under a millisecond; without a pace, one open period
of the breaker would swallow thousands of calls, which is not how callers arrive."""


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str
    """"sync" (threads) or "async" (tasks)."""
    concurrency: int


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("sync-1", "sync", 1),
    Scenario("sync-16-threads", "sync", 16),
    Scenario("async-100-tasks", "async", 100),
)


# ---------------------------------------------------------------- the stack under test


def chaos_policy(
    trail: str | os.PathLike[str],
    key: str,
    *,
    fsync: str = "always",
    base: float = RETRY_BASE,
    recovery_timeout: float = RECOVERY_TIMEOUT,
    repeat_interval: float = REPEAT_INTERVAL,
    jitter: str | None = "full",
) -> Policy:
    """The production preset with the scaled timings, its trail at `trail`, alerts to `deliver`.

    The preset already has the circuit breaker (innermost, inside retry)."""
    allow_callables("benchmarks")  # the policy names this module's `deliver` channel
    return Policy.preset(
        "production",
        fallback_value=FALLBACK_VALUE,
        audited={"sink": f"jsonl:{os.fspath(trail)}", "fsync": fsync},
        alert_on_failures={
            "key": key,
            "repeat_interval": repeat_interval,
            "notify": ["benchmarks.chaos:deliver"],
            "history_size": 100_000,
        },
        retry={"base": base, "jitter": jitter},
        circuit_breaker={"recovery_timeout": recovery_timeout},
    )


_delivered: list[Alert] = []
_runs = itertools.count(1)
_delivered_lock = threading.Lock()


def deliver(alert: Alert) -> None:
    """The alert channel of the chaos runs: keeps what it is sent."""
    with _delivered_lock:
        _delivered.append(alert)


def delivered(key: str) -> list[Alert]:
    """The alerts delivered so far for alert key `key`."""
    with _delivered_lock:
        return [alert for alert in _delivered if alert.key == key]


class DecisionLog:
    """The alerter's state store, wrapped to note which call it judged, in order, and when.

    The alert rules depend on the order in which calls finish and on time (reminders). Under
    concurrency the trail's order is not that order (records are written after the decision),
    so the reference implementation replays the calls in the order noted here, with the
    outcome of each taken from its call record. Reads and writes happen under one lock, so the
    order noted is the order the alerter saw the state in.
    """

    def __init__(self) -> None:
        self._inner = MemoryStore()  # what `state="memory:"` gives, private to this run
        self._lock = threading.Lock()
        self.order: list[tuple[str, float]] = []
        """(call_id, the time the alerter decided at), in the order it decided."""

    @staticmethod
    def _call_id() -> str:
        ctx = current()
        return ctx.call_id if ctx is not None else "?"

    def update(self, key: str, change: Change[T], *, ttl: float | None = None) -> T:
        keywords: Mapping[str, Any] = getattr(change, "keywords", None) or {}
        now = keywords.get("now")
        with self._lock:
            decision = self._inner.update(key, change, ttl=ttl)
            self.order.append((self._call_id(), float(now) if now is not None else clock.wall()))
        return decision

    def get(self, key: str) -> State | None:
        return self._inner.get(key)

    def peek(self, key: str) -> State | None:
        """The alerter's look before a success: with nothing stored it skips `update` (the
        success changes nothing), so the skip is noted here."""
        with self._lock:
            value = self._inner.get(key)
            if value is None:
                self.order.append((self._call_id(), clock.wall()))
            return value


def watch_alerts(fn: Any) -> DecisionLog:
    """Give the guarded function's alerter a `DecisionLog` as its store (before any call).

    The alerter reads an in-memory store without a lock before a success (`_peek`); that read
    goes through the log too, so the skipped successes are noted and the fast path still runs.
    The check "calls the alerter judged = calls" fails if a call reaches the alerter some
    other way."""
    layer = fn.find_layer("alert_on_failures")
    log = DecisionLog()
    layer.store = log
    if getattr(layer, "_peek", None) is not None:
        layer._peek = log.peek
    return log


ANSWER_PROMPT = (
    "Solve this math problem and respond ONLY with the numerical answer:\n\n{query}\n\n"
    "Answer (number only):"
)
EXPRESSION_PROMPT = (
    "Convert this to a SymPy expression that we can verify:\n\n{query}\n\n"
    "Respond with ONLY the Python SymPy code to evaluate this, nothing else.\n"
    'Example: "sympy.simplify(2+2)" or "sympy.diff(x**2, x)"\n\nSymPy code:'
)


async def _record_failing_response(response: Any) -> None:
    # The async twin of the guarded client's hook: the classifier sees status, code, Retry-After.
    if response.status_code >= 400:
        from qwed_guard.client import record_failing_response

        await response.aread()
        record_failing_response(response)


class AsyncVerifier:
    """QWEDLocal.verify_math's two prompts over `openai.AsyncOpenAI`, judged by QWED's engine.

    Unlike QWEDLocal it lets the SDK's exceptions (503, 429, connection errors) propagate, as
    an async function written against the SDK would; SDK retries are off (`max_retries=0`)."""

    def __init__(self, base_url: str, model: str, *, timeout: float = 10.0) -> None:
        import httpx2
        import openai

        self.model = model
        self.in_flight = 0
        self._http = httpx2.AsyncClient(
            timeout=timeout, event_hooks={"response": [_record_failing_response]}
        )
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key="sim", max_retries=0, timeout=timeout, http_client=self._http
        )

    async def _ask(self, prompt: str) -> str:
        self.in_flight += 1
        try:
            response = await self._client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0
            )
        finally:
            self.in_flight -= 1
        return response.choices[0].message.content or ""

    async def settled(self) -> None:
        """Return once no request is in flight (polling in real milliseconds)."""
        while self.in_flight:
            await asyncio.sleep(0.001)

    async def verify_math(self, query: str) -> Any:
        answer = await self._ask(ANSWER_PROMPT.format(query=query))
        expression = await self._ask(EXPRESSION_PROMPT.format(query=query))
        return judge(answer, expression)

    async def aclose(self) -> None:
        await self._client.close()


def judge(answer: str, expression: str) -> Any:
    """QWED's own check of an answer against a SymPy expression: a `VerificationResult`."""
    import sympy  # type: ignore[import-untyped]
    from qwed_sdk.qwed_local import (
        VerificationResult,
        _format_sympy_result,
        _math_answers_match,
        _safe_eval_sympy_expr,
    )

    answer = answer.strip()
    try:
        value = _safe_eval_sympy_expr(expression, {"sympy": sympy, "x": sympy.Symbol("x")})
        text = _format_sympy_result(value)
        correct = _math_answers_match(answer, value)
    except Exception as exc:
        return VerificationResult(
            verified=False,
            error=f"SymPy verification failed: {exc}",
            evidence={"llm_answer": answer, "llm_expr": expression},
        )
    return VerificationResult(
        verified=correct,
        value=text,
        confidence=1.0 if correct else 0.0,
        evidence={"llm_answer": answer, "verified_value": text, "sympy_expr": expression.strip()},
    )


# ---------------------------------------------------------------- running calls


@dataclass
class CallResult:
    """What one call gave its caller: a result, or the exception that escaped (a bug)."""

    index: int
    result: GuardedResult | None
    error: str | None
    seconds: float


def call_sync(fn: Callable[[str], Any], index: int, query: str) -> CallResult:
    started = time.perf_counter()
    try:
        with audit_context(chaos_call=index):
            result = fn(query)
    except Exception as exc:
        return CallResult(
            index, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started
        )
    return _returned(index, result, time.perf_counter() - started)


async def call_async(fn: Callable[[str], Awaitable[Any]], index: int, query: str) -> CallResult:
    started = time.perf_counter()
    try:
        with audit_context(chaos_call=index):
            result = await fn(query)
    except Exception as exc:
        return CallResult(
            index, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started
        )
    return _returned(index, result, time.perf_counter() - started)


def _returned(index: int, result: Any, seconds: float) -> CallResult:
    if not isinstance(result, GuardedResult):
        return CallResult(index, None, f"returned {type(result).__name__}", seconds)
    return CallResult(index, result, None, seconds)


def run_threads(
    fn: Callable[[str], Any],
    questions: Sequence[str],
    concurrency: int,
    on_start: Callable[[int], None],
    pause: float = 0.0,
) -> list[CallResult]:
    """Every question once, from `concurrency` threads (the calling thread when 1), each
    pausing `pause` seconds after every call."""
    results: list[CallResult | None] = [None] * len(questions)
    counter = itertools.count()
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(counter)
            if index >= len(questions):
                return
            on_start(index)
            results[index] = call_sync(fn, index, questions[index])
            if pause:
                clock.active().sleep(pause)  # virtual under a fake clock, like every wait

    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return [r for r in results if r is not None]


async def run_tasks(
    fn: Callable[[str], Awaitable[Any]],
    questions: Sequence[str],
    concurrency: int,
    on_start: Callable[[int], None],
    pause: float = 0.0,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> list[CallResult]:
    """Every question once, from `concurrency` asyncio tasks, each pausing `pause` seconds
    after every call (first awaiting `settle`, when given)."""
    results: list[CallResult | None] = [None] * len(questions)
    counter = itertools.count()

    async def worker() -> None:
        while (index := next(counter)) < len(questions):
            on_start(index)
            results[index] = await call_async(fn, index, questions[index])
            if settle is not None:
                await settle()
            if pause:
                await clock.active().asleep(pause)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- the invariants


@dataclass
class Check:
    """One invariant: what it should be, what it was."""

    name: str
    expected: Any
    actual: Any
    ok: bool
    proves: str

    def cell(self) -> str:
        if self.ok:
            return f"{_fmt(self.actual)} PASS"
        return f"{_fmt(self.actual)} (expected {_fmt(self.expected)}) FAIL"


_KINDS = ("triggered", "repeat", "resolved")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping) and set(value) <= set(_KINDS):
        return " / ".join(f"{value.get(kind, 0):,}" for kind in _KINDS)
    return str(value)


@dataclass
class Evidence:
    """Everything the checks read: what callers got, the trail, and what the others counted."""

    calls: Sequence[CallResult]
    records: Sequence[Mapping[str, Any]]
    trail_ok: bool
    trail_summary: str
    answer_prompts: int
    """Answer-prompt requests the simulator received."""
    breaker_short_circuited: int
    decisions: Sequence[tuple[str, float]]
    """(call_id, time) in the order the alerter judged calls (`DecisionLog.order`)."""
    history: Sequence[Alert]
    delivered: Sequence[Alert] | None = None
    """What the channel received (None: not checked, e.g. before a flush)."""


def made_request(record: Mapping[str, Any]) -> bool:
    """Whether an attempt record stands for an attempt that sent its answer prompt.

    A short-circuited attempt made no call; an attempt whose connection failed never reached
    the server; an attempt that reused a reply took the answer prompt's from the attempt before
    (the guarded client does that after a transient failure of the expression prompt). Every
    other attempt sent the answer prompt first, exactly once."""
    if record.get("outcome") == "short_circuited" or record.get("reused"):
        return False
    error = record.get("error") or ""
    return "Connection error" not in error and "ConnectError" not in error


def expected_alerts(
    calls: Iterable[tuple[str, str, float]],
    *,
    threshold: int,
    repeat_interval: float | None,
    alert_on_permanent: bool = True,
) -> list[tuple[str, str, int]]:
    """The alerts the rules imply for `(call_id, outcome, time)` in order: (call_id, kind,
    failures).

    The rules, as the README states them: the `threshold`-th failed call in a row triggers (a
    permanent failure at once); while still failing, a reminder at most every
    `repeat_interval` seconds; the first verified call after an alert resolves it. A call
    failed when its outcome is anything but verified. One page per outage: calls the breaker
    refused (`short_circuited`) right after a resolve are not counted until a call ran again.
    """
    alerts: list[tuple[str, str, int]] = []
    streak = 0
    alerting = False
    settling = False
    last_sent = 0.0
    for call_id, outcome, now in calls:
        if outcome == "short_circuited" and settling:
            continue
        settling = False
        if outcome == "verified":
            if alerting:
                alerts.append((call_id, "resolved", streak))
                alerting = False
                settling = True
            streak = 0
            continue
        streak += 1
        if not alerting:
            if streak >= threshold or (alert_on_permanent and outcome == "permanent"):
                alerts.append((call_id, "triggered", streak))
                alerting, last_sent = True, now
        elif repeat_interval is not None and now - last_sent >= repeat_interval:
            alerts.append((call_id, "repeat", streak))
            last_sent = now
    return alerts


def _alert_field(alert: Any, name: str) -> Any:
    return alert.get(name) if isinstance(alert, Mapping) else getattr(alert, name, None)


def check_invariants(
    ev: Evidence,
    *,
    threshold: int = ALERT_THRESHOLD,
    repeat_interval: float | None = REPEAT_INTERVAL,
) -> list[Check]:
    """Every invariant of the issue, in table order."""
    checks: list[Check] = []

    def add(name: str, expected: Any, actual: Any, proves: str, ok: bool | None = None) -> None:
        checks.append(
            Check(name, expected, actual, expected == actual if ok is None else ok, proves)
        )

    n = len(ev.calls)
    escaped = [c for c in ev.calls if c.error is not None]
    add(
        "unhandled exceptions",
        0,
        len(escaped),
        "no failure mode escapes the stack as an exception",
    )
    results = [c.result for c in ev.calls if c.result is not None]
    verified = sum(1 for r in results if r.source == "verified")
    fell_back = sum(1 for r in results if r.source == "fallback")
    add(
        "verified + fallback = calls",
        n,
        verified + fell_back,
        "every call returned a labelled result",
    )
    lying = sum(1 for r in results if r.source == "fallback" and r.verified)
    add("fallback results marked verified", 0, lying, "a fallback never claims verified=True")

    attempts = list(attempts_in(ev.records))  # a call's answered attempt is inline in it
    call_records = [r for r in ev.records if r.get("event") == "call"]
    by_index: dict[int, Mapping[str, Any]] = {}
    duplicates = 0
    for record in call_records:
        index = (record.get("context") or {}).get("chaos_call")
        if isinstance(index, int):
            duplicates += index in by_index
            by_index[index] = record
    missing = sum(1 for c in ev.calls if c.index not in by_index)
    add(
        "call records = calls",
        n,
        len(call_records),
        "one call record per call, none lost or doubled",
        ok=len(call_records) == n and not duplicates and not missing,
    )

    per_call: dict[str, list[int]] = {}
    for record in attempts:
        per_call.setdefault(str(record.get("call_id")), []).append(int(record.get("attempt", 0)))
    incomplete = sum(
        1
        for record in call_records
        if sorted(per_call.get(str(record.get("call_id")), []))
        != list(range(1, int(record.get("attempt", 0)) + 1))
    )
    add(
        "calls missing attempt records",
        0,
        incomplete,
        "each call record's attempts are all in the trail",
    )

    disagree = 0
    for c in ev.calls:
        own = by_index.get(c.index)
        if c.result is None or own is None:
            continue
        if (own.get("source"), own.get("attempt"), own.get("outcome")) != (
            c.result.source,
            c.result.attempts,
            c.result.outcome.value,
        ):
            disagree += 1
    add(
        "results that disagree with their record",
        0,
        disagree,
        "the trail says what the caller got (source, attempts, outcome)",
    )

    sent = sum(1 for r in attempts if made_request(r))
    add(
        "attempts that sent a request = answer prompts served",
        ev.answer_prompts,
        sent,
        "every attempt that reached the provider is in the trail, exactly once",
    )
    short = sum(1 for r in attempts if r.get("outcome") == "short_circuited")
    add(
        "short-circuited attempts = breaker's count",
        ev.breaker_short_circuited,
        short,
        "every call the breaker refused is in the trail",
    )
    add("hash chain verifies", True, ev.trail_ok, ev.trail_summary or "qwed-guard audit verify")

    # Alerts: the reference replays the calls in the order the alerter judged them.
    judged = [call_id for call_id, _ in ev.decisions]
    add(
        "calls the alerter judged = calls",
        len(call_records),
        len(judged),
        "every call reached the alerter once",
        ok=sorted(judged) == sorted(str(r.get("call_id")) for r in call_records),
    )
    outcome_of = {str(r.get("call_id")): str(r.get("outcome")) for r in call_records}
    replay = [(cid, outcome_of.get(cid, "?"), now) for cid, now in ev.decisions]
    expected = expected_alerts(replay, threshold=threshold, repeat_interval=repeat_interval)
    position = {cid: i for i, cid in enumerate(judged)}
    in_trail: list[tuple[str, str, int]] = []
    for record in call_records:
        for event in record.get("events") or ():
            if event.get("event") == "alert_sent":
                alert = event.get("alert")
                kind = str(_alert_field(alert, "kind"))
                in_trail.append(
                    (str(record.get("call_id")), kind, int(_alert_field(alert, "failures") or 0))
                )
    in_trail.sort(key=lambda item: position.get(item[0], -1))
    for kind in ("triggered", "repeat", "resolved"):
        add(
            f"alerts {kind}",
            sum(1 for a in expected if a[1] == kind),
            sum(1 for a in in_trail if a[1] == kind),
            "as many as the rules imply from the outcomes in the trail",
        )
    add(
        "alerts match the rules call by call",
        True,
        in_trail == expected,
        "same calls, kinds and failure counts as the reference implementation",
    )
    history = Counter(str(a.kind) for a in ev.history)
    add(
        "fn.alerts = alerts in the trail (triggered / repeat / resolved)",
        dict(Counter(a[1] for a in in_trail)),
        dict(history),
        "the alert history and the trail agree",
    )
    if ev.delivered is not None:
        add(
            "alerts delivered = alerts sent (triggered / repeat / resolved)",
            dict(history),
            dict(Counter(str(a.kind) for a in ev.delivered)),
            "the channel received every alert, none dropped",
        )
    return checks


# ---------------------------------------------------------------- one run


@dataclass
class Report:
    scenario: Scenario
    calls: int
    checks: list[Check]
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: Evidence | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _remove_trail(path: Path) -> None:
    for suffix in ("", ".checkpoints", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_scenario(
    scenario: Scenario,
    calls: int = CALLS,
    *,
    seed: int = SEED,
    outage: float = OUTAGE_SECONDS,
    rate: float = MAX_RATE,
    out_dir: Path = RESULTS,
) -> Report:
    """One run: `calls` questions through the policy, an outage at the middle call, the checks."""
    from qwed_guard.audit import read_records, verify_trail
    from qwed_guard.client import guarded_client
    from qwed_guard.sim import SimulatedLLM, sample_questions
    from qwed_guard.testing import is_testing

    out_dir.mkdir(parents=True, exist_ok=True)
    trail = out_dir / f"chaos-{scenario.name}.jsonl"
    _remove_trail(trail)
    key = f"chaos:{scenario.name}:{next(_runs)}"  # alerts delivered to this run only
    policy = chaos_policy(trail, key)
    questions = [q.text for q in sample_questions(calls, seed)]
    outage_at: list[float] = []
    # Each worker pauses so that calls arrive at `rate` per second at most; a fake clock's wait
    # moves time for every worker at once, so there one pause per call is the whole interval.
    pause = (1 if is_testing() else scenario.concurrency) / rate

    with SimulatedLLM(profile="flaky", seed=seed, retry_after=RETRY_AFTER) as llm:

        def on_start(index: int) -> None:
            if index == calls // 2:
                llm.outage(outage)
                outage_at.append(time.perf_counter())

        began = time.perf_counter()
        if scenario.mode == "sync":
            client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=10.0)

            def verify(query: str) -> Any:
                return client.verify_math(query)

            fn: Any = policy.wrap(verify)
            decisions = watch_alerts(fn)
            results = run_threads(fn, questions, scenario.concurrency, on_start, pause)
        else:

            async def run() -> list[CallResult]:
                verifier = AsyncVerifier(llm.base_url, llm.model)

                async def averify(query: str) -> Any:
                    return await verifier.verify_math(query)

                afn: Any = policy.wrap(averify)
                nonlocal fn, decisions
                fn, decisions = afn, watch_alerts(afn)
                try:
                    # Under a fake clock a pause costs no real time: while one probe's real
                    # request is in flight, tasks whose calls the open breaker refused at once
                    # would run through hundreds of calls and virtual seconds (the outage with
                    # them). There, time moves on only once the requests in flight are answered.
                    settle = verifier.settled if is_testing() else None
                    return await run_tasks(
                        afn, questions, scenario.concurrency, on_start, pause, settle
                    )
                finally:
                    await verifier.aclose()

            fn, decisions = None, DecisionLog()
            results = asyncio.run(run())
        wall = time.perf_counter() - began
        stats = llm.stats()

    fn.find_layer("audited").flush()
    alerter = fn.find_layer("alert_on_failures")
    alerter.flush(30.0)
    records = list(read_records(str(trail)))
    verdict = verify_trail(str(trail))
    evidence = Evidence(
        calls=results,
        records=records,
        trail_ok=verdict.ok and verdict.records == len(records),
        trail_summary=verdict.summary(),
        answer_prompts=int(stats["prompts"]["answer"]),
        breaker_short_circuited=int(fn.breaker.short_circuited),
        decisions=decisions.order,
        history=list(fn.alerts),
        delivered=delivered(key),
    )
    checks = check_invariants(evidence)
    checks.append(
        Check(
            "outage 503s served mid-run",
            "> 0",
            int(stats["replies"].get("outage", 0)),
            int(stats["replies"].get("outage", 0)) > 0,
            "the outage really happened",
        )
    )
    latencies = [c.seconds for c in results]
    sources = Counter(c.result.source for c in results if c.result is not None)
    reasons = Counter(
        c.result.outcome.value for c in results if c.result is not None and c.result.is_fallback
    )
    attempts = sum(1 for _ in attempts_in(records))
    metrics: dict[str, Any] = {
        "calls": len(results),
        "verified": sources.get("verified", 0),
        "fallback": sources.get("fallback", 0),
        "fallback_outcomes": dict(sorted(reasons.items())),
        "attempts_per_call": round(attempts / max(len(results), 1), 3),
        "http_requests": int(stats["requests"]),
        "http_requests_per_call": round(int(stats["requests"]) / max(len(results), 1), 3),
        "answer_prompts": int(stats["prompts"]["answer"]),
        "replies": {k: v for k, v in stats["replies"].items() if v},
        "breaker_opened": int(fn.breaker.opened),
        "breaker_short_circuited": int(fn.breaker.short_circuited),
        "alerts": dict(Counter(str(a.kind) for a in fn.alerts)),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p95": round(percentile(latencies, 0.95) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
        },
        "wall_seconds": round(wall, 1),
        "outage_started_at_s": round(outage_at[0] - began, 1) if outage_at else None,
        "trail": str(trail),
        "trail_records": len(records),
    }
    return Report(scenario, calls, checks, metrics, evidence)


# ---------------------------------------------------------------- output


def _rows(reports: Sequence[Report]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []
    names = [check.name for check in reports[0].checks]
    for index, name in enumerate(names):
        rows.append((name, [r.checks[index].cell() for r in reports]))

    def metric(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
        rows.append((label, [_fmt(get(r.metrics)) for r in reports]))

    metric("calls verified / fallback", lambda m: f"{m['verified']:,} / {m['fallback']:,}")
    metric("attempts per call", lambda m: f"{m['attempts_per_call']:.2f}")
    metric("HTTP requests per call", lambda m: f"{m['http_requests_per_call']:.2f}")
    metric("breaker opened", lambda m: m["breaker_opened"])
    metric(
        "latency p50 / p95 / p99",
        lambda m: "{p50:.1f} / {p95:.1f} / {p99:.1f} ms".format(**m["latency_ms"]),
    )
    metric("wall time", lambda m: f"{m['wall_seconds']:.0f} s")
    return rows


def markdown(reports: Sequence[Report]) -> str:
    head = "| | " + " | ".join(f"`{r.scenario.name}`" for r in reports) + " |"
    lines = [head, "|---" * (len(reports) + 1) + "|"]
    for label, cells in _rows(reports):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(reports: Sequence[Report]) -> None:
    from rich.console import Console
    from rich.table import Table

    calls = reports[0].calls
    table = Table(
        title=f"qwed-guard chaos: {calls:,} calls per run, production policy, flaky + outage"
    )
    table.add_column("invariant / measure")
    for report in reports:
        table.add_column(report.scenario.name, justify="right")
    for label, cells in _rows(reports):
        styled = [f"[red]{cell}[/red]" if cell.endswith("FAIL") else cell for cell in cells]
        table.add_row(label, *styled)
    Console(width=160).print(table)


def write_json(reports: Sequence[Report], path: Path) -> None:
    data = {
        "ok": all(r.ok for r in reports),
        "config": {
            "policy": "production preset",
            "profile": "flaky",
            "outage_seconds": OUTAGE_SECONDS,
            "retry_base": RETRY_BASE,
            "retry_after": RETRY_AFTER,
            "recovery_timeout": RECOVERY_TIMEOUT,
            "repeat_interval": REPEAT_INTERVAL,
            "alert_threshold": ALERT_THRESHOLD,
            "seed": SEED,
        },
        "scenarios": {
            r.scenario.name: {
                "mode": r.scenario.mode,
                "concurrency": r.scenario.concurrency,
                "ok": r.ok,
                "checks": [
                    {
                        "name": c.name,
                        "expected": c.expected,
                        "actual": c.actual,
                        "ok": c.ok,
                        "proves": c.proves,
                    }
                    for c in r.checks
                ],
                "metrics": r.metrics,
            }
            for r in reports
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per run (default 10000)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in SCENARIOS],
        help="run only this scenario (repeatable; default all)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--outage", type=float, default=OUTAGE_SECONDS, help="outage seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    os.environ.setdefault("QWED_QUIET", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    from loguru import logger

    # Breaker transitions are logged as they happen: keep them, but out of the table's way.
    logger.remove()
    logger.add(args.out / "chaos.log", level="INFO")
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    reports = []
    for scenario in chosen:
        print(f"running {scenario.name}: {args.calls:,} calls ...", flush=True)
        report = run_scenario(
            scenario, args.calls, seed=args.seed, outage=args.outage, out_dir=args.out
        )
        failed = [c.name for c in report.checks if not c.ok]
        state = "PASS" if not failed else "FAIL: " + ", ".join(failed)
        print(f"  {report.metrics['wall_seconds']:.0f} s, {state}", flush=True)
        reports.append(report)
    print_table(reports)
    write_json(reports, args.out / "chaos.json")
    (args.out / "chaos.md").write_text(markdown(reports) + "\n")
    print(f"wrote {args.out / 'chaos.json'} and {args.out / 'chaos.md'}")
    ok = all(r.ok for r in reports)
    if not ok:
        print("chaos: FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    # Run the module's importable copy, so the `benchmarks.chaos:deliver` channel the policy
    # imports is this run's (not a second module object).
    from benchmarks.chaos import main as _main

    sys.exit(_main())
