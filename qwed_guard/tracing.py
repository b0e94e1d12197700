"""OpenTelemetry traces of guarded calls: a `verify` span per call, an `attempt` span per try.

    import qwed_guard.tracing

    qwed_guard.tracing.enable()          # every guarded call of the process, or
    policy = policy.with_hooks(qwed_guard.tracing.Tracing())   # one policy's functions

A hook (see `qwed_guard.hooks`). When a call starts it opens `verify {function}` (kind
INTERNAL) under whatever span is current; each attempt opens `attempt {function}` under it and
makes it the current span while the function runs, so the spans an instrumented client makes
(the openai SDK's, httpx's) nest under the attempt that made them. Retries scheduled, breaker
changes, fallbacks, alerts and giving up are span events of the call span. The call's trace
context is stamped on the call (`CallContext.traceparent`), and the audit trail writes it into
every record of the call as `traceparent`.

Needs `opentelemetry-api` (`pip install 'qwed-guard[otel]'`), imported only on the first call
of an enabled hook; without an SDK configured the spans are no-ops and the hook steps aside.
Attributes never carry the query, the call id or audit fields.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwed_guard._observe import call_outcome, call_source, code_object, error_type, find_spec
from qwed_guard.errors import bad_parameter
from qwed_guard.hooks import (
    AlertSent,
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    RetryScheduled,
    add_hook,
    remove_hook,
)
from qwed_guard.options import STRING, Options, Why, data, flag, options_from

if TYPE_CHECKING:
    from qwed_guard.context import CallContext

__all__ = [
    "DEFAULT_ATTEMPT_SPAN",
    "DEFAULT_CALL_SPAN",
    "Tracing",
    "TracingOptions",
    "disable",
    "enable",
]

DEFAULT_CALL_SPAN = "verify {function}"
DEFAULT_ATTEMPT_SPAN = "attempt {function}"
TRACER_NAME = "qwed_guard"


class _Otel:
    """The opentelemetry API pieces the watchers use, imported once, on first use."""

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self.context = context
        self.trace = trace
        self.internal = trace.SpanKind.INTERNAL
        self.error = trace.Status(trace.StatusCode.ERROR)


_otel: _Otel | None = None
_otel_lock = threading.Lock()


def _load() -> _Otel:
    global _otel
    if _otel is None:
        with _otel_lock:
            if _otel is None:
                _otel = _Otel()
    return _otel


def _span_name(value: Any) -> Why:
    """A span name template: text that may use `{function}` and nothing else."""
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}", not isinstance(value, str)
    try:
        value.format(function="f")
    except (KeyError, IndexError, ValueError) as exc:
        return f"may use only {{function}}, got {value!r} ({exc})", False
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingOptions(Options):
    """The tracing hook's parameters (a policy's `tracing` section)."""

    enabled: bool = flag(True, "False watches nothing (`tracing: {enabled: false}`).")
    call_span: str = data(
        DEFAULT_CALL_SPAN,
        "The call span's name; `{function}` is the function's name.",
        STRING,
        test=_span_name,
    )
    attempt_span: str = data(
        DEFAULT_ATTEMPT_SPAN, "Each attempt span's name.", STRING, test=_span_name
    )
    tracer_provider: Any = data(
        None, "Where spans go (code only); the global provider if unset.", test=code_object
    )


class Tracing:
    """A hook that traces every call it watches with OpenTelemetry; parameters:
    `TracingOptions` (keywords, or the options object)."""

    kind = "tracing"
    options_type = TracingOptions

    def __init__(self, options: TracingOptions | None = None, /, **params: Any) -> None:
        o = options_from(TracingOptions, options, params)
        enabled, tracer_provider = o.enabled, o.tracer_provider
        self.enabled = enabled
        self.call_span = o.call_span
        self.attempt_span = o.attempt_span
        if enabled and tracer_provider is None and not find_spec("opentelemetry.trace"):
            raise bad_parameter(
                "enabled", "needs opentelemetry-api: pip install 'qwed-guard[otel]'"
            )
        self.tracer_provider = tracer_provider
        self._tracer: Any = None
        self._names: dict[str, tuple[str, str]] = {}

    def describe(self) -> str:
        if not self.enabled:
            return "tracing(off)"
        return f"tracing(call_span={self.call_span!r}, attempt_span={self.attempt_span!r})"

    def __repr__(self) -> str:
        return self.describe()

    def _start(self) -> Any:
        otel = _load()
        if self._tracer is None:
            from qwed_guard import __version__

            self._tracer = otel.trace.get_tracer(
                TRACER_NAME, __version__, tracer_provider=self.tracer_provider
            )
        return self._tracer

    def __call__(self, ctx: CallContext) -> _CallTrace | None:
        if not self.enabled:
            return None
        tracer = self._tracer or self._start()
        function = ctx.function
        names = self._names.get(function)
        if names is None:
            names = (
                self.call_span.format(function=function),
                self.attempt_span.format(function=function),
            )
            if len(self._names) < 10_000:
                self._names[function] = names
        otel = _otel
        assert otel is not None
        attributes: dict[str, Any] = {"code.function.name": function}
        if ctx.policy_hash is not None:
            attributes["qwed_guard.policy_hash"] = ctx.policy_hash
        span = tracer.start_span(names[0], kind=otel.internal, attributes=attributes)
        if not span.is_recording():
            return None  # no SDK, or not sampled: nothing to record
        spanctx = span.get_span_context()
        ctx.traceparent = (
            f"00-{spanctx.trace_id:032x}-{spanctx.span_id:016x}-{int(spanctx.trace_flags):02x}"
        )
        return _CallTrace(ctx, tracer, otel, span, names[1], function)


class _CallTrace:
    """One call's spans."""

    __slots__ = ("attempt", "ctx", "function", "name", "otel", "span", "token", "tracer")

    def __init__(
        self, ctx: CallContext, tracer: Any, otel: _Otel, span: Any, name: str, function: str
    ) -> None:
        self.ctx = ctx
        self.tracer = tracer
        self.otel = otel
        self.span = span
        self.name = name
        self.function = function
        self.attempt: Any = None
        self.token: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptStarted):
            self._begin(event)
        elif isinstance(event, AttemptEnded):
            self._end_attempt(event)
        elif isinstance(event, CallEnded):
            self._finish(event)
        else:
            self.span.add_event(event.kind, _event_attributes(event))

    def _begin(self, event: AttemptStarted) -> None:
        otel = self.otel
        if self.attempt is not None:
            self._close_attempt()
        parent = otel.trace.set_span_in_context(self.span)
        span = self.tracer.start_span(
            self.name,
            context=parent,
            kind=otel.internal,
            attributes={"code.function.name": self.function, "qwed_guard.attempt": event.attempt},
        )
        self.attempt = span
        # Current while the function runs: spans it makes (an HTTP client's) nest under it.
        self.token = otel.context.attach(otel.trace.set_span_in_context(span))

    def _end_attempt(self, event: AttemptEnded) -> None:
        span = self.attempt
        if span is None:
            return
        record = event.record
        span.set_attribute("qwed_guard.outcome", record.outcome.value)
        if record.status is not None:
            span.set_attribute("http.response.status_code", record.status)
        error = error_type(record.outcome, event.result)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(self.otel.error)
        self._close_attempt()

    def _close_attempt(self) -> None:
        token, self.token = self.token, None
        if token is not None:
            # OTel logs (never raises) a detach from another context.
            self.otel.context.detach(token)
        span, self.attempt = self.attempt, None
        if span is not None:
            span.end()

    def _finish(self, ended: CallEnded) -> None:
        if self.attempt is not None:  # interrupted mid-attempt
            self._close_attempt()
        span = self.span
        outcome = call_outcome(ended)
        span.set_attribute("qwed_guard.source", call_source(ended))
        span.set_attribute("qwed_guard.outcome", outcome.value)
        attempts = self.ctx.attempts
        span.set_attribute("qwed_guard.attempts", len(attempts))
        if attempts and attempts[-1].status is not None:
            span.set_attribute("http.response.status_code", attempts[-1].status)
        error = error_type(outcome, ended.exception)
        if error is not None:  # raised, or answered by a fallback / unverified
            span.set_attribute("error.type", error)
            span.set_status(self.otel.error)
        span.end()


def _event_attributes(event: Event) -> dict[str, Any]:
    """A span event's attributes: what happened, never the query or the error text."""
    attributes: dict[str, Any] = {"qwed_guard.attempt": event.attempt}
    if isinstance(event, RetryScheduled):
        attributes["qwed_guard.wait"] = event.wait
        attributes["qwed_guard.outcome"] = event.outcome.value
    elif isinstance(event, BreakerChanged):
        attributes["qwed_guard.breaker.key"] = event.key
        attributes["qwed_guard.breaker.from"] = str(event.old)
        attributes["qwed_guard.breaker.to"] = str(event.new)
    elif isinstance(event, FallbackUsed):
        attributes["qwed_guard.outcome"] = event.outcome.value
    elif isinstance(event, AlertSent):
        attributes["qwed_guard.alert.key"] = event.alert.key
        attributes["qwed_guard.alert.kind"] = str(event.alert.kind)
    elif isinstance(event, GaveUp):
        attributes["qwed_guard.attempts"] = event.attempts
    return attributes


_enabled: list[Tracing] = []


def enable(**options: Any) -> Tracing:
    """Trace every guarded call of the process (`Tracing(**options)` as a process hook)."""
    tracing = Tracing(**options)
    add_hook(tracing)
    _enabled.append(tracing)
    return tracing


def disable(tracing: Tracing | None = None) -> None:
    """Stop a hook `enable()` returned (every one, when None)."""
    for item in list(_enabled):
        if tracing is None or item is tracing:
            remove_hook(item)
            _enabled.remove(item)
