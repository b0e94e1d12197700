"""The exceptions qwed_guard raises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qwed_guard.outcomes import Outcome
from qwed_guard.redact import scrub

if TYPE_CHECKING:
    from qwed_guard.hooks import Attempt

__all__ = [
    "MAX_COUNT",
    "AuditError",
    "FallbackError",
    "ParameterError",
    "PolicyError",
    "QwedGuardError",
    "VerificationFailed",
    "bad_parameter",
]


class QwedGuardError(Exception):
    """Base class of every error qwed_guard raises. Its message is scrubbed of secrets: it
    may quote a provider's error, a handler's exception or a URL someone configured."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(arg) if isinstance(arg, str) else arg for arg in args))


class VerificationFailed(QwedGuardError):
    """A guarded call could not be verified: retries ran out, the deadline passed, or the
    failure was permanent.

    Carries every attempt and the last result (or, chained as `__cause__`, the last exception).
    """

    def __init__(
        self,
        function: str,
        attempts: Sequence[Attempt],
        *,
        last_result: Any = None,
        last_exception: BaseException | None = None,
        reason: str | None = None,
    ) -> None:
        self.function = function
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        self.last_result = last_result
        self.last_exception = last_exception
        last = self.attempts[-1] if self.attempts else None
        self.outcome: Outcome = last.outcome if last is not None else Outcome.PERMANENT
        self.error: str | None = last.error if last is not None else None
        self.reason = reason
        count = len(self.attempts)
        text = f"{function}: not verified after {count} attempt{'s' if count != 1 else ''}"
        text += f" (last outcome: {self.outcome.value}"
        text += f"; {self.error})" if self.error else ")"
        if reason:
            text += f"; {reason}"
        super().__init__(text)


class FallbackError(QwedGuardError):
    """The fallback handler itself raised: surfaced, never hidden behind another fallback."""


class PolicyError(QwedGuardError, ValueError):
    """A policy (or decorator arguments given as data) is invalid; the message names each field.

    `errors` lists every problem found, one `dotted.path: why` line each.
    """

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(scrub(e) for e in errors) or (str(self),)


class AuditError(QwedGuardError):
    """The audit sink could not record a call; raised so no unaudited result is returned."""


class ParameterError(QwedGuardError, ValueError):
    """A decorator argument is invalid; `param` names it so a policy can report its path.

    `errors` lists every problem found, one `param: why` line each (the first is `param`'s).
    """

    def __init__(self, param: str, problem: str, errors: Sequence[str] = ()) -> None:
        self.param = param
        self.problem = scrub(problem)
        first = f"{param}: {problem}"
        super().__init__("\n  ".join([first, *errors[1:]]))
        self.errors: tuple[str, ...] = tuple(scrub(e) for e in errors) or (scrub(first),)


class ParameterTypeError(ParameterError, TypeError):
    """A decorator argument has the wrong type."""


def bad_parameter(
    param: str, problem: str, *, wrong_type: bool = False, errors: Sequence[str] = ()
) -> ParameterError:
    """The error to raise at decoration time for a bad argument (`raise bad_parameter(...)`)."""
    return (ParameterTypeError if wrong_type else ParameterError)(param, problem, errors)


MAX_COUNT = 10_000_000
"""The largest count a decorator argument may give."""
