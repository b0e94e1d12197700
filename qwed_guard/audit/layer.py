"""`@audited`: a record per failed attempt, as it ends, and one per call, in a hash-chained trail.

The audit trail is a hook (see `qwed_guard.hooks`): it watches the whole call wherever
`@audited` sits in a stack. Each `AttemptEnded` event of a failed attempt becomes an `attempt`
record written at once (so a crash mid-call keeps the attempts already made, retry waits
after them); `CallEnded` becomes the `call` record with the final outcome and source, and
the answered last attempt (verified or unchecked) inline in its `answered` field, so a call
verified on its first attempt makes one record. The other events go into the call record:
`GaveUp` and `FallbackUsed` give the call's `reason`, and every other event (fallback_used,
breaker_changed, alert_sent, ...) is listed in its `events` field as
`{"event", "attempt", "ts", ...data}`. If a record cannot be written, the call fails closed
with `AuditError` once it has ended.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast

from qwed_guard import clock
from qwed_guard.audit.chain import Key, key_from_env, redact_mac
from qwed_guard.audit.record import (
    MAX_SAFE_INT,
    SCHEMA,
    Record,
    float_text,
    jsonable,
    rfc3339,
    safe_repr,
    scrub,
    versions,
)
from qwed_guard.audit.sinks import FsyncMode, Sink, sink_from_url
from qwed_guard.audit.sinks.base import (
    FSYNC_MODES,
    MAX_BATCH_MS,
    MAX_BATCH_SIZE,
    MAX_CHECKPOINT_EVERY,
    BuildingSink,
)
from qwed_guard.context import CallContext
from qwed_guard.errors import AuditError, bad_parameter
from qwed_guard.fallback import GuardedResult
from qwed_guard.hooks import (
    Attempt,
    AttemptEnded,
    AttemptStarted,
    CallEnded,
    Event,
    FallbackUsed,
    GaveUp,
    RetryScheduled,
)
from qwed_guard.layer import Layer
from qwed_guard.options import (
    STRING,
    Options,
    Problem,
    choice,
    data,
    integer,
    judged_by,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    text,
)
from qwed_guard.outcomes import ANSWERED, Outcome
from qwed_guard.verdicts import Judge, VerdictRules, answer_of, as_rules, attestation_summary

__all__ = ["AuditLayer", "AuditOptions", "audited"]
Redactor = Callable[[dict[str, Any]], dict[str, Any]]

_SOURCES = {Outcome.VERIFIED: "verified", Outcome.UNCHECKED: "unchecked"}
_VERIFIED = Outcome.VERIFIED  # an Enum member looked up once: `Outcome.X` costs a lookup
_QUIET_EVENTS: frozenset[type] = frozenset({AttemptStarted, RetryScheduled})
_MISSING: Any = object()
_MIN_HIDDEN = 4
"""Shorter queries are not searched for in other fields: they would match unrelated text."""
_NOT_AUDIT_FAILURES = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


_SCALARS = frozenset({str, int, float, bool, type(None)})
Read = tuple[bool, Any, Any]
"""(verified, value, confidence) of what a call or an attempt produced, as captured: a plain
str, int, float, bool or None as it is (immutable: made record data where the record is
built, by `_data`), anything else copied as record data at once (`_Made`)."""


class _Made:
    """A value copied as record data on the caller's side (it may change after the call)."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def _data(value: Any) -> Any:
    """A captured value (`Read`) as record data: floats as decimal text, strings scrubbed."""
    kind = type(value)
    if kind is str:
        return scrub(value)
    if kind is float:
        return float_text(value)
    if kind is _Made:
        return value.data
    if kind is int and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return str(value)  # as `jsonable` has it: JSON readers lose digits past 2**53
    return value  # None, bool, a safe int


def _read(result: Any, outcome: Outcome) -> Read:
    """What an attempt or a call produced, read once on the caller's side.

    `verified` is the verdict's, never the result's own say: only a VERIFIED outcome is.
    """
    if isinstance(result, BaseException):
        return False, None, None
    verified = outcome is _VERIFIED
    if type(result) is GuardedResult:
        verified = verified and result.verified is True and result.source == "verified"
        value, confidence = result.value, result.confidence
    else:
        answer = answer_of(result)
        value, confidence = answer.value, answer.confidence
    said: Any = confidence
    if type(value) not in _SCALARS:
        value = _Made(jsonable(value))
    if type(said) not in _SCALARS:
        said = _Made(jsonable(said))
    return verified, value, said


_Ended = tuple[
    float, int, float, Outcome, bool, Any, Any, "str | None", "str | None", "str | None",
    "str | None", "str | None", "Attempt | None", bool, Any, Any, "str | None",
]  # fmt: skip
"""(wall, attempts, duration, outcome, verified, value, confidence, error, source, reason,
exception, attestation token) of a call, then (attempt, verified, value, confidence, token) of
its answered attempt (attempt None when none answered), values captured as in `Read`."""


def _token(result: Any) -> str | None:
    token = getattr(result, "attestation", None)
    return token if isinstance(token, str) and token else None


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
    """One call's watcher. On the caller's side it only captures what happened, as small
    values; the records are built from them where they are sealed (a batch sink's writer
    thread), so the call path stays cheap. An attempt that failed is handed to the sink at
    once (a wait may follow); the last, answered one goes inline in the call record
    (`answered`), so a call verified on its first attempt makes one record.
    """

    __slots__ = (
        "attested",
        "call_id",
        "common",
        "ctx",
        "ended",
        "events",
        "failure",
        "fields",
        "held",
        "hidden",
        "layer",
        "policy",
        "query",
        "traceparent",
    )
    ignores = _QUIET_EVENTS

    def __init__(self, layer: AuditLayer, ctx: CallContext) -> None:
        self.layer = layer
        self.ctx: CallContext | None = ctx
        """Until the call ends: the records built later hold only what they need."""
        self.call_id = ctx.call_id
        self.attested = ctx.rules.require_attestation
        self.events: list[Event] | None = None
        self.failure: BaseException | None = None
        self.held: tuple[Attempt, Any, float] | None = None
        """The answered attempt, its result and end time, until the call record takes them."""
        self.ended: _Ended | None = None
        """What the call ended with, captured by `finish` for `_call_record`."""
        self.policy = ctx.policy_hash
        self.traceparent = ctx.traceparent  # set by the tracing hook, which starts first
        query = layer._query.find(ctx.args, ctx.kwargs)
        self.query = (
            query if type(query) in _SCALARS else _Copied(jsonable(query), safe_repr(query))
        )
        fields = ctx.fields
        self.fields = jsonable(fields) if fields else None
        self.common: tuple[Any, dict[str, Any], str | None, str | None] | None = None
        self.hidden: tuple[str, str] | None = None

    def __call__(self, event: Event) -> None:
        kind = type(event)
        try:
            if kind is AttemptEnded:
                attempt = event.record  # type: ignore[union-attr]  # narrowed by kind
                result = event.result  # type: ignore[union-attr]
                if (
                    self.held is None
                    and attempt.outcome in ANSWERED
                    and not isinstance(result, BaseException)
                ):
                    self.held = (attempt, result, event.wall)  # the common case of `_attempt`
                else:
                    self._attempt(event)  # type: ignore[arg-type]
            elif kind is CallEnded:
                self.finish(event)  # type: ignore[arg-type]  # narrowed by kind
            elif kind not in _QUIET_EVENTS:  # gave up, fallback, breaker changes, alerts
                events = self.events
                if events is None:
                    self.events = [event]
                else:
                    events.append(event)
        except AuditError:
            raise
        except Exception as exc:  # whatever broke, the call is not recorded: it fails closed
            self.layer._failed(self, exc)
            self.raise_if_failed()

    # --- on the caller's side: capture ----------------------------------------------------
    def _attempt(self, event: AttemptEnded) -> None:
        attempt = event.record
        result = event.result
        held = self.held
        if held is not None:  # an answered attempt was followed by another: it stands alone
            self.held = None
            self._write_attempt(*held)
        if attempt.outcome in ANSWERED and not isinstance(result, BaseException):
            self.held = (attempt, result, event.wall)  # it goes inline in the call record
        else:
            self._write_attempt(attempt, result, event.wall)

    def _write_attempt(self, attempt: Attempt, result: Any, wall: float) -> None:
        read = _read(result, attempt.outcome)
        pending = partial(self._attempt_record, attempt, wall, read, _token(result))
        self.layer._write(self, (pending,))

    def finish(self, ended: CallEnded) -> None:
        ctx = self.ctx
        assert ctx is not None, "a call ends once"
        result, exc, diagnosis = ended.result, ended.exception, ended.diagnosis
        held = self.held
        reason: str | None = None
        exception: str | None = None
        token: str | None = None
        shared = False  # whether the call's read is the answered attempt's too
        if exc is not None:
            outcome = diagnosis.outcome
            source: str | None = None
            read: Read = (False, None, None)
            error: str | None = diagnosis.error or f"{type(exc).__name__}: {exc}"
            exception = type(exc).__name__
            given = getattr(exc, "reason", None)
            reason = given if isinstance(given, str) else None
        elif type(result) is GuardedResult:  # `_read` and `_token`, inline: the common case
            outcome = result.outcome
            source = result.source
            value = result.value
            said: Any = result.confidence
            if type(value) not in _SCALARS:
                value = _Made(jsonable(value))
            if type(said) not in _SCALARS:
                said = _Made(jsonable(said))
            checked = outcome is _VERIFIED and result.verified is True
            read = (checked and source == "verified", value, said)
            # A verified GuardedResult's value and confidence are its attempt's answer's.
            shared = source == "verified" and held is not None and held[1] is result.result
            error = result.error
            reason = result.reason
            given = result.attestation
            token = given if isinstance(given, str) and given else None
        else:
            outcome = diagnosis.outcome
            source = _SOURCES.get(outcome, "unverified")
            read = _read(result, outcome)
            shared = held is not None and held[1] is result
            error = diagnosis.error
            token = _token(result)
        verified, value, confidence = read
        if held is None:
            self.ended = (ended.wall, len(ctx.attempts), clock.monotonic() - ctx.started,
                          outcome, verified, value, confidence, error, source, reason,
                          exception, token, None, False, None, None, None)  # fmt: skip
        else:
            attempt, produced, _ = held
            if shared:
                a_verified, a_value, a_confidence = (
                    attempt.outcome is _VERIFIED, value, confidence
                )  # fmt: skip
            else:
                a_verified, a_value, a_confidence = _read(produced, attempt.outcome)
            self.ended = (ended.wall, len(ctx.attempts), clock.monotonic() - ctx.started,
                          outcome, verified, value, confidence, error, source, reason,
                          exception, token, attempt, a_verified, a_value, a_confidence,
                          _token(produced))  # fmt: skip
        call = self._call_record
        self.ctx = self.held = None  # let the call go; the builder needs none of it
        layer = self.layer
        if layer._defer:
            try:
                layer.sink.append((call,))  # type: ignore[arg-type]  # a BuildingSink
            except Exception as failure:
                layer._failed(self, failure)
        else:
            layer._write(self, (call,))
        if self.failure is not None and (exc is None or not isinstance(exc, _NOT_AUDIT_FAILURES)):
            self.raise_if_failed()

    def raise_if_failed(self) -> None:
        failure = self.failure
        if failure is not None:
            if isinstance(failure, AuditError):
                raise AuditError(f"call {self.call_id} not audited: {failure}") from failure
            why = scrub(f"{type(failure).__name__}: {failure}")
            raise AuditError(f"call {self.call_id} not audited: {why}") from failure

    # --- where the records are sealed: build ----------------------------------------------
    def _shared(self) -> tuple[Any, dict[str, Any], str | None, str | None]:
        """(query, context, qwed, qwed_guard): the values every record of this call shares
        beside its id, computed once."""
        shared = self.common
        if shared is None:
            layer = self.layer
            raw = self.query
            if type(raw) is str and layer.redact_key is None:
                query = scrub(raw)  # the common case, as `_query_value` has it
            else:
                query = layer._query_value(raw)
            # With redact="hmac", the raw query wherever an error, reason or event repeats it.
            if layer.redact_key is not None and query is not None:
                text = raw if isinstance(raw, str) else repr(raw)
                if len(text) >= _MIN_HIDDEN:
                    self.hidden = (text, query)
            fields = self.fields
            context = layer._context_value(fields) if fields or layer.context else {}
            shared = self.common = (query, context, *versions())
        return shared

    def _attempt_fields(
        self, attempt: Attempt, verified: bool, value: Any, confidence: Any, token: str | None
    ) -> dict[str, Any]:
        """An attempt's own fields, `value` and `confidence` as record data: a call record's
        `answered`."""
        error = attempt.error
        # Keys in sorted order, as the canonical form has them: `seal` then sorts them faster.
        fields = {
            "attempt": attempt.number,
            "confidence": confidence,
            "duration_us": round(attempt.duration * 1_000_000),
            "error": self.text(error) if error else None,
            "outcome": attempt.outcome._value_,
            "status": attempt.status,
            "value": value,
            "verified": verified,
            "wait_us": round(attempt.wait_before * 1_000_000),
        }
        if attempt.reused:  # only on attempts that took replies from an earlier one
            fields["reused"] = attempt.reused
        if token is not None:
            checked = verified and self.attested
            fields["attestation"] = attestation_summary(token, checked=checked)
        return fields

    def _attempt_record(
        self, attempt: Attempt, wall: float, read: Read, token: str | None
    ) -> dict[str, Any]:
        query, context, qwed_version, guard_version = self.common or self._shared()
        verified, value, confidence = read
        error = attempt.error
        number = attempt.number
        call_id = self.call_id
        record = Record(  # keywords: cheaper than a dict literal copied; keys sorted, as above
            attempt=number,
            call_id=call_id,
            confidence=_data(confidence),
            context=context,
            duration_us=round(attempt.duration * 1_000_000),
            error=self.text(error) if error else None,
            event="attempt",
            function=self.layer._function,
            id=f"{call_id}/a{number}",
            outcome=attempt.outcome._value_,
            policy=self.policy,
            query=query,
            qwed=qwed_version,
            qwed_guard=guard_version,
            status=attempt.status,
            ts=rfc3339(wall),
            v=SCHEMA,
            value=_data(value),
            verified=verified,
            wait_us=round(attempt.wait_before * 1_000_000),
        )
        if self.traceparent is not None:
            record["traceparent"] = self.traceparent
        if attempt.reused:  # only on attempts that took replies from an earlier one
            record["reused"] = attempt.reused
        if token is not None:
            checked = verified and self.attested
            record["attestation"] = attestation_summary(token, checked=checked)
        return record

    def _call_record(self) -> dict[str, Any]:
        """The call record, from what `finish` captured (`ended`)."""
        ended = self.ended
        assert ended is not None, "built once the call ended"
        (wall, attempts, duration, outcome, verified, value, confidence, error, source, reason,
         exception, token, attempt, a_verified, a_value, a_confidence, a_token) = ended  # fmt: skip
        query, context, qwed_version, guard_version = self.common or self._shared()
        events: list[dict[str, Any]] = []
        if self.events is not None:
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
        # `_data`, with its most common case (a float: `float_text`) first.
        data = repr(value) if type(value) is float else _data(value)
        said = repr(confidence) if type(confidence) is float else _data(confidence)
        inline: dict[str, Any] | None = None
        if attempt is not None:  # the answered attempt, inline
            shared = a_value is value and a_confidence is confidence
            inline = self._attempt_fields(
                attempt,
                a_verified,
                data if shared else _data(a_value),
                said if shared else _data(a_confidence),
                a_token,
            )
        call_id = self.call_id
        record = Record(  # keywords: cheaper than a dict literal copied; keys sorted, as above
            answered=inline,
            attempt=attempts,
            call_id=call_id,
            confidence=said,
            context=context,
            duration_us=round(duration * 1_000_000),
            error=self.text(error) if error else None,
            event="call",
            events=events,
            exception=exception,
            function=self.layer._function,
            id=f"{call_id}/call",
            outcome=outcome._value_,
            policy=self.policy,
            query=query,
            qwed=qwed_version,
            qwed_guard=guard_version,
            reason=self.text(reason) if reason else None,
            source=source,
            ts=rfc3339(wall),
            v=SCHEMA,
            value=data,
            verified=verified,
        )
        if self.traceparent is not None:
            record["traceparent"] = self.traceparent
        if token is not None:
            checked = verified and self.attested
            record["attestation"] = attestation_summary(token, checked=checked)
        return record

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


class _Copied:
    """A query that was not a plain value: its record data and repr, copied at call time."""

    __slots__ = ("data", "text")

    def __init__(self, data: Any, text: str) -> None:
        self.data = data
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _is_keys(value: Any) -> tuple[str, bool] | None:
    if isinstance(value, str) or not isinstance(value, Collection):
        return "must be a list of context keys", True
    return None


def _is_mapping(value: Any) -> tuple[str, bool] | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping, got {type(value).__name__}", True
    return None


def _is_argument(value: Any) -> tuple[str, bool] | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "must be a parameter name or position", True
    return None


_SINKS = {"anyOf": [STRING, {"type": "array", "items": STRING}]}
_YEAR = 366 * 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditOptions(Options):
    """`@audited`'s parameters (see `audited`)."""

    sink: str | Sink | list[str | Sink] | None = data(
        "jsonl:audit.jsonl", "Where records go: jsonl:PATH, sqlite:PATH, memory:, ...", _SINKS
    )
    fsync: FsyncMode = choice("always", FSYNC_MODES, "When records reach the disk.")
    redact: Literal["none", "hmac"] | Redactor = choice(
        "none", ("none", "hmac"), "hmac stores queries as keyed hashes.", callable=True
    )
    redact_key_env: str | None = text(None, "The variable holding redact's HMAC key.")
    redact_context: Collection[str] | None = data(
        None, "Context keys redacted (all).", {"type": "array", "items": STRING}, test=_is_keys
    )
    key_env: str | None = text(None, "The variable holding the key that signs records.")
    checkpoint_every: int = integer(1000, 1, MAX_CHECKPOINT_EVERY, "Records between checkpoints.")
    context: Mapping[str, Any] | None = data(
        None, "Fields every record carries.", {"type": "object"}, test=_is_mapping
    )
    query_arg: str | int | None = data(
        None,
        "The query's parameter (name or position).",
        {"anyOf": [STRING, {"type": "integer", "minimum": 0}]},
        test=_is_argument,
    )
    on_error: Literal["raise", "log"] = choice(
        "raise", ("raise", "log"), "A record that cannot be written fails the call, or is logged."
    )
    batch_size: int = integer(256, 1, MAX_BATCH_SIZE, "Records per group commit (fsync=batch).")
    batch_ms: float = number(
        50.0, 0, MAX_BATCH_MS, "Milliseconds per group commit.", above=True, span=True
    )
    rotate_bytes: int | None = integer(
        None, 1, 2**50, "Start a new file past this size.", optional=True
    )
    rotate_seconds: float | None = number(
        None,
        0,
        10 * _YEAR,
        "Start a new file after this long.",
        above=True,
        optional=True,
        span=True,
    )
    keep_files: int | None = integer(None, 1, 1_000_000, "Rotated files kept.", optional=True)
    keep_days: float | None = number(
        None, 0, 100 * 366.0, "Days rotated files are kept.", above=True, optional=True, span=True
    )
    anchor: str | None = text(None, "A file, out of the trail's reach, that gets checkpoints.")
    verdict: VerdictRules | Judge | None = judged_by()

    @classmethod
    def relations(cls, values: Mapping[str, Any]) -> Iterator[Problem]:
        if values["redact"] == "hmac" and not values["redact_key_env"]:
            yield Problem(
                "redact_key_env",
                "redact='hmac' needs the name of an environment variable holding the key",
            )


class AuditLayer(Layer):
    """The audit trail's parameters and sink: a hook that records each call."""

    kind = "audited"
    options_type = AuditOptions
    __signature__ = layer_signature(AuditOptions)

    def __init__(self, options: AuditOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(AuditOptions, options, params)
        self.verdict = as_rules(o.verdict)
        redact, context = o.redact, o.context
        self.redact_key: Key | None = None
        self.redactor: Redactor | None = None
        if redact == "hmac":
            self.redact_key = _key(o.redact_key_env, "redact_key_env")
        elif callable(redact):
            self.redactor = redact
        self.checkpoint_key = _key(o.key_env, "key_env") if o.key_env else None
        self.redact = redact
        self.redact_context = None if o.redact_context is None else frozenset(o.redact_context)
        self.fsync = o.fsync
        self.anchor = o.anchor
        self.on_error = o.on_error
        self.query_arg = o.query_arg
        self.context: dict[str, Any] = jsonable(dict(context)) if context else {}
        self.sink: Sink = sink_from_url(
            o.sink,
            fsync=o.fsync,
            key=self.checkpoint_key,
            batch_size=o.batch_size,
            batch_ms=o.batch_ms,
            checkpoint_every=o.checkpoint_every,
            rotate_bytes=o.rotate_bytes,
            rotate_seconds=o.rotate_seconds,
            keep_files=o.keep_files,
            keep_days=o.keep_days,
            anchor=o.anchor,
        )
        self._function = "?"
        self._query = _QueryLocator(None, o.query_arg)
        self.hooks = (self._watch,)
        # A sink that builds records where it seals them gets the builders (no redactor can
        # then run on the caller's side, where its failure fails only its call).
        self._defer = self.redactor is None and getattr(self.sink, "builds_records", False)

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
    def _query_value(self, query: Any) -> Any:
        if query is None:
            return None
        if self.redact_key is not None:
            text = query if isinstance(query, str) else repr(query)
            return redact_mac(self.redact_key, text)
        return query.data if type(query) is _Copied else jsonable(query)

    def _context_value(self, fields: dict[str, Any] | None) -> dict[str, Any]:
        if not fields and not self.context:
            return {}
        merged: dict[str, Any] = dict(self.context)
        if fields:
            merged.update(fields)
        key = self.redact_key
        if key is not None:
            chosen = self.redact_context
            for name, value in merged.items():
                if chosen is None or name in chosen:
                    text = value if isinstance(value, str) else repr(value)
                    merged[name] = redact_mac(key, text)
        return merged

    def _write(self, call: _Call, pending: tuple[Callable[[], dict[str, Any]], ...]) -> None:
        """Hand records to the sink: as builders, when it builds them where it seals them."""
        try:
            if self._defer:
                cast("BuildingSink", self.sink).append(pending)
                return
            records = [build() for build in pending]
        except Exception as exc:
            self._failed(call, exc)
            return
        if self.redactor is not None:
            try:
                records = [dict(self.redactor(record)) for record in records]
            except Exception as exc:
                self._failed(call, exc)
                return
        try:
            self.sink.append(records)
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

    def _watch(self, ctx: CallContext) -> _Call | None:
        try:
            return _Call(self, ctx)
        except Exception as exc:  # the call cannot be recorded: it fails closed once it ends
            if self.on_error == "log":
                from loguru import logger

                logger.error("qwed_guard audit: a call was not recorded: {}", scrub(str(exc)))
                return None
            why = scrub(f"{type(exc).__name__}: {exc}")
            raise AuditError(f"a call was not recorded: {why}") from exc


def _key(env: str | None, param: str) -> Key:
    if not isinstance(env, str) or not env:
        raise bad_parameter(param, "must name an environment variable", wrong_type=True)
    try:
        return key_from_env(env)
    except KeyError:
        raise bad_parameter(param, f"environment variable {env} is not set") from None
    except ValueError as exc:
        raise bad_parameter(param, f"environment variable {env}: {exc}") from None


@layer_decorator(AuditOptions, AuditLayer)
def audited() -> None:
    """Record every attempt and every call in a tamper-evident, crash-safe audit trail.

    Put it outermost (`@audited` above `@fallback` above `@retry`). Records go to `sink`
    (`"jsonl:PATH"` by default `audit.jsonl`, `"sqlite:PATH"`, `"memory:"`, a Sink, or a list);
    `fsync` chooses when they reach the disk; `key_env` names the environment variable holding
    the HMAC key that signs every record and checkpoint; `anchor` names a file, kept where a
    cut trail cannot reach it, that also receives every signed checkpoint; `redact="hmac"`
    (key in `redact_key_env`) stores the query and context values as keyed hashes. If a
    record cannot be written the call raises `AuditError` (`on_error="log"` logs and returns
    instead).
    The parameters, their bounds and docs are `AuditOptions`'s fields.
    """
