"""`make bench`: qwed_guard measured against what users would pick instead, in one run.

    python -m benchmarks.run                 # every section (a few minutes)
    python -m benchmarks.run --quick         # fewer repetitions and calls (about a minute)
    python -m benchmarks.run --only overhead,audit

Sections: success-path overhead per call (vs tenacity, backoff, stamina), audit throughput (vs
loguru and stdlib logging), import time, async concurrency against the simulator, memory, and
request amplification under the `flaky` profile (vs the seed's own retry code). Contenders run
interleaved in shuffled order, each batch repeated; tables show medians and ratios, because
absolute times vary between machines and runs. Prints markdown tables, writes
`benchmarks/results/latest.json` and, after a full run, `benchmarks/RESULTS.md`.

Fleet sections (Redis state, PostgreSQL audit) plug in through `benchmarks/fleet.py`: a module
with `run(quick: bool) -> Section` is picked up when present (see `_fleet`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("QWED_QUIET", "1")

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
QUERY = "What is 15% of 200?"


@dataclass
class Section:
    """One table: rows of cells, plus the targets it checks."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)
    """(target, met? (None: not measured), the measured value)"""
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        for target, met, value in self.targets:
            mark = "n/a" if met is None else ("met" if met else "MISSED")
            lines.append("")
            lines.append(f"- target {target}: **{mark}** ({value})")
        for note in self.notes:
            lines.append("")
            lines.append(note)
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ------------------------------------------------------------------------ the guarded function


@dataclass
class Result:
    """What `QWEDLocal.verify_math` returns, in shape: a verified result."""

    verified: bool = True
    value: float = 30.0
    confidence: float = 1.0
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


RESULT = Result()


def verify(query: str) -> Result:
    return RESULT


def production_stack(
    fn: Callable[..., Any], sink: str, fsync: str = "batch", *, breaker: bool = False
) -> Any:
    """The canonical stack: audited(fallback(alert_on_failures(retry([circuit_breaker](fn)))))."""
    from qwed_guard import alert_on_failures, audited, circuit_breaker, fallback, retry

    wrapped = circuit_breaker()(fn) if breaker else fn
    wrapped = retry(max_tries=3)(wrapped)
    wrapped = alert_on_failures(threshold=5)(wrapped)
    wrapped = fallback(value=0.0)(wrapped)
    return audited(sink=sink, fsync=fsync)(wrapped)


def _no_op_hook(ctx: Any) -> Callable[[Any], None]:
    return _ignore


def _ignore(event: Any) -> None:
    pass


def unaudited_stack(fn: Callable[..., Any]) -> Any:
    """The canonical stack without the audit trail: fallback(alert_on_failures(retry(fn)))."""
    from qwed_guard import alert_on_failures, fallback, retry

    return fallback(value=0.0)(alert_on_failures(threshold=5)(retry(max_tries=3)(fn)))


# ------------------------------------------------------------------------ timing helpers


def _interleaved(
    contenders: dict[str, tuple[Callable[[], None], int, Callable[[], None] | None]],
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Per call of each contender, `repeats` batches each in shuffled order: (seconds until
    the work deferred to a writer thread is done, the caller's own seconds, CPU seconds of
    the whole process, the writer threads counted)."""
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    caller: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = random.Random(7)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            call, n, after = contenders[name]
            gc.collect()
            cpu_started = time.process_time()
            started = time.perf_counter()
            for _ in range(n):
                call()
            returned = time.perf_counter()
            if after is not None:
                after()  # work the contender deferred (sealing, group commit) is counted
            wall[name].append((time.perf_counter() - started) / n)
            caller[name].append((returned - started) / n)
            cpu[name].append((time.process_time() - cpu_started) / n)
    return wall, caller, cpu


def _median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------ 1. overhead


def overhead(quick: bool, workdir: Path) -> Section:
    import backoff
    import stamina
    import tenacity

    from qwed_guard import fallback, observed, retry

    n = 2_000 if quick else 10_000
    repeats = 5 if quick else 9

    def stack_entry(sink: str, fsync: str = "batch", breaker: bool = False) -> Any:
        fn = production_stack(verify, sink, fsync, breaker=breaker)
        layer = fn.find_layer("audited")
        if sink == "memory:":

            def after() -> None:
                layer.sink.flush()  # seals (canonical JSON + sha256) what was appended
                layer.sink.clear()

        else:
            after = layer.sink.flush
        return fn, after

    contenders: dict[str, tuple[Callable[[], None], int, Callable[[], None] | None]] = {}

    def add(name: str, fn: Any, count: int = n, after: Callable[[], None] | None = None) -> None:
        contenders[name] = (lambda: fn(QUERY), count, after)

    add("bare call", verify)
    add("tenacity @retry", tenacity.retry(stop=tenacity.stop_after_attempt(3))(verify))
    add("backoff @on_exception", backoff.on_exception(backoff.expo, Exception, max_tries=3)(verify))
    add("stamina @retry", stamina.retry(on=Exception, attempts=3)(verify))
    add("qwed_guard @retry", retry(max_tries=3)(verify))
    add("qwed_guard @fallback", fallback(value=0.0)(verify))
    add("qwed_guard @fallback @retry", fallback(value=0.0)(retry(max_tries=3)(verify)))
    add("full stack, no audit", unaudited_stack(verify))
    # What the hook path itself costs a call: a watcher that does nothing with the events.
    add("full stack, no audit, one no-op hook", observed(_no_op_hook)(unaudited_stack(verify)))
    fn, after = stack_entry("memory:")
    add("full stack, memory audit", fn, after=after)
    fn, after = stack_entry("memory:", breaker=True)
    add("full stack + breaker, memory audit", fn, after=after)
    for mode in ("batch", "none", "always"):
        fn, after = stack_entry(f"jsonl:{workdir}/overhead-{mode}.jsonl", mode)
        # fsync=always waits for the disk twice a call: fewer calls keep the run short.
        count = max(n // 20, 100) if mode == "always" else n
        add(f"full stack, JSONL audit ({mode})", fn, count, after)
    fn, after = stack_entry(f"jsonl:{workdir}/overhead-breaker.jsonl", "batch", breaker=True)
    add("full stack + breaker, JSONL audit (batch)", fn, after=after)

    for call, _, after in contenders.values():  # warm-up: first-call imports, lazy state
        for _ in range(50):
            call()
        if after is not None:
            after()
    samples, caller_samples, cpu_samples = _interleaved(contenders, repeats)
    medians = {name: _median(values) for name, values in samples.items()}
    callers = {name: _median(values) for name, values in caller_samples.items()}
    cpus = {name: _median(values) for name, values in cpu_samples.items()}
    bare, bare_caller, bare_cpu = medians["bare call"], callers["bare call"], cpus["bare call"]
    over = {name: max(value - bare, 0.0) for name, value in medians.items()}
    over_caller = {name: max(value - bare_caller, 0.0) for name, value in callers.items()}
    over_cpu = {name: max(value - bare_cpu, 0.0) for name, value in cpus.items()}
    reference = over["tenacity @retry"]
    ref_caller, ref_cpu = over_caller["tenacity @retry"], over_cpu["tenacity @retry"]
    section = Section(
        "overhead",
        "1. Success-path overhead per call",
        [
            "contender",
            "per call (us)",
            "overhead (us)",
            "x tenacity",
            "caller x tenacity",
            "CPU x tenacity",
            "spread (us)",
        ],
    )
    for name, value in medians.items():
        spread = (max(samples[name]) - min(samples[name])) * 1e6
        if name == "bare call":
            ratios = ["0.00x"] * 3
        else:
            ratios = [
                f"{over[name] / reference:.2f}x",
                f"{over_caller[name] / ref_caller:.2f}x",
                f"{over_cpu[name] / ref_cpu:.2f}x",
            ]
        section.rows.append([name, value * 1e6, over[name] * 1e6, *ratios, spread])
    bare_stack = over_cpu["full stack, no audit"] / ref_cpu
    batch_cpu = over_cpu["full stack, JSONL audit (batch)"] / ref_cpu
    batch_caller = over_caller["full stack, JSONL audit (batch)"] / ref_caller
    mem = over["full stack, memory audit"] / reference
    section.targets += [
        (
            "full stack without audit <= 0.3x tenacity (CPU)",
            bare_stack <= 0.3,
            f"{bare_stack:.2f}x",
        ),
        (
            "full stack, JSONL audit (batch) <= 0.8x tenacity (CPU)",
            batch_cpu <= 0.8,
            f"{batch_cpu:.2f}x",
        ),
        (
            "full stack, JSONL audit (batch) <= 0.6x tenacity (caller latency)",
            batch_caller <= 0.6,
            f"{batch_caller:.2f}x",
        ),
        ("full stack, memory audit <= 0.5x tenacity", mem <= 0.5, f"{mem:.2f}x"),
    ]
    section.notes.append(
        f"{n:,} calls a batch ({max(n // 20, 100):,} for fsync=always), {repeats} interleaved "
        "batches, medians. The function returns a verified QWED-like result. `per call` and "
        "`x tenacity` include the work a sink defers (the memory sink builds and seals in "
        "`flush`, JSONL batch mode's writer thread builds, seals and group-commits), waited "
        "for inside the timed batch; `caller` is the time until the calls returned; `CPU` is "
        "the process's CPU time (`time.process_time`, every thread, writer included). The "
        "stack is `audited(fallback(alert_on_failures(retry(fn))))`, canonical order, default "
        "options; `no audit` is the same without `audited`."
    )
    section.data = {
        "seconds_per_call": samples,
        "caller_seconds_per_call": caller_samples,
        "cpu_seconds_per_call": cpu_samples,
        "medians": medians,
        "calls_per_batch": n,
    }
    return section


# ------------------------------------------------------------------------ 2. audit throughput


def audit_record() -> dict[str, Any]:
    """One record exactly as the audit layer writes it (before its chain fields): a call
    verified on its first attempt, which is one call record with that attempt inline."""
    from qwed_guard import audited

    fn = audited(sink="memory:")(verify)
    fn(QUERY)
    (record,) = (dict(r) for r in fn.find_layer("audited").sink.records)
    assert record["event"] == "call" and record["answered"] is not None
    for name in ("seq", "prev_hash", "hash"):
        record.pop(name, None)
    return record


def throughput(
    append: Callable[[dict[str, Any]], None],
    finish: Callable[[], None],
    template: dict[str, Any],
    n: int,
    threads: int,
    fresh: Callable[[dict[str, Any]], dict[str, Any]],
) -> float:
    """Records per second: `n` records appended one at a time over `threads` threads."""
    per_thread = n // threads
    start = threading.Barrier(threads + 1)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            append(fresh(template))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    finish()
    return per_thread * threads / (time.perf_counter() - started)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": record.created,
                "level": record.levelname,
                "message": record.getMessage(),
                **getattr(record, "audit", {}),
            }
        )


def audit_throughput(quick: bool, workdir: Path) -> Section:
    from loguru import logger

    from qwed_guard.audit.chain import Key
    from qwed_guard.audit.record import Record
    from qwed_guard.audit.sinks import JsonlSink

    template = audit_record()
    n = 20_000 if quick else 100_000
    repeats = 3 if quick else 5
    key = Key(b"benchmark-key-0123456789abcdef!!", "BENCH_KEY")
    counter = iter(range(10**9))

    def jsonl(mode: str, signed: bool) -> Callable[[int, int], float]:
        def run(count: int, threads: int) -> float:
            path = workdir / f"audit-{mode}-{int(signed)}-{threads}-{next(counter)}.jsonl"
            sink = JsonlSink(path, fsync=mode, key=key if signed else None)  # type: ignore[arg-type]
            try:
                return throughput(
                    lambda r: sink.append((r,)), sink.close, template, count, threads, Record
                )
            finally:
                for suffix in ("", ".lock", ".checkpoints"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(str(path) + suffix)

        return run

    def loguru_run(count: int, threads: int) -> float:
        path = workdir / f"loguru-{threads}-{next(counter)}.jsonl"
        logger.remove()
        handler = logger.add(path, serialize=True, enqueue=False, level="INFO")
        try:
            return throughput(
                lambda r: logger.info("audit", **r), lambda: None, template, count, threads, dict
            )
        finally:
            logger.remove(handler)
            logger.add(sys.stderr, level="ERROR")
            os.unlink(path)

    def logging_run(count: int, threads: int) -> float:
        path = workdir / f"logging-{threads}-{next(counter)}.jsonl"
        log = logging.getLogger(f"bench.audit.{threads}.{next(counter)}")
        log.propagate = False
        log.setLevel(logging.INFO)
        handler = logging.FileHandler(path)
        handler.setFormatter(_JsonFormatter())
        log.addHandler(handler)
        try:
            return throughput(
                lambda r: log.info("audit", extra={"audit": r}),
                handler.flush,
                template,
                count,
                threads,
                dict,
            )
        finally:
            log.removeHandler(handler)
            handler.close()
            os.unlink(path)

    contenders: dict[str, tuple[Callable[[int, int], float], int]] = {
        "JSONL, fsync=batch, hash chain": (jsonl("batch", False), n),
        "JSONL, fsync=batch, hash chain + HMAC checkpoints": (jsonl("batch", True), n),
        "JSONL, fsync=none, hash chain": (jsonl("none", False), n),
        "JSONL, fsync=none, hash chain + HMAC checkpoints": (jsonl("none", True), n),
        "JSONL, fsync=always, hash chain": (jsonl("always", False), max(n // 100, 200)),
        "JSONL, fsync=always, hash chain + HMAC checkpoints": (
            jsonl("always", True),
            max(n // 100, 200),
        ),
        "loguru serialize=True to a file": (loguru_run, n),
        "stdlib logging + JSON formatter to a file": (logging_run, n),
    }
    results: dict[str, dict[int, list[float]]] = {k: {1: [], 4: []} for k in contenders}
    rng = random.Random(11)
    order = [(name, threads) for name in contenders for threads in (1, 4)]
    for _ in range(repeats):
        rng.shuffle(order)
        for name, threads in order:
            run, count = contenders[name]
            gc.collect()
            results[name][threads].append(run(count, threads))
    medians = {name: {t: _median(v) for t, v in by.items()} for name, by in results.items()}
    loguru_1 = medians["loguru serialize=True to a file"][1]
    section = Section(
        "audit",
        "2. Audit throughput (records/s, same record content)",
        ["writer", "1 thread", "4 threads", "x loguru (1 thread)"],
    )
    for name, by in medians.items():
        section.rows.append([name, by[1], by[4], f"{by[1] / loguru_1:.1f}x"])
    batch = medians["JSONL, fsync=batch, hash chain"][1]
    section.targets.append(
        ("JSONL batch, hash-chained >= 150,000 records/s", batch >= 150_000, f"{batch:,.0f}/s")
    )
    section.targets.append(
        ("JSONL batch >= 5x loguru", batch >= 5 * loguru_1, f"{batch / loguru_1:.1f}x")
    )
    section.notes.append(
        f"{n:,} records a run (fsync=always: {max(n // 100, 200):,}), appended one at a time as "
        f"the audit layer does, {repeats} interleaved runs, medians; the clock stops when the "
        "sink is closed (every record written and, unless fsync=none, fsynced). The record is "
        "a real call record, its verified attempt inline "
        f"({len(json.dumps(template))} bytes of JSON before its chain fields); loguru and "
        "logging get the same fields (loguru as `extra`)."
    )
    section.data = {"records_per_second": results}
    return section


# ------------------------------------------------------------------------ 3. import time

_IMPORT_PROBE = """
import sys, time, json
started = time.perf_counter()
{statement}
elapsed = time.perf_counter() - started
mods = {{m: m in sys.modules for m in ("qwed_sdk", "asyncio", "loguru", "orjson", "httpx",
        "httpx2", "openai", "sqlite3", "backoff", "wrapt")}}
print(json.dumps({{"seconds": elapsed, "modules": mods}}))
"""


def import_time(quick: bool, workdir: Path) -> Section:
    statements = {
        "import qwed_guard": "import qwed_guard",
        "from qwed_guard import retry, fallback, alert_on_failures, audited": (
            "from qwed_guard import retry, fallback, alert_on_failures, audited"
        ),
        "import loguru, wrapt, backoff (peers)": "import loguru, wrapt, backoff",
    }
    runs = 7 if quick else 15
    samples: dict[str, list[float]] = {name: [] for name in statements}
    modules: dict[str, dict[str, bool]] = {}
    order = list(statements)
    rng = random.Random(3)
    for _ in range(runs):
        rng.shuffle(order)
        for name in order:
            out = subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE.format(statement=statements[name])],
                capture_output=True,
                text=True,
                check=True,
                cwd=workdir,
            )
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            samples[name].append(probe["seconds"])
            modules[name] = probe["modules"]
    medians = {name: _median(v) for name, v in samples.items()}
    peers = medians["import loguru, wrapt, backoff (peers)"]
    section = Section(
        "import",
        "3. Import time (fresh interpreter)",
        ["statement", "median (ms)", "x peers", "also imported"],
    )
    for name, value in medians.items():
        loaded = ", ".join(m for m, present in modules[name].items() if present)
        section.rows.append([name, value * 1000, f"{value / peers:.2f}x", loaded])
    ours = medians["import qwed_guard"]
    section.targets.append(
        ("import qwed_guard <= 1.3x the peers", ours <= 1.3 * peers, f"{ours / peers:.2f}x")
    )
    sdk = modules["import qwed_guard"]["qwed_sdk"]
    section.targets.append(
        ("never imports qwed_sdk", not sdk, "qwed_sdk imported" if sdk else "no")
    )
    section.notes.append(
        f"{runs} runs each, interleaved, medians of the time the import statement takes in a "
        "fresh interpreter (interpreter start-up excluded). `from qwed_guard import ...` runs "
        "the whole package `__init__`, so it costs the same as `import qwed_guard`."
    )
    section.data = {"seconds": samples, "modules": modules}
    return section


# ------------------------------------------------------------------------ 4. async concurrency


def async_concurrency(quick: bool, workdir: Path) -> Section:
    import httpx

    from qwed_guard.sim import sample_questions

    calls = 2_000 if quick else 10_000
    concurrency = 100
    latency = 0.005
    ideal = calls * latency / concurrency
    question = sample_questions(1, seed=1)[0].text
    prompt = (
        "Solve this math problem and respond ONLY with the numerical answer:\n\n"
        f"{question}\n\nAnswer (number only):"
    )

    def stack(fn: Callable[..., Any], name: str) -> Any:
        return production_stack(fn, f"jsonl:{workdir}/async-{name}.jsonl", "batch", breaker=True)

    async def drive(fn: Callable[[str], Any], count: int = calls) -> tuple[float, int]:
        remaining = iter(range(count))
        verified = 0

        async def worker() -> None:
            nonlocal verified
            for _ in remaining:
                result = await fn(question)
                verified += bool(getattr(result, "verified", False))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, verified

    async def sleeper(query: str) -> Result:
        await asyncio.sleep(latency)
        return RESULT

    rows: list[tuple[str, float, int]] = []
    guarded_sleeper = stack(sleeper, "sleep")

    async def sleep_runs() -> None:
        await drive(sleeper)  # warm-up
        for name, fn in (
            ("asyncio.sleep(5 ms), bare", sleeper),
            ("asyncio.sleep(5 ms), full stack", guarded_sleeper),
        ):
            wall, verified = await drive(fn)
            rows.append((name, wall, verified))

    asyncio.run(sleep_runs())
    guarded_sleeper.find_layer("audited").flush()

    sim_calls = min(calls, 2_000)  # httpx reaches a few hundred requests/s at 100 connections
    sim_ideal = sim_calls * latency / concurrency
    with _sim_process(latency) as (base_url, model):
        url = f"{base_url}/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        raw = _RawClient(url, json.dumps(body).encode())

        async def raw_runs() -> None:
            async def ask(query: str) -> Result:
                text = json.loads(await raw.post())["choices"][0]["message"]["content"]
                return Result(value=float(text.strip().rstrip("%")))

            guarded = stack(ask, "raw")
            try:
                await drive(ask, 200)  # warm-up: connections, server threads
                for name, fn in (
                    ("simulator (5 ms), raw asyncio client, bare", ask),
                    ("simulator (5 ms), raw asyncio client, full stack", guarded),
                ):
                    wall, verified = await drive(fn)
                    rows.append((name, wall, verified))
            finally:
                await raw.aclose()
            guarded.find_layer("audited").flush()

        asyncio.run(raw_runs())

        async def sim_runs() -> None:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:

                async def ask(query: str) -> Result:
                    # One request per call (the answer prompt of verify_math's two).
                    response = await http.post(url, json=body)
                    response.raise_for_status()
                    text = response.json()["choices"][0]["message"]["content"]
                    return Result(value=float(text.strip().rstrip("%")))

                guarded = stack(ask, "sim")
                await drive(ask, 200)  # warm-up: connections, server threads
                for name, fn in (
                    (f"simulator (5 ms) over httpx, bare, {sim_calls:,} calls", ask),
                    (f"simulator (5 ms) over httpx, full stack, {sim_calls:,} calls", guarded),
                ):
                    wall, verified = await drive(fn, sim_calls)
                    rows.append((name, wall / sim_ideal * ideal, verified))
                guarded.find_layer("audited").flush()

        asyncio.run(sim_runs())
    section = Section(
        "async",
        f"4. Async concurrency: {calls:,} calls, concurrency {concurrency}, 5 ms latency",
        ["run", "wall (s)", "x ideal", "verified"],
    )
    for name, wall, verified in rows:
        section.rows.append([name, wall, f"{wall / ideal:.2f}x", verified])
    section.rows.append(["ideal (calls x latency / concurrency)", ideal, "1.00x", "-"])
    walls = {name: wall for name, wall, _ in rows}
    sim_guarded = walls["simulator (5 ms), raw asyncio client, full stack"] / ideal
    sim_bare = walls["simulator (5 ms), raw asyncio client, bare"] / ideal
    sleep_guarded = walls["asyncio.sleep(5 ms), full stack"] / ideal
    section.targets.append(
        (
            "async wall <= 1.2x ideal (simulator, full stack)",
            sim_guarded <= 1.2,
            f"{sim_guarded:.2f}x; the bare client alone: {sim_bare:.2f}x",
        )
    )
    section.targets.append(
        (
            "async wall <= 1.2x ideal (guard stack alone, latency from asyncio.sleep)",
            sleep_guarded <= 1.2,
            f"{sleep_guarded:.2f}x",
        )
    )
    section.notes.append(
        "The full stack is the production order with the circuit breaker and a JSONL audit "
        "trail (fsync=batch). The simulator rows make one HTTP request per call (the answer "
        "prompt of verify_math's two) and return a QWED-like result; the simulator "
        "(`qwed-guard sim --set latency=0.005`) runs in its own process, one thread per "
        "connection. The raw client is 100 keep-alive connections on asyncio streams, the "
        "least a client can do: its bare row is what this simulator can serve on this machine, "
        "and the ideal needs 20,000 requests/s from one Python server and one Python client "
        "sharing 2 CPUs. The httpx rows are the client the openai SDK uses, over 100 pooled "
        "connections; its pool is slow at this concurrency (encode/httpx#3215), so they run "
        f"{sim_calls:,} calls, their wall time is scaled to the table's call count, and the "
        "guarded row can beat the bare one (the guard's work spaces the requests out). The "
        "asyncio.sleep rows isolate the guard stack's async path."
    )
    section.data = {"ideal": ideal, "rows": rows}
    return section


class _RawClient:
    """HTTP/1.1 POSTs over keep-alive asyncio streams: one connection per concurrent request."""

    def __init__(self, url: str, body: bytes) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self) -> bytes:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"simulator answered {status}: {payload[:200]!r}")
        self.idle.append((reader, writer))
        return payload

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


@contextlib.contextmanager
def _sim_process(latency: float) -> Iterator[tuple[str, str]]:
    """`qwed-guard sim` in a child process: (base_url, model)."""
    import re

    cli = Path(sys.executable).with_name("qwed-guard")
    child = subprocess.Popen(
        [str(cli), "sim", "--port", "0", "--set", f"latency={latency}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        found = re.search(r"listening on (\S+) \(model (\S+)\)", line)
        if found is None:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        yield found.group(1), found.group(2)
    finally:
        child.terminate()
        child.wait(timeout=10)


# ------------------------------------------------------------------------ 5. memory

_MEMORY_PROBE = """
import gc, json, os, sys, tempfile
sys.path.insert(0, {root!r})
import psutil
from benchmarks.run import production_stack, verify, QUERY
directory = tempfile.mkdtemp()
fn = production_stack(verify, "jsonl:" + os.path.join(directory, "memory.jsonl"), "batch",
                      breaker=True)
proc = psutil.Process()
for _ in range(20_000):
    fn(QUERY)
fn.find_layer("audited").flush()
gc.collect()
before = proc.memory_info().rss
for _ in range({calls}):
    fn(QUERY)
fn.find_layer("audited").flush()
gc.collect()
after = proc.memory_info().rss
print(json.dumps({{"before": before, "after": after}}))
"""


def memory(quick: bool, workdir: Path) -> Section:
    calls = 100_000
    root = str(HERE.parent)
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE.format(root=root, calls=calls)],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    growth = (probe["after"] - probe["before"]) / 2**20
    demo_dir = workdir / "demo"
    demo_dir.mkdir(exist_ok=True)
    cli = Path(sys.executable).with_name("qwed-guard")
    # A fresh parent whose only child is the demo: its children's ru_maxrss (KiB on Linux)
    # is then the demo's own peak.
    watcher = (
        "import resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
        "print(time.perf_counter() - started, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", watcher, str(cli), "demo"],
        capture_output=True,
        text=True,
        check=True,
        cwd=demo_dir,
        timeout=600,
    )
    seconds_text, peak_kib = out.stdout.split()
    demo_seconds = float(seconds_text)
    peak = int(peak_kib) / 1024
    section = Section("memory", "5. Memory", ["measure", "value"])
    section.rows.append(
        [f"RSS growth over {calls:,} calls (full stack + breaker, JSONL batch)", f"{growth:.2f} MB"]
    )
    section.rows.append(["RSS after warm-up", f"{probe['before'] / 2**20:.1f} MB"])
    section.rows.append(["peak RSS of `qwed-guard demo`", f"{peak:.1f} MB"])
    section.rows.append(["`qwed-guard demo` wall time", f"{demo_seconds:.1f} s"])
    section.targets.append(
        ("memory growth over 100,000 calls <= 5 MB", growth <= 5.0, f"{growth:.2f} MB")
    )
    section.notes.append(
        "Fresh interpreter; 20,000 warm-up calls, then 100,000 calls; RSS after `gc.collect()` "
        "and a flush of the audit queue. The demo's peak is its `ru_maxrss` (it imports "
        "qwed_sdk, which brings openai, anthropic and z3)."
    )
    section.data = {"growth_mb": growth, **probe, "demo_peak_mb": peak}
    return section


# ------------------------------------------------------------------------ 6. amplification


def _seed_verify_with_retry(client: Any, query: str, max_retries: int = 3) -> Any:
    """The seed's `verify_with_retry`, as written (its logger calls kept, silenced)."""
    logger = logging.getLogger("benchmarks.seed")
    for attempt in range(max_retries):
        try:
            result = client.verify_math(query)
            if result.verified:
                logger.info(f"Verified on attempt {attempt + 1}")
                return result
            else:
                logger.warning(f"Verification failed, attempt {attempt + 1}/{max_retries}")
        except Exception as e:
            logger.error(f"Error on attempt {attempt + 1}: {e}")
            if attempt < max_retries - 1:
                wait_time = 2**attempt  # Exponential backoff
                logger.info(f"Retrying in {wait_time}s...")
                time.sleep(wait_time)
            else:
                raise
    raise Exception("Verification failed after all retries")


def amplification(quick: bool, workdir: Path) -> Section:
    from qwed_sdk import QWEDLocal

    from qwed_guard import Policy, guarded_client
    from qwed_guard.sim import SimulatedLLM, sample_questions

    n = 12 if quick else 30
    seed = 5
    questions = [q.text for q in sample_questions(n, seed=seed)]
    logging.getLogger("benchmarks.seed").disabled = True

    def guarded_run() -> tuple[int, int, float]:
        with SimulatedLLM(profile="flaky", seed=seed) as llm:
            client = guarded_client(base_url=llm.base_url, model=llm.model)
            policy = Policy.preset(
                "production",
                fallback_value=0.0,
                audited={"sink": f"jsonl:{workdir}/amplification.jsonl", "fsync": "batch"},
                alert_on_failures={"notify": []},
            )

            @policy
            def check(query: str) -> Any:
                return client.verify_math(query)

            started = time.perf_counter()
            verified = sum(1 for q in questions if check(q).verified)
            return llm.stats()["requests"], verified, time.perf_counter() - started

    def seed_run() -> tuple[int, int, float]:
        with SimulatedLLM(profile="flaky", seed=seed) as llm:
            # The seed's client, fixed only to run: an endpoint instead of provider="openai"
            # without a key; the SDK's default retries; no on-disk cache.
            client = QWEDLocal(base_url=llm.base_url, model=llm.model, cache=False)
            started = time.perf_counter()
            verified = 0
            for q in questions:
                with contextlib.suppress(Exception):  # the seed raises when retries run out
                    verified += bool(_seed_verify_with_retry(client, q).verified)
            return llm.stats()["requests"], verified, time.perf_counter() - started

    ours = guarded_run()
    theirs = seed_run()
    section = Section(
        "amplification",
        f"6. Request amplification under the `flaky` profile ({n} calls, same fault seed)",
        ["client", "HTTP requests", "requests per call", "verified", "wall (s)"],
    )
    section.rows.append(
        ["qwed_guard production policy + guarded_client", ours[0], ours[0] / n, ours[1], ours[2]]
    )
    section.rows.append(
        [
            "seed's verify_with_retry + SDK default retries",
            theirs[0],
            theirs[0] / n,
            theirs[1],
            theirs[2],
        ]
    )
    ratio = ours[0] / theirs[0] if theirs[0] else float("inf")
    section.targets.append(
        ("requests per call <= the seed's", ratio <= 1.0, f"{ratio:.2f}x the seed's")
    )
    section.notes.append(
        "Real time on both sides (the policy's 1 s / 2 s jittered waits and the SDK's own retry "
        "sleeps). The production policy keeps answers verified where it can and falls back "
        "otherwise; a retried verify_math resends only the prompt that failed (the guarded "
        "client reuses the answer prompt's reply after a transient failure). The seed retries "
        "every unverified answer at once (its sleep sits in the `except` branch, which "
        "QWEDLocal never reaches) while the SDK retries 5xx/429 twice underneath each of its "
        "attempts."
    )
    section.data = {"ours": ours, "seed": theirs, "calls": n}
    return section


# ------------------------------------------------------------------------ fleet (hook)


def _fleet(quick: bool, workdir: Path) -> Section:
    """Redis state calls/s vs in-memory, PostgreSQL audit records/s vs JSONL.

    Provided by `benchmarks/fleet.py` (`run(quick: bool, workdir: Path) -> Section`) when it
    exists and its services are up; until then the section says so.
    """
    try:
        from benchmarks import fleet
    except ImportError:
        section = Section(
            "fleet", "7. Fleet: Redis state and PostgreSQL audit", ["measure", "value"]
        )
        section.rows.append(["not measured", "benchmarks/fleet.py is not there yet"])
        return section
    result: Section = fleet.run(quick, workdir)
    return result


# ------------------------------------------------------------------------ 8. observability


_OBSERVE_PROBE = """
import sys, time, json
started = time.perf_counter()
import qwed_guard.metrics as metrics, qwed_guard.tracing as tracing
from qwed_guard import retry
{enable}
retry(max_tries=1)(lambda q: {{"verified": True, "value": 1}})("q")
elapsed = time.perf_counter() - started
loaded = sorted({{m.split(".")[0] for m in sys.modules
    if m.startswith(("opentelemetry", "prometheus_client"))}})
print(json.dumps({{"seconds": elapsed, "loaded": loaded}}))
"""


def observability(quick: bool, workdir: Path) -> Section:
    """Per-call cost of the tracing and metrics hooks, side by side with both off, one run."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracerProvider
    from prometheus_client import CollectorRegistry

    from qwed_guard import observed, retry
    from qwed_guard.metrics import Metrics
    from qwed_guard.tracing import Tracing

    n = 2_000 if quick else 10_000
    repeats = 5 if quick else 9
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hooks: dict[str, tuple[Any, ...]] = {
        "both off": (),
        "metrics (prometheus-client)": (Metrics(registry=CollectorRegistry()),),
        "metrics (OTel SDK meter)": (
            Metrics(
                backend="otel",
                meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            ),
        ),
        "tracing (OTel SDK, in-memory exporter)": (Tracing(tracer_provider=provider),),
        "tracing (OTel API, no SDK)": (Tracing(tracer_provider=NoOpTracerProvider()),),
        "tracing + metrics": (
            Tracing(tracer_provider=provider),
            Metrics(registry=CollectorRegistry()),
        ),
    }
    contenders: dict[str, tuple[Callable[[], None], int, Callable[[], None] | None]] = {}
    stacks = {
        "@retry": lambda: retry(max_tries=3)(verify),
        "full stack, memory audit": lambda: production_stack(verify, "memory:"),
    }
    for stack, build in stacks.items():
        for name, chosen in hooks.items():
            fn = build()
            layer = fn.find_layer("audited")
            if chosen:
                fn = observed(*chosen)(fn)  # outermost: tracing starts before the audit trail

            def after(layer: Any = layer) -> None:
                exporter.clear()
                if layer is not None:
                    layer.sink.flush()
                    layer.sink.clear()

            contenders[f"{stack}, {name}"] = (lambda fn=fn: fn(QUERY), n, after)
    for call, _, after in contenders.values():
        for _ in range(50):
            call()
        if after is not None:
            after()
    samples, _, _ = _interleaved(contenders, repeats)
    medians = {name: _median(values) for name, values in samples.items()}
    section = Section(
        "observability",
        "8. Observability: per-call cost of tracing and metrics",
        ["stack, hooks", "per call (us)", "added (us)", "x off", "spread (us)"],
    )
    for stack in stacks:
        off = medians[f"{stack}, both off"]
        for name in hooks:
            key = f"{stack}, {name}"
            value = medians[key]
            spread = (max(samples[key]) - min(samples[key])) * 1e6
            added = (value - off) * 1e6
            section.rows.append([key, value * 1e6, added, f"{value / off:.2f}x", spread])
    # What enabling costs once per process, and that nothing is paid with both off.
    probes = {
        "both off (import the hook modules, one call)": "",
        "metrics on (prometheus-client)": "metrics.enable()",
        "tracing on (OTel API)": "tracing.enable()",
    }
    for name, enable in probes.items():
        times: list[float] = []
        loaded: list[str] = []
        for _ in range(3 if quick else 7):
            out = subprocess.run(
                [sys.executable, "-c", _OBSERVE_PROBE.format(enable=enable or "pass")],
                capture_output=True,
                text=True,
                check=True,
                cwd=workdir,
            )
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            times.append(probe["seconds"])
            loaded = probe["loaded"]
        if not enable:
            section.targets.append(
                ("both off imports neither library", not loaded, ", ".join(loaded) or "neither")
            )
        section.rows.append(
            [
                f"first call in a fresh process, {name}",
                _median(times) * 1e6,
                "",
                "imports " + (", ".join(loaded) or "neither library"),
                "",
            ]
        )
    section.notes.append(
        f"{n:,} calls a batch, {repeats} interleaved batches in one run, medians; the verified "
        "path (one attempt). Hooks are given with `@observed`, outermost. Tracing records to "
        "the OTel SDK with a SimpleSpanProcessor into an in-memory exporter (cleared after each "
        "batch, inside the timing); 'no SDK' is the API's no-op tracer, where the hook opens a "
        "non-recording span and steps aside. Metrics record into a fresh CollectorRegistry or "
        "an SDK MeterProvider. The last rows time, in a fresh interpreter, importing qwed_guard "
        "and its hook modules, enabling one, and one guarded call (also in "
        "tests/test_observability.py: with both off neither library is imported)."
    )
    section.data = {"seconds_per_call": samples, "medians": medians, "calls_per_batch": n}
    return section


SECTIONS: dict[str, Callable[[bool, Path], Section]] = {
    "overhead": overhead,
    "audit": audit_throughput,
    "import": import_time,
    "async": async_concurrency,
    "memory": memory,
    "amplification": amplification,
    "fleet": _fleet,
    "observability": observability,
}


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Keep the alerter's and breaker's log lines out of the tables."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    try:
        yield
    finally:
        logger.remove()
        logger.add(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and calls")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()}"
    )
    header = f"qwed_guard benchmarks ({'quick' if args.quick else 'full'} run) on {machine}"
    print(header, flush=True)
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="qwed-guard-bench-") as tmp, _quiet_logs():
        for name in chosen:
            started = time.perf_counter()
            section = SECTIONS[name](args.quick, Path(tmp))
            print("\n" + section.markdown(), flush=True)
            print(f"\n({name}: {time.perf_counter() - started:.0f} s)", flush=True)
            sections.append(section)
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
        "machine": machine,
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sections": {
            s.key: {
                "title": s.title,
                "columns": s.columns,
                "rows": s.rows,
                "targets": s.targets,
                "data": s.data,
            }
            for s in sections
        },
    }
    (RESULTS_DIR / "latest.json").write_text(json.dumps(payload, indent=1, default=str))
    if chosen == list(SECTIONS):
        text = "\n\n".join(
            [
                "# Benchmark results",
                f"`make bench` ({'quick' if args.quick else 'full'} run, {payload['when']}) "
                f"on {machine}.",
                *(s.markdown() for s in sections),
            ]
        )
        (HERE / "RESULTS.md").write_text(text + "\n")
    missed = [t for s in sections for t in s.targets if t[1] is False]
    print(f"\n{len(missed)} target(s) missed" if missed else "\nevery measured target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
