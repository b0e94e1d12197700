"""`@fallback`: when a call cannot be verified, return a conservative value, clearly labelled.

Every path returns a `GuardedResult`. A fallback result is never `verified=True`: the value did
not pass the symbolic check, whatever it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, ParamSpec, overload

from qwed_guard import clock
from qwed_guard.context import CallContext
from qwed_guard.errors import (
    AuditError,
    FallbackError,
    PolicyError,
)
from qwed_guard.hooks import FallbackUsed
from qwed_guard.layer import CallOutcome, Deferred, Layer, guard, outcome_of
from qwed_guard.options import (
    Options,
    Problem,
    data,
    decorator,
    function,
    judged_by,
    layer_signature,
    options_from,
)
from qwed_guard.outcomes import ANSWERED, Diagnosis, Outcome
from qwed_guard.verdicts import Judge, VerdictRules, answer_of, as_rules

__all__ = ["Failure", "FallbackLayer", "FallbackOptions", "GuardedResult", "fallback"]

P = ParamSpec("P")

_UNSET: Any = object()
_new_tuple: Callable[..., Any] = tuple.__new__
# Enum members looked up once: `Outcome.X` is an attribute lookup, and the success path uses them.
_VERIFIED, _UNCHECKED = Outcome.VERIFIED, Outcome.UNCHECKED
# Errors that mean "do not answer at all", never "answer with the fallback".
_NEVER_FALL_BACK = (AuditError, PolicyError, FallbackError)


Source = Literal["verified", "fallback", "unchecked"]


@dataclass(slots=True)
class GuardedResult:
    """What a call under `@fallback` returns: QWED's fields plus where the value came from.

    `source` is `"verified"` (QWED admitted the answer: the only case with `verified=True`),
    `"fallback"` (the fallback value replaced an unverified answer), or `"unchecked"` (the
    function returned a plain value with no verdict, passed through as it is).
    """

    verified: bool
    value: Any
    confidence: float | None
    """What QWED said (None when it said nothing); 0.0 on a fallback."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    source: Source = "verified"
    reason: str | None = None
    """Why the fallback was used: the outcome and, when known, the error."""
    attempts: int = 1
    outcome: Outcome = Outcome.VERIFIED
    status: str | None = None
    """The hosted QWED status (VERIFIED, BLOCKED, UNVERIFIABLE, ...) of the answer, if any."""
    admission: str | None = None
    """The hosted QWED admission (ADMIT, BLOCKED) of the answer, if any."""
    attestation: str | None = field(default=None, repr=False)
    """QWED's signed attestation of a verified hosted answer; a fallback never carries one."""
    result: Any = field(default=None, repr=False)
    """The wrapped function's own last result, when it returned one (its error text is the
    provider's own, unscrubbed: it is left out of the repr so logs never show it)."""

    @property
    def is_fallback(self) -> bool:
        return self.source == "fallback"


@dataclass(frozen=True, slots=True)
class Failure:
    """What a fallback handler is told about the failure it replaces."""

    outcome: Outcome
    error: str | None
    attempts: int
    exception: BaseException | None
    result: Any


Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackOptions(Options):
    """`@fallback`'s parameters (see `fallback`): exactly one of `value` and `handler`."""

    value: Any = data(_UNSET, "The conservative value returned when a call is not verified.")
    handler: Handler | None = function(None, "Called as handler(failure, *args, **kwargs).")
    verdict: VerdictRules | Judge | None = judged_by()

    @classmethod
    def relations(cls, values: Mapping[str, Any]) -> Iterator[Problem]:
        if (values["value"] is _UNSET) == (values["handler"] is None):
            yield Problem("value", "give exactly one of value=... or handler=...")


class FallbackLayer(Layer):
    kind = "fallback"
    options_type = FallbackOptions
    __signature__ = layer_signature(FallbackOptions)

    def __init__(self, options: FallbackOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(FallbackOptions, options, params)
        self.verdict = as_rules(o.verdict)
        self.value = None if o.value is _UNSET else o.value
        self.handler = o.handler
        self._handler_is_async = o.handler is not None and inspect.iscoroutinefunction(o.handler)

    def describe(self) -> str:
        if self.handler is not None:
            name = getattr(self.handler, "__qualname__", repr(self.handler))
            return f"fallback(handler={name})"
        return f"fallback(value={self.value!r})"

    @staticmethod
    def _answered(ctx: CallContext, result: Any, outcome: Outcome) -> GuardedResult:
        """The result of a call that worked: verified by QWED, or a plain value passed on."""
        if isinstance(result, GuardedResult):
            return result
        if outcome is _UNCHECKED:
            return GuardedResult(
                verified=False,
                value=result,
                confidence=None,
                source="unchecked",
                attempts=max(len(ctx.attempts), 1),
                outcome=outcome,
                result=result,
            )
        answer = answer_of(result)
        # Positional: the success path builds one on every call.
        return GuardedResult(
            True,
            answer.value,
            answer.confidence,
            answer.evidence or {},
            None,
            "verified",
            None,
            len(ctx.attempts) or 1,
            _VERIFIED,
            answer.status,
            answer.admission,
            answer.attestation,
            result,
        )

    def _labelled(
        self, ctx: CallContext, failure: Failure, value: Any, diagnosis: Diagnosis
    ) -> CallOutcome:
        reason = failure.outcome.value + (f": {failure.error}" if failure.error else "")
        if ctx.wants(FallbackUsed):
            ctx.send(FallbackUsed(ctx.attempt, clock.wall(), value, reason, failure.outcome))
        labelled = GuardedResult(
            verified=False,
            value=value,
            confidence=0.0,
            evidence={},
            error=failure.error,
            source="fallback",
            reason=reason,
            attempts=failure.attempts,
            outcome=failure.outcome,
            result=failure.result if not isinstance(failure.result, BaseException) else None,
        )
        # The diagnosis stays the failure's: layers outside see that the call was not verified.
        return CallOutcome(diagnosis, labelled, None)

    def _handler_failed(self, error: Exception) -> CallOutcome:
        name = getattr(self.handler, "__qualname__", repr(self.handler))
        failed = FallbackError(f"fallback handler {name} raised {type(error).__name__}: {error}")
        failed.__cause__ = error
        return outcome_of(failed)

    def exit(self, ctx: CallContext, state: None, outcome: CallOutcome) -> CallOutcome | Deferred:
        exc = outcome.exception
        diagnosis = outcome.diagnosis
        if exc is None:
            if diagnosis.outcome in ANSWERED:
                answered = self._answered(ctx, outcome.result, diagnosis.outcome)
                # tuple.__new__ skips the NamedTuple's Python-level constructor: every call.
                called: CallOutcome = _new_tuple(CallOutcome, (diagnosis, answered, None))
                return called
        elif isinstance(exc, _NEVER_FALL_BACK):
            return outcome
        failure = Failure(
            diagnosis.outcome, diagnosis.error, max(len(ctx.attempts), 1), exc, outcome.result
        )
        handler = self.handler
        if handler is None:
            return self._labelled(ctx, failure, self.value, diagnosis)
        if self._handler_is_async:
            if not ctx.is_async:
                return outcome_of(
                    FallbackError("an async fallback handler needs an async guarded function")
                )
            return Deferred(
                partial(handler, failure, *ctx.args, **ctx.kwargs),
                partial(self._settle, ctx, failure, diagnosis),
            )
        try:
            value = handler(failure, *ctx.args, **ctx.kwargs)
        except Exception as error:
            return self._handler_failed(error)
        return self._labelled(ctx, failure, value, diagnosis)

    def _settle(
        self,
        ctx: CallContext,
        failure: Failure,
        diagnosis: Diagnosis,
        value: Any,
        error: Exception | None,
    ) -> CallOutcome:
        if error is not None:
            return self._handler_failed(error)
        return self._labelled(ctx, failure, value, diagnosis)


class _FallbackDecorator:
    """`fallback(...)`'s result: turns a function's return type into `GuardedResult`."""

    def __init__(self, layer: FallbackLayer) -> None:
        self.layer = layer

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, Any]]
    ) -> Callable[P, Coroutine[Any, Any, GuardedResult]]: ...

    @overload
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, GuardedResult]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        return guard(fn, self.layer)


@decorator(FallbackOptions, lambda options: _FallbackDecorator(FallbackLayer(options)))
def fallback() -> None:
    """Return `value` (or `handler(failure, *args, **kwargs)`) when the call is not verified.

    The decorated function then returns a `GuardedResult` on every path: `source="verified"`
    with the answer QWED admitted, `source="fallback"` with the fallback value, `verified=False`,
    `confidence=0.0` and a `reason`, or `source="unchecked"` for a plain value with no verdict
    (see `VerdictRules.plain`). `VerificationFailed`, unverified results and ordinary
    exceptions fall back; `KeyboardInterrupt`, `SystemExit`, cancellation and `AuditError` do not.
    The parameters, their bounds and docs are `FallbackOptions`'s fields.
    """
