"""`@audited`: one record per attempt, as it ends, and one per call, in a hash-chained trail.

The audit trail is a hook (see `qwed_guard.hooks`): it watches the whole call wherever
`@audited` sits in a stack. Each `AttemptEnded` event becomes an `attempt` record written at
once (so a crash mid-call keeps the attempts already made); `CallEnded` becomes the `call`
record with the final outcome and source. The other events go into the call record:
`GaveUp` and `FallbackUsed` give the call's `reason`, and every other event (fallback_used,
breaker_changed, alert_sent, ...) is listed in its `events` field as
`{"event", "attempt", "ts", ...data}`. If a record cannot be written, the call fails closed
with `AuditError` once it has ended.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, TypeVar, overload

from qwed_guard import clock
from qwed_guard.audit import record as _record
from qwed_guard.audit.chain import Key, key_from_env, redact_mac
from qwed_guard.audit.record import (
    SCHEMA,
    Record,
    float_text,
    jsonable,
    rfc3339,
    scrub,
    versions,
)
from qwed_guard.audit.sinks import FsyncMode, Sink, sink_from_url
from qwed_guard.audit.sinks.base import check_options
from qwed_guard.context import CallContext
from qwed_guard.errors import AuditError, bad_parameter
from qwed_guard.fallback import GuardedResult
from qwed_guard.hooks import (
    AttemptEnded,
    AttemptStarted,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    RetryScheduled,
)
from qwed_guard.layer import Layer, guard
from qwed_guard.outcomes import Outcome
from qwed_guard.verdicts import Judge, VerdictRules, answer_of, as_rules, attestation_summary

__all__ = ["AuditLayer", "audited"]

F = TypeVar("F", bound=Callable[..., Any])
Redactor = Callable[[dict[str, Any]], dict[str, Any]]

_SOURCES = {Outcome.VERIFIED: "verified", Outcome.UNCHECKED: "unchecked"}
_QUIET_EVENTS: frozenset[type] = frozenset({AttemptStarted, RetryScheduled})
_MISSING: Any = object()
_MIN_HIDDEN = 4
"""Shorter queries are not searched for in other fields: they would match unrelated text."""
_NOT_AUDIT_FAILURES = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def _result_fields(result: Any, outcome: Outcome) -> tuple[bool, Any, Any]:
    """(verified, value, confidence) of what an attempt or a call produced.

    `verified` is the verdict's, never the result's own say: only a VERIFIED outcome is.
    """
    if isinstance(result, BaseException):
        return False, None, None
    verified = outcome is Outcome.VERIFIED
    if type(result) is GuardedResult:
        verified = verified and result.verified is True and result.source == "verified"
        value, confidence = result.value, result.confidence
    else:
        answer = answer_of(result)
        value, confidence = answer.value, answer.confidence
    kind = type(value)
    return (
        verified,
        value
        if value is None or kind is int
        else float_text(value)
        if kind is float
        else jsonable(value),
        float_text(confidence) if type(confidence) is float else jsonable(confidence),
    )


def _attestation_field(result: Any, verified: bool, rules: VerdictRules) -> Any:
    """The attestation's id and digest, when the answer carries one (a fallback never does)."""
    token = getattr(result, "attestation", None)
    if not isinstance(token, str) or not token:
        return None
    return attestation_summary(token, checked=verified and rules.require_attestation)


class _QueryLocator:
    """Where a function's query argument is: a parameter named `query`, else the first str."""

    __slots__ = ("index", "infer", "name")

    def __init__(self, fn: Callable[..., Any] | None, query_arg: str | int | None) -> None:
        self.name: str | None = None
        self.index: int | None = None
        self.infer = query_arg is None
        try:
            params = list(inspect.signature(fn).parameters.values()) if fn else []
        except (TypeError, ValueError):
            params = []
        # A method's self/cls stays in the call's arguments (as the layers pass them on).
        positional = [
            p
            for p in params
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if isinstance(query_arg, int):
            self.index = query_arg
            if query_arg < len(positional):
                self.name = positional[query_arg].name
            return
        wanted = query_arg if isinstance(query_arg, str) else "query"
        for param in params:
            if param.name == wanted:
                self.name = wanted
                if param in positional:
                    self.index = positional.index(param)
                self.infer = False
                break
        if isinstance(query_arg, str) and self.name is None:
            self.name = query_arg  # maybe passed through **kwargs

    def find(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        name, index = self.name, self.index
        if name is not None and name in kwargs:
            return kwargs[name]
        if index is not None and index < len(args):
            return args[index]
        if self.infer:
            for value in args:
                if isinstance(value, str):
                    return value
            for value in kwargs.values():
                if isinstance(value, str):
                    return value
        return None


class _Call:
    """One call's view of the trail: the watcher that writes its records."""

    __slots__ = ("call_id", "common", "ctx", "events", "failure", "hidden", "last", "layer")
    ignores = _QUIET_EVENTS

    def __init__(self, layer: AuditLayer, ctx: CallContext) -> None:
        self.layer = layer
        self.ctx = ctx
        self.call_id = ctx.call_id
        self.events: list[Event] = []
        self.failure: BaseException | None = None
        self.last: tuple[Any, tuple[bool, Any, Any]] | None = None
        qwed_version, guard_version = _record._versions or versions()
        query = layer._query_value(ctx)
        # With redact="hmac", the raw query wherever an error, reason or event repeats it.
        self.hidden: tuple[str, str] | None = None
        if layer.redact_key is not None and query is not None:
            raw = layer._query.find(ctx.args, ctx.kwargs)
            text = raw if isinstance(raw, str) else repr(raw)
            if len(text) >= _MIN_HIDDEN:
                self.hidden = (text, query)
        # The fields every record of this call shares.
        self.common: dict[str, Any] = {
            "v": SCHEMA,
            "call_id": self.call_id,
            "function": layer._function,
            "query": query,
            "context": layer._context_value(ctx) if ctx.fields or layer.context else {},
            "policy": ctx.policy_hash,
            "qwed": qwed_version,
            "qwed_guard": guard_version,
        }
        if ctx.traceparent is not None:  # set by the tracing hook, which starts first
            self.common["traceparent"] = ctx.traceparent

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptEnded):
            self._attempt(event)
        elif isinstance(event, CallEnded):
            self.finish(event)
        elif type(event) not in _QUIET_EVENTS:  # gave up, fallback, breaker changes, alerts
            self.events.append(event)

    def _attempt(self, event: AttemptEnded) -> None:
        attempt = event.record
        outcome = attempt.outcome
        result = event.result
        fields = _result_fields(result, outcome)
        self.last = (result, fields)
        verified, value, confidence = fields
        error = attempt.error
        number = attempt.number
        record = Record(self.common)
        record.update(
            {
                "id": f"{self.call_id}/a{number}",
                "ts": rfc3339(event.wall),
                "event": "attempt",
                "attempt": number,
                "outcome": outcome._value_,
                "verified": verified,
                "value": value,
                "confidence": confidence,
                "error": self.text(error) if error else None,
                "status": attempt.status,
                "duration_us": round(attempt.duration * 1_000_000),
                "wait_us": round(attempt.wait_before * 1_000_000),
            }
        )
        if attempt.reused:  # only on attempts that took replies from an earlier one
            record["reused"] = attempt.reused
        attestation = _attestation_field(result, verified, self.ctx.rules)
        if attestation is not None:
            record["attestation"] = attestation
        self.layer._write(self, record)

    def text(self, text: str) -> str:
        """`text` scrubbed, and with redact="hmac" the raw query in it replaced by its HMAC."""
        hidden = self.hidden
        if hidden is not None and hidden[0] in text:
            text = text.replace(hidden[0], hidden[1])
        return scrub(text)

    def hide(self, value: Any) -> Any:
        """`value` (record data) with the raw query replaced in every string it holds."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.hide(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.hide(v) for v in value]
        return value

    def finish(self, ended: CallEnded) -> None:
        ctx = self.ctx
        reason: str | None = None
        exception: str | None = None
        result, exc, diagnosis = ended.result, ended.exception, ended.diagnosis
        if exc is not None:
            outcome = diagnosis.outcome
            source: str | None = None
            verified, value, confidence = False, None, None
            error: str | None = diagnosis.error or f"{type(exc).__name__}: {exc}"
            exception = type(exc).__name__
            given = getattr(exc, "reason", None)
            reason = given if isinstance(given, str) else None
        elif type(result) is GuardedResult:
            outcome = result.outcome
            source = result.source
            last = self.last
            if source == "verified" and last is not None and last[0] is result.result:
                verified, value, confidence = last[1]  # the verified attempt's own result
            else:
                verified, value, confidence = _result_fields(result, outcome)
            error = result.error
            reason = result.reason
        else:
            outcome = diagnosis.outcome
            source = _SOURCES.get(outcome, "unverified")
            verified, value, confidence = _result_fields(result, outcome)
            error = diagnosis.error
        events: list[dict[str, Any]] = []
        for event in self.events:
            if type(event) is GaveUp:
                if reason is None:
                    reason = event.reason
                continue
            item: dict[str, Any] = {"event": event.kind, "attempt": event.attempt}
            item["ts"] = rfc3339(event.wall)
            for name, datum in zip(event._fields[2:], event[2:], strict=True):
                if name == "reason" and type(event) is FallbackUsed:
                    continue  # the call's own `reason`
                item[name] = jsonable(datum)
            events.append(self.hide(item) if self.hidden else item)
        record = Record(self.common)
        record.update(
            {
                "id": f"{self.call_id}/call",
                "ts": rfc3339(clock.wall()),
                "event": "call",
                "attempt": len(ctx.attempts),
                "outcome": outcome._value_,
                "verified": verified,
                "value": value,
                "confidence": confidence,
                "error": self.text(error) if error else None,
                "duration_us": round((clock.monotonic() - ctx.started) * 1_000_000),
                "source": source,
                "reason": self.text(reason) if reason else None,
                "exception": exception,
                "events": events,
            }
        )
        if exc is None:
            attestation = _attestation_field(result, verified, ctx.rules)
            if attestation is not None:
                record["attestation"] = attestation
        self.layer._write(self, record)
        if exc is None or not isinstance(exc, _NOT_AUDIT_FAILURES):
            self.raise_if_failed()

    def raise_if_failed(self) -> None:
        failure = self.failure
        if failure is not None:
            if isinstance(failure, AuditError):
                raise AuditError(f"call {self.call_id} not audited: {failure}") from failure
            raise AuditError(
                f"call {self.call_id} not audited: {type(failure).__name__}: {failure}"
            ) from failure


class AuditLayer(Layer):
    """The audit trail's parameters and sink; `around` records one call."""

    kind = "audited"

    def __init__(
        self,
        *,
        sink: str | Sink | list[str | Sink] | None = "jsonl:audit.jsonl",
        fsync: FsyncMode = "always",
        redact: Literal["none", "hmac"] | Redactor = "none",
        redact_key_env: str | None = None,
        redact_context: Collection[str] | None = None,
        key_env: str | None = None,
        checkpoint_every: int = 1000,
        context: Mapping[str, Any] | None = None,
        query_arg: str | int | None = None,
        on_error: Literal["raise", "log"] = "raise",
        batch_size: int = 256,
        batch_ms: float = 50.0,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        keep_files: int | None = None,
        keep_days: float | None = None,
        anchor: str | None = None,
        verdict: VerdictRules | Judge | None = None,
    ) -> None:
        self.verdict = as_rules(verdict)
        if on_error not in ("raise", "log"):
            raise bad_parameter("on_error", f"must be 'raise' or 'log', got {on_error!r}")
        if context is not None and not isinstance(context, Mapping):
            raise bad_parameter(
                "context", f"must be a mapping, got {type(context).__name__}", wrong_type=True
            )
        if query_arg is not None and (
            isinstance(query_arg, bool) or not isinstance(query_arg, (str, int))
        ):
            raise bad_parameter(
                "query_arg", "must be a parameter name or position", wrong_type=True
            )
        self.redact_key: Key | None = None
        self.redactor: Redactor | None = None
        if redact == "hmac":
            if not redact_key_env:
                raise bad_parameter(
                    "redact_key_env",
                    "redact='hmac' needs the name of an environment variable holding the key",
                )
            self.redact_key = _key(redact_key_env, "redact_key_env")
        elif callable(redact):
            self.redactor = redact
        elif redact != "none":
            raise bad_parameter("redact", f"must be 'none', 'hmac' or a callable, got {redact!r}")
        if redact_context is not None and (
            isinstance(redact_context, str) or not isinstance(redact_context, Collection)
        ):
            raise bad_parameter("redact_context", "must be a list of context keys")
        # Checked here too: a memory: or custom sink would not check them itself.
        check_options(
            batch_size=batch_size,
            batch_ms=batch_ms,
            checkpoint_every=checkpoint_every,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            keep_files=keep_files,
            keep_days=keep_days,
        )
        self.checkpoint_key = _key(key_env, "key_env") if key_env else None
        self.redact = redact
        self.redact_context = frozenset(redact_context) if redact_context is not None else None
        self.fsync = fsync
        self.anchor = anchor
        self.on_error = on_error
        self.query_arg = query_arg
        self.context: dict[str, Any] = jsonable(dict(context)) if context else {}
        self.sink: Sink = sink_from_url(
            sink,
            fsync=fsync,
            key=self.checkpoint_key,
            batch_size=batch_size,
            batch_ms=batch_ms,
            checkpoint_every=checkpoint_every,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            keep_files=keep_files,
            keep_days=keep_days,
            anchor=anchor,
        )
        self._function = "?"
        self._query = _QueryLocator(None, query_arg)
        self.hooks = (self._watch,)

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> AuditLayer:
        bound = copy.copy(self)
        bound._function = name
        bound._query = _QueryLocator(fn, self.query_arg)
        bound.hooks = (bound._watch,)
        return bound

    def describe(self) -> str:
        describe = getattr(self.sink, "describe", None)
        where = describe() if callable(describe) else type(self.sink).__name__
        parts = [f"sink={where}", f"fsync={self.fsync}"]
        redact = self.redact if isinstance(self.redact, str) else "custom"
        parts.append(f"redact={redact}")
        if self.checkpoint_key is not None:
            parts.append(f"records and checkpoints signed with ${self.checkpoint_key.env}")
        if self.anchor is not None:
            parts.append(f"anchor={self.anchor}")
        parts.append(f"on_error={self.on_error}")
        return "audited(" + "; ".join(parts) + ")"

    def flush(self) -> None:
        """Return once every record written so far is durable."""
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()

    # --- per call ---------------------------------------------------------------------
    def _query_value(self, ctx: CallContext) -> Any:
        query = self._query.find(ctx.args, ctx.kwargs)
        if query is None:
            return None
        if self.redact_key is not None:
            text = query if isinstance(query, str) else repr(query)
            return redact_mac(self.redact_key, text)
        return jsonable(query)

    def _context_value(self, ctx: CallContext) -> dict[str, Any]:
        fields = ctx.fields
        if not fields and not self.context:
            return {}
        merged: dict[str, Any] = dict(self.context)
        if fields:
            merged.update(jsonable(fields))
        key = self.redact_key
        if key is not None:
            chosen = self.redact_context
            for name, value in merged.items():
                if chosen is None or name in chosen:
                    text = value if isinstance(value, str) else repr(value)
                    merged[name] = redact_mac(key, text)
        return merged

    def _write(self, call: _Call, record: dict[str, Any]) -> None:
        if self.redactor is not None:
            try:
                record = self.redactor(record)
            except Exception as exc:
                self._failed(call, exc)
                return
            if type(record) is Record:  # maybe changed in place: no longer known to be plain
                record = dict(record)
        try:
            self.sink.append((record,))
        except Exception as exc:
            self._failed(call, exc)

    def _failed(self, call: _Call, exc: BaseException) -> None:
        if self.on_error == "log":
            from loguru import logger

            logger.error(
                "qwed_guard audit: a record of call {} was lost: {}", call.call_id, scrub(str(exc))
            )
        elif call.failure is None:
            call.failure = exc

    def _watch(self, ctx: CallContext) -> _Call:
        return _Call(self, ctx)


def _key(env: str | None, param: str) -> Key:
    if not isinstance(env, str) or not env:
        raise bad_parameter(param, "must name an environment variable", wrong_type=True)
    try:
        return key_from_env(env)
    except KeyError:
        raise bad_parameter(param, f"environment variable {env} is not set") from None
    except ValueError as exc:
        raise bad_parameter(param, f"environment variable {env}: {exc}") from None


@overload
def audited(fn: F, /) -> F: ...


@overload
def audited(
    *,
    sink: str | Sink | list[str | Sink] | None = "jsonl:audit.jsonl",
    fsync: FsyncMode = "always",
    redact: Literal["none", "hmac"] | Redactor = "none",
    redact_key_env: str | None = None,
    redact_context: Collection[str] | None = None,
    key_env: str | None = None,
    checkpoint_every: int = 1000,
    context: Mapping[str, Any] | None = None,
    query_arg: str | int | None = None,
    on_error: Literal["raise", "log"] = "raise",
    batch_size: int = 256,
    batch_ms: float = 50.0,
    rotate_bytes: int | None = None,
    rotate_seconds: float | None = None,
    keep_files: int | None = None,
    keep_days: float | None = None,
    anchor: str | None = None,
    verdict: VerdictRules | Judge | None = None,
) -> Callable[[F], F]: ...


def audited(fn: Callable[..., Any] | None = None, /, **params: Any) -> Any:
    """Record every attempt and every call in a tamper-evident, crash-safe audit trail.

    Put it outermost (`@audited` above `@fallback` above `@retry`). Records go to `sink`
    (`"jsonl:PATH"` by default `audit.jsonl`, `"sqlite:PATH"`, `"memory:"`, a Sink, or a list);
    `fsync` chooses when they reach the disk; `key_env` names the environment variable holding
    the HMAC key that signs every record and checkpoint; `anchor` names a file, kept where a
    cut trail cannot reach it, that also receives every signed checkpoint; `redact="hmac"`
    (key in `redact_key_env`) stores the query and context values as keyed hashes. If a
    record cannot be written the call raises `AuditError` (`on_error="log"` logs and returns
    instead).
    """
    layer = AuditLayer(**params)
    if fn is not None:
        return guard(fn, layer)

    def decorate(func: F) -> F:
        return guard(func, layer)

    return decorate
