"""What traces and metrics both read off a call's events: its source, outcome, error type."""

from __future__ import annotations

from typing import Any

from qwed_guard.fallback import GuardedResult
from qwed_guard.hooks import CallEnded
from qwed_guard.outcomes import ANSWERED, Outcome

_SOURCES = {Outcome.VERIFIED: "verified", Outcome.UNCHECKED: "unchecked"}


def call_source(ended: CallEnded) -> str:
    """`verified`, `fallback`, `unchecked`, `unverified` (returned unverified) or `raised`."""
    if ended.exception is not None:
        return "raised"
    result = ended.result
    if type(result) is GuardedResult:
        return str(result.source)
    return _SOURCES.get(ended.diagnosis.outcome, "unverified")


def call_outcome(ended: CallEnded) -> Outcome:
    """How the call ended (a fallback's result carries the outcome it replaced)."""
    result = ended.result
    if ended.exception is None and type(result) is GuardedResult:
        return result.outcome
    return ended.diagnosis.outcome


def error_type(outcome: Outcome, raised: Any) -> str | None:
    """The `error.type` of a failed attempt or call: the exception's class, else the outcome."""
    if isinstance(raised, BaseException):
        return type(raised).__qualname__
    return None if outcome in ANSWERED else outcome.value


def find_spec(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def code_object(value: Any) -> tuple[str, bool] | None:
    """An object given in code (a provider, a registry): plain data cannot be one."""
    if isinstance(value, (str, int, float, list, dict)):
        return "is an object given in code, not policy data", True
    return None
