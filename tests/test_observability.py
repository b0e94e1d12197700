"""Traces and metrics: exact span trees and counts, on the OTel SDK and a real CollectorRegistry."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import qwed_guard.metrics as qmetrics
from qwed_guard import (
    CircuitOpen,
    add_hook,
    alert_on_failures,
    audited,
    circuit_breaker,
    fallback,
    hooks,
    observed,
    remove_hook,
    retry,
)
from qwed_guard.alerts import delivery
from qwed_guard.audit import verify_trail
from qwed_guard.clock import FakeClock
from qwed_guard.errors import ParameterError
from qwed_guard.hooks import AlertDelivered, StoreDegraded, emit
from qwed_guard.tracing import Tracing

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    verified: bool
    value: Any = None
    error: str | None = None


OK = Result(True, 42)
DOWN = Result(False, error="Error code: 503 - service unavailable")


def replies(*items: Any) -> Callable[..., Any]:
    queue = list(items)

    def verify(query: str) -> Any:
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return verify


def fails_once() -> Callable[..., Any]:
    """A thread-safe function: each query's first attempt is a 503, its second verifies."""
    seen: set[str] = set()
    lock = threading.Lock()

    def verify(query: str) -> Any:
        with lock:
            first = query not in seen
            seen.add(query)
        return DOWN if first else OK

    return verify


# --- fixtures ----------------------------------------------------------------------------


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.hook = Tracing(tracer_provider=self.provider)

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def roots(self) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name.startswith("verify ")]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        spans = [s for s in self.finished() if s.parent is not None]
        found = [s for s in spans if s.parent.span_id == parent.context.span_id]  # type: ignore[union-attr]
        return sorted(found, key=lambda s: s.start_time or 0)

    def tree(self) -> list[tuple[str, list[str]]]:
        """Each call span's name with its children's names, oldest first."""
        roots = sorted(self.roots(), key=lambda s: s.start_time or 0)
        return [(r.name, [c.name for c in self.children(r)]) for r in roots]


@pytest.fixture
def spans() -> Iterator[Spans]:
    made = Spans()
    add_hook(made.hook)
    try:
        yield made
    finally:
        remove_hook(made.hook)


class Scrape:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hook = qmetrics.Metrics(registry=self.registry)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = generate_latest(self.registry).decode()
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name` over the series whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, lab), v in self.samples().items() if n == name and wanted <= lab)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {lab: v for (n, lab), v in self.samples().items() if n == name}

    def close(self) -> None:
        made = self.hook._made
        assert made is not None
        qmetrics._forget(made)


@pytest.fixture
def scrape() -> Iterator[Scrape]:
    made = Scrape()
    add_hook(made.hook)
    try:
        yield made
    finally:
        remove_hook(made.hook)
        made.close()


def name_of(fn: Any) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


# --- traces ------------------------------------------------------------------------------


def test_a_verified_call_is_a_call_span_with_one_attempt(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    verify = retry(max_tries=3)(replies(OK))
    assert verify("2+2") is OK
    function = f"{__name__}.replies.<locals>.verify"
    assert spans.tree() == [(f"verify {function}", [f"attempt {function}"])]
    (root,) = spans.roots()
    assert root.parent is None
    assert root.kind.name == "INTERNAL"
    assert dict(root.attributes or {}) == {
        "code.function.name": function,
        "qwed_guard.source": "verified",
        "qwed_guard.outcome": "verified",
        "qwed_guard.attempts": 1,
    }
    assert root.status.status_code is StatusCode.UNSET
    (attempt,) = spans.children(root)
    assert dict(attempt.attributes or {}) == {
        "code.function.name": function,
        "qwed_guard.attempt": 1,
        "qwed_guard.outcome": "verified",
    }
    assert list(root.events) == []
    # metrics: one call, one attempt, exactly
    assert scrape.series("qwed_guard_calls_total") == {
        frozenset(
            {
                ("function", function),
                ("source", "verified"),
                ("outcome", "verified"),
                ("retried", "false"),
            }
        ): 1.0
    }
    assert scrape.series("qwed_guard_attempts_total") == {
        frozenset({("function", function), ("outcome", "verified"), ("http_status", "none")}): 1.0
    }
    assert scrape.value("qwed_guard_call_duration_seconds_count") == 1
    assert scrape.value("qwed_guard_attempt_duration_seconds_count") == 1
    assert scrape.series("qwed_guard_retry_wait_seconds_count") == {}


def test_a_retried_call_has_one_attempt_span_per_try_and_a_retry_event(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    verify = retry(max_tries=3, jitter=None)(replies(DOWN, DOWN, OK))
    assert verify("q") is OK
    ((_call, attempts),) = spans.tree()
    assert len(attempts) == 3
    (root,) = spans.roots()
    tries = spans.children(root)
    assert [s.attributes["qwed_guard.attempt"] for s in tries] == [1, 2, 3]  # type: ignore[index]
    assert [s.attributes["qwed_guard.outcome"] for s in tries] == [  # type: ignore[index]
        "transient",
        "transient",
        "verified",
    ]
    assert [s.attributes.get("http.response.status_code") for s in tries] == [503, 503, None]  # type: ignore[union-attr]
    assert [s.attributes.get("error.type") for s in tries] == ["transient", "transient", None]  # type: ignore[union-attr]
    assert [s.status.status_code for s in tries] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    events = [(e.name, dict(e.attributes or {})) for e in root.events]
    assert len(fake_clock.waits) == 2
    assert events == [
        (
            "retry_scheduled",
            {"qwed_guard.attempt": n, "qwed_guard.wait": wait, "qwed_guard.outcome": "transient"},
        )
        for n, wait in enumerate(fake_clock.waits, 1)
    ]
    assert root.attributes["qwed_guard.attempts"] == 3  # type: ignore[index]
    function = name_of(verify)
    assert scrape.value("qwed_guard_calls_total", function=function, retried="true") == 1
    assert scrape.value("qwed_guard_attempts_total", outcome="transient", http_status="503") == 2
    assert scrape.value("qwed_guard_attempts_total", outcome="verified") == 1
    assert (
        scrape.value("qwed_guard_retry_wait_seconds_count", cause="transient", retry_after="false")
        == 2
    )
    assert scrape.value("qwed_guard_retry_wait_seconds_sum") == pytest.approx(sum(fake_clock.waits))
    # the call's duration is the waits plus the attempts (no time passes in an attempt here)
    assert scrape.value("qwed_guard_call_duration_seconds_sum") == pytest.approx(
        sum(fake_clock.waits)
    )


def test_a_fallback_is_an_error_span_and_a_counted_fallback(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    verify = fallback(value=0)(retry(max_tries=2, jitter=None)(replies(DOWN, DOWN)))
    result = verify("q")
    assert result.source == "fallback"
    (root,) = spans.roots()
    assert len(spans.children(root)) == 2
    assert root.attributes["qwed_guard.source"] == "fallback"  # type: ignore[index]
    assert root.attributes["qwed_guard.outcome"] == "transient"  # type: ignore[index]
    assert root.attributes["error.type"] == "transient"  # type: ignore[index]
    assert root.attributes["http.response.status_code"] == 503  # type: ignore[index]
    assert root.status.status_code is StatusCode.ERROR
    assert [e.name for e in root.events] == ["retry_scheduled", "gave_up", "fallback_used"]
    function = name_of(verify)
    assert scrape.series("qwed_guard_fallbacks_total") == {
        frozenset({("function", function), ("reason", "transient")}): 1.0
    }
    assert (
        scrape.value(
            "qwed_guard_calls_total", source="fallback", outcome="transient", retried="true"
        )
        == 1
    )


def test_a_short_circuited_call_has_no_attempt_span_and_is_counted_not_permitted(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    verify = circuit_breaker(failure_threshold=1, recovery_timeout=10, key="obs.breaker")(
        replies(ConnectionError("down"))
    )
    with pytest.raises(ConnectionError):
        verify("q")
    with pytest.raises(CircuitOpen):
        verify("q")
    function = name_of(verify)
    assert spans.tree() == [
        (f"verify {function}", [f"attempt {function}"]),
        (f"verify {function}", []),
    ]
    first, refused = sorted(spans.roots(), key=lambda s: s.start_time or 0)
    assert [(e.name, dict(e.attributes or {})) for e in first.events] == [
        (
            "breaker_changed",
            {
                "qwed_guard.attempt": 1,
                "qwed_guard.breaker.key": "obs.breaker",
                "qwed_guard.breaker.from": "closed",
                "qwed_guard.breaker.to": "open",
            },
        )
    ]
    assert first.attributes["error.type"] == "ConnectionError"  # type: ignore[index]
    assert refused.attributes["qwed_guard.outcome"] == "short_circuited"  # type: ignore[index]
    # as in the audit record: the refused call ends one (short-circuited) attempt, never starts it
    assert refused.attributes["qwed_guard.attempts"] == 1  # type: ignore[index]
    assert refused.attributes["qwed_guard.source"] == "raised"  # type: ignore[index]
    assert refused.attributes["error.type"] == "CircuitOpen"  # type: ignore[index]
    assert scrape.series("qwed_guard_breaker_transitions_total") == {
        frozenset({("key", "obs.breaker"), ("from", "closed"), ("to", "open")}): 1.0
    }
    assert scrape.series("qwed_guard_breaker_state") == {
        frozenset({("key", "obs.breaker"), ("state", "closed")}): 0.0,
        frozenset({("key", "obs.breaker"), ("state", "open")}): 1.0,
        frozenset({("key", "obs.breaker"), ("state", "half_open")}): 0.0,
    }
    assert scrape.series("qwed_guard_breaker_not_permitted_total") == {
        frozenset({("function", function)}): 1.0
    }
    assert scrape.value("qwed_guard_calls_total", outcome="short_circuited", source="raised") == 1
    assert scrape.value("qwed_guard_attempts_total", outcome="short_circuited") == 1
    assert scrape.value("qwed_guard_calls_total") == 2


def test_an_alert_is_a_span_event_a_counted_alert_and_a_counted_delivery(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    got: list[Any] = []

    def collect(alert: Any) -> None:
        got.append(alert)

    verify = alert_on_failures(threshold=1, notify=[collect], key="obs.alert")(replies(DOWN))
    verify("q")
    assert delivery.flush(5)
    assert len(got) == 1
    (root,) = spans.roots()
    assert [(e.name, dict(e.attributes or {})) for e in root.events] == [
        (
            "alert_sent",
            {
                "qwed_guard.attempt": 1,
                "qwed_guard.alert.key": "obs.alert",
                "qwed_guard.alert.kind": "triggered",
            },
        )
    ]
    assert scrape.series("qwed_guard_alerts_total") == {
        frozenset({("key", "obs.alert"), ("kind", "triggered")}): 1.0
    }
    channel = collect.__qualname__
    assert scrape.value("qwed_guard_alert_deliveries_total", channel=channel, result="sent") == 1
    assert scrape.value("qwed_guard_alert_deliveries_total", result="failed") == 0


def test_eight_threads(spans: Spans, scrape: Scrape, fake_clock: FakeClock) -> None:
    verify = retry(max_tries=2, jitter=None)(fails_once())
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        barrier.wait()
        for n in range(25):
            assert verify(f"q{worker}-{n}") is OK

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    roots = spans.roots()
    assert len(roots) == 200
    assert len({r.context.trace_id for r in roots}) == 200
    for root in roots:
        tries = spans.children(root)
        assert [t.attributes["qwed_guard.outcome"] for t in tries] == ["transient", "verified"]  # type: ignore[index]
        assert all(t.context.trace_id == root.context.trace_id for t in tries)
    assert len(spans.finished()) == 600
    assert scrape.value("qwed_guard_calls_total", source="verified", retried="true") == 200
    assert scrape.value("qwed_guard_attempts_total", outcome="transient") == 200
    assert scrape.value("qwed_guard_attempts_total", outcome="verified") == 200
    assert scrape.value("qwed_guard_retry_wait_seconds_count") == 200


async def test_a_hundred_tasks_nest_their_own_spans_under_their_own_attempts(
    spans: Spans, scrape: Scrape, fake_clock: FakeClock
) -> None:
    tracer = spans.provider.get_tracer("test.client")
    seen: set[str] = set()

    @retry(max_tries=2, jitter=None)
    async def verify(query: str) -> Any:
        # what an instrumented HTTP client does: a span under whatever is current
        with tracer.start_as_current_span("POST /chat/completions"):
            await asyncio.sleep(0)
            first = query not in seen
            seen.add(query)
        return DOWN if first else OK

    results = await asyncio.gather(*(verify(f"q{n}") for n in range(100)))
    assert all(r is OK for r in results)
    roots = spans.roots()
    assert len(roots) == 100
    for root in roots:
        tries = spans.children(root)
        assert len(tries) == 2
        for attempt in tries:
            (client,) = spans.children(attempt)
            assert client.name == "POST /chat/completions"
            assert client.context.trace_id == root.context.trace_id
    assert len(spans.finished()) == 500
    assert scrape.value("qwed_guard_calls_total", retried="true") == 100
    assert scrape.value("qwed_guard_attempts_total") == 200


def test_a_guarded_call_inside_another_nests_under_its_attempt(
    spans: Spans, fake_clock: FakeClock
) -> None:
    inner = retry(max_tries=1)(replies(OK))

    @retry(max_tries=1)
    def outer(query: str) -> Any:
        return inner(query)

    assert outer("q") is OK
    roots = {r.name: r for r in spans.roots()}
    top = roots[f"verify {name_of(outer)}"]
    nested = roots[f"verify {name_of(inner)}"]
    (attempt,) = spans.children(top)
    assert nested.parent is not None and nested.parent.span_id == attempt.context.span_id


def test_the_trace_id_is_written_into_every_audit_record(
    spans: Spans, fake_clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "trail.jsonl"
    verify = audited(sink=f"jsonl:{path}")(retry(max_tries=2, jitter=None)(replies(DOWN, OK)))
    assert verify("2+2") is OK
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # The failed attempt, then the call record with the verified attempt inline.
    assert [r["event"] for r in records] == ["attempt", "call"]
    assert records[1]["answered"]["attempt"] == 2
    (root,) = spans.roots()
    context = root.context
    flags = f"{int(context.trace_flags):02x}"
    wanted = f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"
    assert {r["traceparent"] for r in records} == {wanted}
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", wanted)
    assert verify_trail(str(path)).ok


def test_without_tracing_records_have_no_traceparent(fake_clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    verify = audited(sink=f"jsonl:{path}")(replies(OK))
    verify("2+2")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all("traceparent" not in r for r in records)


def test_a_tracer_without_an_sdk_steps_aside(fake_clock: FakeClock) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    hook = Tracing(tracer_provider=NoOpTracerProvider())
    seen: list[Any] = []
    verify = observed(hook, lambda ctx: seen.append(ctx))(replies(OK))
    verify("q")
    assert seen[0].traceparent is None


def test_tracing_options_are_checked() -> None:
    with pytest.raises(ParameterError, match="call_span"):
        Tracing(call_span="verify {query}")
    with pytest.raises(ParameterError, match="attempt_span"):
        Tracing(attempt_span="")
    off = Tracing(enabled=False)
    assert off(object()) is None  # type: ignore[arg-type]


def test_span_names_follow_the_templates(fake_clock: FakeClock) -> None:
    made = Spans()
    hook = Tracing(tracer_provider=made.provider, call_span="qwed {function}", attempt_span="try")
    verify = observed(hook)(replies(OK))
    verify("q")
    names = sorted(s.name for s in made.finished())
    assert names == [f"qwed {name_of(verify)}", "try"]


# --- metrics: process events, OTel, the endpoint, many processes -------------------------


def test_audit_commits_are_counted_by_sink_and_event(
    scrape: Scrape, fake_clock: FakeClock, tmp_path: Path
) -> None:
    verify = audited(sink=f"jsonl:{tmp_path / 't.jsonl'}")(
        retry(max_tries=2, jitter=None)(replies(DOWN, OK))
    )
    verify("q")
    verify_two = audited(sink=f"sqlite:{tmp_path / 't.db'}", fsync="batch")(replies(OK))
    verify_two("q")
    from qwed_guard.audit.sinks import close_all

    close_all()
    # Records, not attempts: an answered attempt is inline in its call record.
    assert scrape.value("qwed_guard_audit_records_total", sink="jsonl", event="attempt") == 1
    assert scrape.value("qwed_guard_audit_records_total", sink="jsonl", event="call") == 1
    assert scrape.value("qwed_guard_audit_records_total", sink="sqlite", event="attempt") == 0
    assert scrape.value("qwed_guard_audit_records_total", sink="sqlite", event="call") == 1
    # fsync="always" commits a failed attempt at once, and the call record with the answered
    # attempt inline; "batch" commits a group
    assert scrape.value("qwed_guard_audit_commit_duration_seconds_count", fsync="always") == 2
    assert scrape.value("qwed_guard_audit_commit_duration_seconds_count", fsync="batch") >= 1


def test_the_state_store_degraded_gauge(scrape: Scrape) -> None:
    pytest.importorskip("redis")
    from qwed_guard.state.redis import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0")  # nothing listens there
    store.update("k", lambda state: ({"n": 1}, 1))
    assert store.degraded
    assert scrape.series("qwed_guard_state_degraded") == {frozenset({("store", "redis")}): 1.0}
    emit(StoreDegraded("redis", False, "reachable again"))
    assert scrape.series("qwed_guard_state_degraded") == {frozenset({("store", "redis")}): 0.0}
    store.close()


def test_dropped_alerts_are_counted(scrape: Scrape) -> None:
    emit(AlertDelivered("slack", "dropped", 3))
    assert scrape.value("qwed_guard_alert_deliveries_total", channel="slack", result="dropped") == 3


def test_the_otel_backend_records_the_same_instruments(fake_clock: FakeClock) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hook = qmetrics.Metrics(backend="otel", meter_provider=provider)
    try:
        verify = observed(hook)(retry(max_tries=2, jitter=None)(replies(DOWN, OK)))
        verify("q")
        data = reader.get_metrics_data()
        assert data is not None
        points: dict[str, list[Any]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points[metric.name] = list(metric.data.data_points)
        (calls,) = points["qwed_guard.calls"]
        assert calls.value == 1
        assert dict(calls.attributes) == {
            "function": name_of(verify),
            "source": "verified",
            "outcome": "verified",
            "retried": "true",
        }
        assert sorted(p.value for p in points["qwed_guard.attempts"]) == [1, 1]
        (wait,) = points["qwed_guard.retry.wait"]
        assert wait.count == 1 and wait.sum == pytest.approx(fake_clock.waits[0])
        assert tuple(wait.explicit_bounds) == qmetrics.DEFAULT_BUCKETS
    finally:
        assert hook._made is not None
        qmetrics._forget(hook._made)
        provider.shutdown()


def test_metrics_options_are_checked() -> None:
    with pytest.raises(ParameterError, match="backend"):
        qmetrics.Metrics(backend="statsd")
    with pytest.raises(ParameterError, match="buckets"):
        qmetrics.Metrics(buckets=[1.0, 0.5])
    with pytest.raises(ParameterError, match="prefix"):
        qmetrics.Metrics(prefix="has space")
    assert qmetrics.Metrics(enabled=False)(object()) is None  # type: ignore[arg-type]


def test_two_hooks_on_one_registry_share_instruments_and_count_process_events_once() -> None:
    registry = CollectorRegistry()
    before = len(hooks.listeners)
    first = qmetrics.Metrics(registry=registry)
    second = qmetrics.Metrics(registry=registry)
    try:
        assert first._made is second._made
        assert len(hooks.listeners) == before + 1
    finally:
        assert first._made is not None
        qmetrics._forget(first._made)
    assert len(hooks.listeners) == before


def test_the_endpoint_serves_what_prometheus_parses(scrape: Scrape, fake_clock: FakeClock) -> None:
    verify = retry(max_tries=1)(replies(OK))
    verify("q")
    with qmetrics.serve(0, registry=scrape.registry) as server:
        assert server.url.startswith("http://127.0.0.1:")
        reply = httpx.get(server.url, timeout=5)
    assert reply.status_code == 200
    names = {
        sample.name
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    assert "qwed_guard_calls_total" in names
    assert "qwed_guard_call_duration_seconds_bucket" in names


_WORKER = """
import sys
from dataclasses import dataclass
import qwed_guard.metrics
from qwed_guard import retry

@dataclass
class R:
    verified: bool
    value: object = 1

qwed_guard.metrics.enable()

@retry(max_tries=1)
def verify(query):
    return R(True)

for n in range(int(sys.argv[1])):
    verify("q")
"""


def test_multi_process_mode_sums_every_worker(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(n)], env=env) for n in (3, 4)]
    for worker in workers:
        assert worker.wait(60) == 0
    for worker in workers:
        qmetrics.mark_process_dead(worker.pid, str(directory))
    with qmetrics.serve(0, multiprocess_dir=str(directory)) as server:
        text = httpx.get(server.url, timeout=5).text
    calls = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "qwed_guard_calls_total"
    ]
    assert sum(s.value for s in calls) == 7
    assert {s.labels["outcome"] for s in calls} == {"verified"}


def test_nothing_is_imported_when_nothing_is_enabled() -> None:
    code = """
import sys
from dataclasses import dataclass
from qwed_guard import retry
from qwed_guard.metrics import Metrics
from qwed_guard.tracing import Tracing

@dataclass
class R:
    verified: bool
    value: object = 1

Metrics(enabled=False)
Tracing(enabled=False)
retry(max_tries=1)(lambda q: R(True))("q")
loaded = [m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client"))]
assert not loaded, loaded
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


# --- the demo and the dashboard ------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_scrape_of_the_demo_while_it_runs(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QWED_QUIET": "1"}
    command = [
        sys.executable,
        "-m",
        "qwed_guard",
        "demo",
        "--metrics",
        str(port),
        "--n",
        "40",
        "--pace",
        "6",
        "--audit",
        str(tmp_path / "demo.jsonl"),
    ]
    demo = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        calls = 0.0
        families: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            families = {f.name: f for f in text_string_to_metric_families(text)}
            calls = sum(
                s.value for s in families["qwed_guard_calls"].samples if s.name.endswith("_total")
            )
            if calls >= 5:
                break
            time.sleep(0.05)
        assert calls >= 5, "no calls seen on the endpoint while the demo ran"
        samples = [s for s in families["qwed_guard_calls"].samples if s.name.endswith("_total")]
        assert all(
            s.labels["function"].endswith("verify_math") or "verify" in s.labels["function"]
            for s in samples
        )
        assert "qwed_guard_audit_records" in families
    finally:
        _, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err
    assert f"Prometheus metrics at http://127.0.0.1:{port}/metrics" in err


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "examples" / "grafana" / "qwed-guard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs
    return {name for expr in exprs for name in re.findall(r"\bqwed_guard_[a-z_]+\b", expr)}


def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(
    scrape: Scrape, fake_clock: FakeClock, tmp_path: Path
) -> None:
    got: list[Any] = []
    verify = audited(sink=f"jsonl:{tmp_path / 't.jsonl'}")(
        fallback(value=0)(
            alert_on_failures(threshold=1, notify=[got.append], key="dash.alert")(
                retry(max_tries=2, jitter=None)(
                    circuit_breaker(failure_threshold=2, recovery_timeout=10, key="dash.b")(
                        replies(DOWN, DOWN, OK)
                    )
                )
            )
        )
    )
    verify("q")  # two failures: retried, fallback, alert, breaker opens
    verify("q")  # short-circuited
    assert delivery.flush(5)
    emit(StoreDegraded("redis", False, "reachable"))
    scraped = {name for name, _ in scrape.samples()}
    missing = sorted(_dashboard_metrics() - scraped)
    assert not missing, missing
    # and every instrument is on the dashboard
    expected = {qmetrics.prometheus_name(i) for i in qmetrics.INSTRUMENTS}
    queried = {re.sub(r"_(bucket|count|sum)$", "", n) for n in _dashboard_metrics()}
    assert expected <= queried, sorted(expected - queried)


# --- policy sections -------------------------------------------------------------------------


def test_policy_sections_attach_tracing_and_metrics(fake_clock: FakeClock) -> None:
    from opentelemetry import trace
    from prometheus_client import REGISTRY

    from qwed_guard import Policy

    exporter = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # once per process: the global provider
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = Policy.from_dict(
        {
            "retry": {"max_tries": 2, "jitter": None},
            "tracing": {"call_span": "policy {function}"},
            "metrics": {"prefix": "qwed_guard_policy_test", "buckets": [0.5, 1, 5]},
        }
    )
    assert "watched by: tracing(" in policy.describe()
    assert Policy.from_dict(policy.to_dict()) == policy
    verify = policy(replies(DOWN, OK))
    assert verify("q") is OK
    function = name_of(verify)
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == [f"attempt {function}", f"attempt {function}", f"policy {function}"]
    (root,) = [s for s in exporter.get_finished_spans() if s.name.startswith("policy ")]
    assert root.attributes["qwed_guard.policy_hash"] == policy.hash  # type: ignore[index]
    text = generate_latest(REGISTRY).decode()
    calls = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "qwed_guard_policy_test_calls_total" and s.labels["function"] == function
    ]
    assert [(s.labels["retried"], s.value) for s in calls] == [("true", 1.0)]
    assert 'qwed_guard_policy_test_call_duration_seconds_bucket{function="' in text
    assert 'le="0.5"' in text
    audited_policy = Policy.from_dict(
        {"audited": {"sink": "memory:"}, "retry": {"max_tries": 1}, "tracing": {}}
    )
    traced = audited_policy(replies(OK))
    traced("q")
    sink = traced.find_layer("audited").sink
    records = sink.records
    assert len(records) == 1 and records[0]["answered"]["outcome"] == "verified"  # inline
    assert all(r["traceparent"].startswith("00-") for r in records)  # the trace, in the trail
    assert all(r["policy"] == audited_policy.hash for r in records)


def test_policy_sections_off_and_invalid() -> None:
    from qwed_guard import Policy, PolicyError

    off = Policy.from_dict(
        {"retry": {}, "tracing": {"enabled": False}, "metrics": {"enabled": False}}
    )
    assert "tracing(off)" in off.describe() and "metrics(off)" in off.describe()
    assert off.hash != Policy.from_dict({"retry": {}}).hash
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(
            {
                "retry": {},
                "tracing": {"call_span": "{query}", "colour": "red"},
                "metrics": {"backend": "statsd", "registry": "default"},
            }
        )
    text = str(caught.value)
    assert "tracing.call_span" in text
    assert "tracing.colour" in text
    assert "metrics.backend" in text
    assert "metrics.registry" in text


# --- the openai SDK's own spans ----------------------------------------------------------------


@pytest.mark.sim(script=["503", "ok", "ok"])
def test_the_openai_sdks_spans_nest_under_the_attempt_that_made_them(
    simulated_llm: Any, fake_clock: FakeClock
) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    from qwed_guard import guarded_client

    made = Spans()
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=made.provider)
    try:
        client = guarded_client(base_url=simulated_llm.base_url, model=simulated_llm.model)

        @observed(made.hook)
        @retry(max_tries=3, jitter=None)
        def verify(query: str) -> Any:
            return client.verify_math(query)

        assert verify("What is 2 + 2?").verified
    finally:
        instrumentor.uninstrument()
    (root,) = made.roots()
    first, second = made.children(root)
    assert first.attributes["qwed_guard.outcome"] == "transient"  # type: ignore[index]
    assert first.attributes["http.response.status_code"] == 503  # type: ignore[index]
    assert second.attributes["qwed_guard.outcome"] == "verified"  # type: ignore[index]
    model = simulated_llm.model
    # verify_math asks twice (the number, then the SymPy code); the 503 ended the first attempt
    assert [s.name for s in made.children(first)] == [f"chat {model}"]
    assert [s.name for s in made.children(second)] == [f"chat {model}", f"chat {model}"]
    assert len(made.finished()) == 6
