"""One classifier for every attempt: what happened, whether it may heal, and how long to wait.

QWEDLocal never raises: a 503, a bad key and a wrong answer all come back as a
`VerificationResult` with `verified=False`, told apart only by its `error` string. This module
turns results, exceptions and (when the guarded client recorded them) the failing HTTP responses
behind them into one `Outcome`, with any server-given Retry-After.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The scrubber lives in `qwed_guard.redact`; these names stay importable from here.
from qwed_guard.redact import register_secret as register_secret
from qwed_guard.redact import scrub as scrub

__all__ = [
    "ANSWERED",
    "Classifier",
    "Diagnosis",
    "Outcome",
    "WireFailure",
    "diagnose_exception",
    "error_text_diagnosis",
    "parse_retry_after",
    "scrub",
]


class Outcome(enum.StrEnum):
    """How one attempt (or a whole call) ended."""

    VERIFIED = "verified"
    """The symbolic check agreed with the answer."""
    REFUTED = "refuted"
    """The check ran and disagreed: the model answered wrongly."""
    UNVERIFIABLE = "unverifiable"
    """The check could not run on what the model gave."""
    TRANSIENT = "transient"
    """Infrastructure failed in a way that may heal (5xx, 408, 409, 429, connection, timeout)."""
    PERMANENT = "permanent"
    """Retrying cannot help (bad key, quota, bad request, SymPy missing, unknown errors)."""
    SHORT_CIRCUITED = "short_circuited"
    """The circuit breaker is open: no call was made."""
    UNCHECKED = "unchecked"
    """The function returned a plain value that carries no verdict: passed through as it is,
    never reported verified (`VerdictRules(plain="fail")` makes it a failure instead)."""

    def __str__(self) -> str:
        return self.value


ANSWERED: frozenset[Outcome] = frozenset({Outcome.VERIFIED, Outcome.UNCHECKED})
"""Outcomes of a call that worked: nothing to retry, count or replace. Only VERIFIED is verified."""


@dataclass(frozen=True, slots=True)
class WireFailure:
    """A failing HTTP response as the guarded client saw it, before the SDK reduced it to text."""

    status: int
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """An outcome plus what is known about why: scrubbed error text, status, code, wait."""

    outcome: Outcome
    error: str | None = None
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    final: bool = False
    """A deterministic check refused: asking again gives the same answer, so retry stops and
    the circuit breaker does not count it as a provider failure."""


Classifier = Callable[[Any], "Outcome | Diagnosis"]
"""A user classifier: takes a result or an exception, returns an Outcome or a Diagnosis."""


_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_QUOTA_MARKERS = ("insufficient_quota", "exceeded your current quota", "billing_hard_limit")
_STATUS_IN_TEXT = re.compile(r"Error code: (\d{3})")
_TRANSIENT_TEXT = re.compile(
    r"connection error|timed out|timeout|connection refused|connection reset|"
    r"server disconnected|temporarily unavailable|invalid json|"
    # A garbled 200 body (JSONDecodeError text): the next response is usually whole.
    r"expecting value|expecting property name|unterminated string|extra data|"
    r"invalid control character|"
    r"remote ?protocol|read error|broken pipe",
    re.IGNORECASE,
)
_TRANSIENT_EXCEPTION_NAMES = frozenset(
    {
        # openai / anthropic SDKs
        "APIConnectionError",
        "APITimeoutError",
        "InternalServerError",
        # httpx and httpx2
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "RemoteProtocolError",
        # A garbled 200 body raised by an SDK, as the text rule above reads it from QWEDLocal.
        "JSONDecodeError",
    }
)


def _status_outcome(status: int, code: str | None, text: str) -> Outcome:
    if status == 429 or status == 403:
        lowered = f"{code or ''} {text}".lower()
        if any(marker in lowered for marker in _QUOTA_MARKERS):
            return Outcome.PERMANENT
    if status in _TRANSIENT_STATUS or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def _from_wire(wire: WireFailure, error: str | None) -> Diagnosis:
    outcome = _status_outcome(wire.status, wire.code, wire.message or "")
    return Diagnosis(outcome, error, wire.status, wire.code, wire.retry_after)


# QWEDLocal's error texts that are not transport failures, and what each means. Every method's
# texts are tabulated in tests/test_verdicts.py.
_ERROR_PREFIXES: tuple[tuple[str, Outcome, bool], ...] = (
    # (prefix, outcome, final): the check could not run on what the LLM gave: ask again.
    ("SymPy verification failed", Outcome.UNVERIFIABLE, False),
    ("Z3 verification failed", Outcome.UNVERIFIABLE, False),
    # CodeVerifier raised on this code: the same code raises again.
    ("Code analysis failed", Outcome.UNVERIFIABLE, True),
    ("Only Python supported", Outcome.PERMANENT, True),
    ("CodeVerifier is not available", Outcome.PERMANENT, True),
)


def error_text_diagnosis(error: str, wire: WireFailure | None) -> Diagnosis:
    """Classify QWEDLocal's `error` string, preferring what the wire recorded."""
    scrubbed = scrub(error)
    for prefix, outcome, final in _ERROR_PREFIXES:
        if error.startswith(prefix):
            return Diagnosis(outcome, scrubbed, final=final)
    if "not installed" in error:
        return Diagnosis(Outcome.PERMANENT, scrubbed)
    if wire is not None:
        return _from_wire(wire, scrubbed)
    match = _STATUS_IN_TEXT.search(error)
    if match is not None:
        status = int(match.group(1))
        outcome = _status_outcome(status, None, error)
        quota = status == 429 and outcome is Outcome.PERMANENT
        return Diagnosis(outcome, scrubbed, status, "insufficient_quota" if quota else None)
    if _TRANSIENT_TEXT.search(error):
        return Diagnosis(Outcome.TRANSIENT, scrubbed)
    return Diagnosis(Outcome.PERMANENT, scrubbed)


def _exception_names(exc: BaseException) -> Iterable[str]:
    return (cls.__name__ for cls in type(exc).__mro__)


def diagnose_exception(exc: BaseException, wire: WireFailure | None) -> Diagnosis:
    """Classify an exception from openai, httpx, the standard library or qwed_guard."""
    # Our own errors carry their outcome (VerificationFailed, CircuitOpen).
    carried = getattr(exc, "outcome", None)
    if isinstance(carried, Outcome):
        return Diagnosis(carried, scrub(str(exc)))
    text = scrub(f"{type(exc).__name__}: {exc}")
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int):
        code = getattr(exc, "code", None)
        code = code if isinstance(code, str) else None
        body = getattr(exc, "body", None)
        if code is None and isinstance(body, Mapping):
            code = _error_code(body)
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        retry_after = parse_retry_after(headers) if headers is not None else None
        if wire is not None and wire.status == status:
            code = code or wire.code
            retry_after = retry_after if retry_after is not None else wire.retry_after
        return Diagnosis(_status_outcome(status, code, str(exc)), text, status, code, retry_after)
    names = set(_exception_names(exc))
    if names & _TRANSIENT_EXCEPTION_NAMES or isinstance(exc, (TimeoutError, ConnectionError)):
        return Diagnosis(Outcome.TRANSIENT, text)
    if wire is not None:
        return _from_wire(wire, text)
    return Diagnosis(Outcome.PERMANENT, text)


def _error_code(body: Mapping[str, Any]) -> str | None:
    """The machine-readable code of an OpenAI-style error body, if any."""
    inner = body.get("error", body)
    if isinstance(inner, Mapping):
        for field in ("code", "type"):
            value = inner.get(field)
            if isinstance(value, str) and value:
                return value
    return None


def parse_retry_after(
    headers: Mapping[str, str] | Any, *, now: float | None = None
) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, `retry-after` seconds or HTTP date."""
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    millis = getter("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        # `nan` and `inf` parse as floats: never let one reach a sleep or a record.
        if math.isfinite(value) and value >= 0:
            return value
    raw = getter("retry-after")
    if raw is None:
        return None
    raw = str(raw).strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    reference = time.time() if now is None else now
    return max(when.timestamp() - reference, 0.0)
