"""Metrics of guarded calls, for Prometheus (prometheus-client) or OpenTelemetry.

    import qwed_guard.metrics

    qwed_guard.metrics.enable()          # every guarded call, into prometheus-client's registry
    qwed_guard.metrics.serve(9464)       # http://127.0.0.1:9464/metrics

A hook (see `qwed_guard.hooks`) plus a listener of the process events (alert deliveries, audit
commits, the state store's health). `Metrics(backend="otel")` records the same instruments with
an OpenTelemetry meter instead. Instrument names are OpenTelemetry's (`qwed_guard.calls`); the
Prometheus names follow the exporter's rules: dots become underscores, the unit is appended in
base units (`_seconds`), counters end in `_total` (`qwed_guard_calls_total`). See `INSTRUMENTS`.

Labels are bounded: function names, outcomes, sources, breaker and alert keys, channel and sink
kinds, HTTP statuses; never the query, the call id or audit fields.

Needs `prometheus-client` (`pip install 'qwed-guard[prometheus]'`) or `opentelemetry-api`
(`[otel]`), imported only when a `Metrics` is made with `enabled=True`.

Forked servers (gunicorn, uvicorn workers): set `PROMETHEUS_MULTIPROC_DIR` to an empty
directory before the workers start, `enable()` in each worker, serve with
`serve(port, multiprocess_dir=...)` from one process (or from each: every one sums all), and
call `mark_process_dead(pid)` when a worker exits (gunicorn's `child_exit`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from qwed_guard import clock
from qwed_guard._observe import call_outcome, call_source, code_object, find_spec
from qwed_guard.errors import bad_parameter
from qwed_guard.hooks import (
    AlertDelivered,
    AlertSent,
    AttemptEnded,
    AttemptStarted,
    AuditCommitted,
    BreakerChanged,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    ProcessEvent,
    RetryScheduled,
    StoreDegraded,
    add_hook,
    add_listener,
    remove_hook,
    remove_listener,
)
from qwed_guard.options import Options, choice, data, flag, options_from, seconds_list, text
from qwed_guard.outcomes import Outcome

if TYPE_CHECKING:
    from qwed_guard.context import CallContext

__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKETS",
    "INSTRUMENTS",
    "Instrument",
    "Metrics",
    "MetricsOptions",
    "MetricsServer",
    "disable",
    "enable",
    "mark_process_dead",
    "prometheus_name",
    "serve",
]

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Seconds, 5 ms to 5 minutes: a cached verdict to a retried call through an outage."""
BACKENDS: Final = ("prometheus", "otel")
_BREAKER_STATES: Final = ("closed", "open", "half_open")


class Instrument(NamedTuple):
    name: str
    """The OpenTelemetry name, after the prefix: `calls` is `qwed_guard.calls`."""
    kind: str
    """`counter`, `histogram` or `gauge`."""
    unit: str
    labels: tuple[str, ...]
    description: str


INSTRUMENTS: Final[tuple[Instrument, ...]] = (
    Instrument(
        "calls",
        "counter",
        "{call}",
        ("function", "source", "outcome", "retried"),
        "Guarded calls, by how they ended",
    ),
    Instrument(
        "call.duration",
        "histogram",
        "s",
        ("function", "source", "outcome"),
        "Guarded call duration, retries and waits included",
    ),
    Instrument(
        "attempts",
        "counter",
        "{attempt}",
        ("function", "outcome", "http_status"),
        "Attempts at the guarded function",
    ),
    Instrument("attempt.duration", "histogram", "s", ("function", "outcome"), "Attempt duration"),
    Instrument(
        "retry.wait",
        "histogram",
        "s",
        ("function", "cause", "retry_after"),
        "Waits before a retry (cause: the failed attempt's outcome)",
    ),
    Instrument(
        "fallbacks", "counter", "{call}", ("function", "reason"), "Calls answered by a fallback"
    ),
    Instrument(
        "breaker.state",
        "gauge",
        "{state}",
        ("key", "state"),
        "Circuit breaker state, one-hot (1 for the current state)",
    ),
    Instrument(
        "breaker.transitions",
        "counter",
        "{transition}",
        ("key", "from", "to"),
        "Circuit breaker state changes",
    ),
    Instrument(
        "breaker.not_permitted",
        "counter",
        "{call}",
        ("function",),
        "Calls an open circuit breaker short-circuited",
    ),
    Instrument("alerts", "counter", "{alert}", ("key", "kind"), "Alerts raised"),
    Instrument(
        "alert.deliveries",
        "counter",
        "{alert}",
        ("channel", "result"),
        "Alert deliveries by channel (result: sent, failed, dropped)",
    ),
    Instrument(
        "audit.records", "counter", "{record}", ("sink", "event"), "Audit records committed"
    ),
    Instrument(
        "audit.commit.duration",
        "histogram",
        "s",
        ("sink", "fsync"),
        "Audit commit duration, fsync included",
    ),
    Instrument(
        "state.degraded",
        "gauge",
        "{state}",
        ("store",),
        "1 while the shared state store is unreachable (state kept per process)",
    ),
)
_BY_NAME: Final = {i.name: i for i in INSTRUMENTS}


def prometheus_name(instrument: Instrument, prefix: str = "qwed_guard") -> str:
    """The series name Prometheus shows for `instrument` (`qwed_guard_calls_total`)."""
    base = f"{prefix}_{instrument.name.replace('.', '_')}"
    if instrument.unit == "s":
        base += "_seconds"
    return base + "_total" if instrument.kind == "counter" else base


# --- backends: one small surface over prometheus-client and the OTel metrics API ------------


class _Prometheus:
    def __init__(self, prefix: str, buckets: tuple[float, ...], registry: Any) -> None:
        import prometheus_client as pc

        self.buckets = buckets
        self.target = registry  # kept: its id() is this backend's key
        if registry is None:
            registry = pc.REGISTRY
        self.made: dict[str, Any] = {}
        for item in INSTRUMENTS:
            name = prometheus_name(item, prefix)
            options: dict[str, Any] = {"labelnames": item.labels, "registry": registry}
            if item.kind == "counter":
                made: Any = pc.Counter(name.removesuffix("_total"), item.description, **options)
            elif item.kind == "histogram":
                made = pc.Histogram(name, item.description, buckets=buckets, **options)
            else:
                mode: Any = "livemax" if item.name == "state.degraded" else "livemostrecent"
                made = pc.Gauge(name, item.description, multiprocess_mode=mode, **options)
            self.made[item.name] = made

    def add(self, name: str, labels: tuple[str, ...], amount: float = 1) -> None:
        self.made[name].labels(*labels).inc(amount)

    def record(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.made[name].labels(*labels).observe(value)

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.made[name].labels(*labels).set(value)


class _Otel:
    def __init__(self, prefix: str, buckets: tuple[float, ...], meter_provider: Any) -> None:
        from opentelemetry import metrics as otel_metrics

        from qwed_guard import __version__

        self.buckets = buckets
        self.target = meter_provider  # kept: its id() is this backend's key
        meter = otel_metrics.get_meter("qwed_guard", __version__, meter_provider=meter_provider)
        self.made: dict[str, tuple[Any, tuple[str, ...]]] = {}
        for item in INSTRUMENTS:
            name = f"{prefix}.{item.name}"
            if item.kind == "counter":
                made: Any = meter.create_counter(name, item.unit, item.description)
            elif item.kind == "histogram":
                made = meter.create_histogram(
                    name, item.unit, item.description, explicit_bucket_boundaries_advisory=buckets
                )
            else:
                made = meter.create_gauge(name, item.unit, item.description)
            self.made[item.name] = (made, item.labels)

    def _attributes(self, name: str, labels: tuple[str, ...]) -> tuple[Any, dict[str, str]]:
        made, names = self.made[name]
        return made, dict(zip(names, labels, strict=True))

    def add(self, name: str, labels: tuple[str, ...], amount: float = 1) -> None:
        made, attributes = self._attributes(name, labels)
        made.add(amount, attributes)

    def record(self, name: str, labels: tuple[str, ...], value: float) -> None:
        made, attributes = self._attributes(name, labels)
        made.record(value, attributes)

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        made, attributes = self._attributes(name, labels)
        made.set(value, attributes)


_Backend = _Prometheus | _Otel
# One set of instruments per destination: a registry refuses a name registered twice, and two
# hooks on one registry must not count the process events twice.
_made: dict[tuple[Any, ...], _Backend] = {}
_made_lock = threading.Lock()


def _backend(backend: str, prefix: str, buckets: tuple[float, ...], target: Any) -> _Backend:
    key = (backend, id(target), prefix)
    with _made_lock:
        found = _made.get(key)
        if found is not None:
            if found.buckets != buckets:
                raise bad_parameter(
                    "buckets",
                    f"this registry's histograms were made with {list(found.buckets)}; give "
                    "those, or another prefix or registry",
                )
            return found
        made: _Backend = (
            _Prometheus(prefix, buckets, target)
            if backend == "prometheus"
            else _Otel(prefix, buckets, target)
        )
        _made[key] = made
        add_listener(_ProcessListener(made))
        return made


class _ProcessListener:
    """Counts what happens outside calls: deliveries, audit commits, the state store."""

    __slots__ = ("backend",)

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend

    def __call__(self, event: ProcessEvent) -> None:
        backend = self.backend
        if isinstance(event, AuditCommitted):
            sink, fsync = event.sink, event.fsync
            backend.record("audit.commit.duration", (sink, fsync), event.duration)
            counts: dict[str, int] = {}
            for name in event.events:
                counts[name] = counts.get(name, 0) + 1
            for name, count in counts.items():
                backend.add("audit.records", (sink, name), count)
        elif isinstance(event, AlertDelivered):
            backend.add("alert.deliveries", (event.channel, event.result), event.alerts)
        elif isinstance(event, StoreDegraded):
            backend.set("state.degraded", (event.store,), 1 if event.degraded else 0)


def _buckets(value: Any) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise bad_parameter("buckets", f"must be a list of seconds, got {value!r}", wrong_type=True)
    out: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < 1e6:
            raise bad_parameter("buckets", f"must be seconds > 0, got {item!r}")
        out.append(float(item))
    if out != sorted(set(out)):
        raise bad_parameter("buckets", "must be increasing, without repeats")
    return tuple(out)


def _prefix(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or not (value[0].isalpha() or value[0] == "_")
        or not all(ch.isalnum() or ch == "_" for ch in value)
        or not value.isascii()
    ):
        raise bad_parameter("prefix", f"must be letters, digits and _, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsOptions(Options):
    """The metrics hook's parameters (a policy's `metrics` section)."""

    enabled: bool = flag(True, "False watches nothing (`metrics: {enabled: false}`).")
    backend: str = choice("prometheus", BACKENDS, "prometheus-client, or an OpenTelemetry meter.")
    prefix: str = text("qwed_guard", "The instruments' prefix (`qwed_guard_calls_total`).")
    buckets: Sequence[float] = seconds_list(
        DEFAULT_BUCKETS, 86400.0, 100, "The duration histograms' bucket bounds, seconds."
    )
    registry: Any = data(
        None, "A prometheus_client CollectorRegistry (code only).", test=code_object
    )
    meter_provider: Any = data(
        None, "An OpenTelemetry MeterProvider (code only).", test=code_object
    )


class Metrics:
    """A hook that counts and times every call it watches; parameters: `MetricsOptions`
    (keywords, or the options object)."""

    kind = "metrics"
    options_type = MetricsOptions

    def __init__(self, options: MetricsOptions | None = None, /, **params: Any) -> None:
        o = options_from(MetricsOptions, options, params)
        enabled, backend, prefix, buckets = o.enabled, o.backend, o.prefix, o.buckets
        registry, meter_provider = o.registry, o.meter_provider
        self.enabled = enabled
        self.backend = backend
        self.prefix = _prefix(prefix)
        self.buckets = _buckets(buckets)
        self._made: _Backend | None = None
        if not enabled:
            return
        module, extra = (
            ("prometheus_client", "prometheus")
            if backend == "prometheus"
            else ("opentelemetry.metrics", "otel")
        )
        if not find_spec(module):
            raise bad_parameter("enabled", f"needs {module}: pip install 'qwed-guard[{extra}]'")
        target = registry if backend == "prometheus" else meter_provider
        self._made = _backend(backend, self.prefix, self.buckets, target)

    def describe(self) -> str:
        if not self.enabled:
            return "metrics(off)"
        return f"metrics(backend={self.backend!r}, prefix={self.prefix!r})"

    def __repr__(self) -> str:
        return self.describe()

    def __call__(self, ctx: CallContext) -> _CallMetrics | None:
        made = self._made
        return None if made is None else _CallMetrics(made, ctx)


class _CallMetrics:
    """One call's watcher."""

    __slots__ = ("backend", "ctx", "retry_after")
    ignores: frozenset[type] = frozenset({AttemptStarted, GaveUp})

    def __init__(self, backend: _Backend, ctx: CallContext) -> None:
        self.backend = backend
        self.ctx = ctx
        self.retry_after = False

    def __call__(self, event: Event) -> None:
        backend = self.backend
        function = self.ctx.function
        if isinstance(event, AttemptEnded):
            record = event.record
            outcome = record.outcome.value
            status = str(record.status) if record.status is not None else "none"
            backend.add("attempts", (function, outcome, status))
            backend.record("attempt.duration", (function, outcome), record.duration)
            self.retry_after = event.diagnosis.retry_after is not None
        elif isinstance(event, CallEnded):
            self._ended(event)
        elif isinstance(event, RetryScheduled):
            after = "true" if self.retry_after else "false"
            backend.record("retry.wait", (function, event.outcome.value, after), event.wait)
        elif isinstance(event, FallbackUsed):
            backend.add("fallbacks", (function, event.outcome.value))
        elif isinstance(event, BreakerChanged):
            key, new = event.key, str(event.new)
            backend.add("breaker.transitions", (key, str(event.old), new))
            for state in _BREAKER_STATES:
                backend.set("breaker.state", (key, state), 1 if state == new else 0)
        elif isinstance(event, AlertSent):
            alert = event.alert
            backend.add("alerts", (alert.key, str(alert.kind)))

    def _ended(self, ended: CallEnded) -> None:
        ctx = self.ctx
        backend = self.backend
        function = ctx.function
        outcome = call_outcome(ended)
        source = call_source(ended)
        retried = "true" if len(ctx.attempts) > 1 else "false"
        backend.add("calls", (function, source, outcome.value, retried))
        duration = clock.monotonic() - ctx.started
        backend.record("call.duration", (function, source, outcome.value), duration)
        if ended.diagnosis.outcome is Outcome.SHORT_CIRCUITED:
            backend.add("breaker.not_permitted", (function,))


# --- process-wide use ----------------------------------------------------------------------

_enabled: list[Metrics] = []


def enable(**options: Any) -> Metrics:
    """Count every guarded call of the process (`Metrics(**options)` as a process hook)."""
    metrics = Metrics(**options)
    add_hook(metrics)
    _enabled.append(metrics)
    return metrics


def disable(metrics: Metrics | None = None) -> None:
    """Stop a hook `enable()` returned (every one, when None). Process events stay counted
    into the instruments already made (a registry keeps its series)."""
    for item in list(_enabled):
        if metrics is None or item is metrics:
            remove_hook(item)
            _enabled.remove(item)


def _forget(backend: _Backend) -> None:
    """Tests: drop the instruments made for a destination, and their listener."""
    with _made_lock:
        for key, made in list(_made.items()):
            if made is backend:
                del _made[key]
    from qwed_guard import hooks

    for listener in hooks.listeners:
        if isinstance(listener, _ProcessListener) and listener.backend is backend:
            remove_listener(listener)


class MetricsServer:
    """The Prometheus endpoint `serve()` started: `url`, `port`, `close()`."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_address[1]
        self.url = f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    port: int,
    host: str = "127.0.0.1",
    *,
    registry: Any = None,
    multiprocess_dir: str | None = None,
) -> MetricsServer:
    """Serve Prometheus' text format at `http://host:port/metrics` on a daemon thread.

    `port=0` picks a free port (see `MetricsServer.port`). With `multiprocess_dir` (or
    `PROMETHEUS_MULTIPROC_DIR` set), it serves the sum of every process writing there.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise bad_parameter("port", f"must be 0 to 65535, got {port!r}")
    if not find_spec("prometheus_client"):
        raise bad_parameter(
            "port", "serving needs prometheus-client: pip install 'qwed-guard[prometheus]'"
        )
    import prometheus_client as pc

    directory = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and registry is None:
        from prometheus_client import multiprocess

        registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server, thread = pc.start_http_server(port, addr=host, registry=registry or pc.REGISTRY)
    return MetricsServer(server, thread, host)


def mark_process_dead(pid: int, multiprocess_dir: str | None = None) -> None:
    """Multi-process mode: forget a worker that exited (its live gauges)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]


def instrument(name: str) -> Instrument:
    """The instrument called `name` (`calls`, `call.duration`, ...)."""
    return _BY_NAME[name]
