"""@fallback: GuardedResult on every path, never verified when it falls back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from qwed_sdk.qwed_local import VerificationResult

from qwed_guard import (
    AuditError,
    Failure,
    FallbackError,
    GuardedResult,
    Outcome,
    fallback,
    retry,
)
from qwed_guard.clock import FakeClock

OVERLOADED = "LLM call failed: Error code: 503 - The server is overloaded or not ready yet."


def ok(value: str = "100") -> VerificationResult:
    return VerificationResult(
        verified=True, value=value, confidence=1.0, evidence={"method": "sympy_eval_safe"}
    )


def test_verified_result_keeps_qwed_fields() -> None:
    @fallback(value=90.0)
    def interest(query: str) -> VerificationResult:
        return ok("100")

    result = interest("Calculate 10% interest on $1000")
    assert isinstance(result, GuardedResult)
    assert (result.verified, result.value, result.confidence, result.source) == (
        True,
        "100",
        1.0,
        "verified",
    )
    assert result.evidence == {"method": "sympy_eval_safe"}
    assert result.reason is None and result.outcome is Outcome.VERIFIED and result.attempts == 1


def test_unverified_result_falls_back_and_is_never_verified() -> None:
    wrong = VerificationResult(verified=False, value="120", confidence=0.0)

    @fallback(value=90.0)
    def interest(query: str) -> VerificationResult:
        return wrong

    result = interest("q")
    assert (result.verified, result.value, result.confidence, result.source) == (
        False,
        90.0,
        0.0,
        "fallback",
    )
    assert result.outcome is Outcome.REFUTED
    assert result.reason == "refuted"
    assert result.result is wrong


def test_exhausted_retries_fall_back_with_reason_and_attempts(fake_clock: FakeClock) -> None:
    @fallback(value=90.0)
    @retry(max_tries=3, jitter=None)
    def interest(query: str) -> VerificationResult:
        return VerificationResult(verified=False, error=OVERLOADED)

    result = interest("q")
    assert result.source == "fallback" and not result.verified
    assert result.attempts == 3
    assert result.outcome is Outcome.TRANSIENT
    assert result.reason == f"transient: {OVERLOADED}"
    assert result.error == OVERLOADED
    assert fake_clock.waits == [1.0, 2.0]


def test_ordinary_exceptions_fall_back() -> None:
    @fallback(value=0)
    def broken(query: str) -> VerificationResult:
        raise RuntimeError("disk on fire")

    result = broken("q")
    assert result.source == "fallback"
    assert result.outcome is Outcome.PERMANENT
    assert "RuntimeError: disk on fire" in (result.reason or "")


def test_a_plain_value_passes_through_unverified() -> None:
    @fallback(value=0.0)
    def compute(query: str) -> float:
        return 12.5

    # No verdict: the value is the function's, labelled unchecked, never verified.
    assert compute("q") == GuardedResult(
        verified=False,
        value=12.5,
        confidence=None,
        source="unchecked",
        outcome=Outcome.UNCHECKED,
        result=12.5,
    )


def test_handler_gets_the_failure_and_the_arguments() -> None:
    seen: list[tuple[Failure, tuple[Any, ...], dict[str, Any]]] = []

    def conservative(failure: Failure, query: str, *, rate: float) -> float:
        seen.append((failure, (query,), {"rate": rate}))
        return 0.0 if "interest" in query else -1.0

    @fallback(handler=conservative)
    def compute(query: str, *, rate: float) -> VerificationResult:
        return VerificationResult(verified=False, error="SymPy verification failed: nope")

    result = compute("interest on $5", rate=0.1)
    assert result.value == 0.0
    failure, args, kwargs = seen[0]
    assert failure.outcome is Outcome.UNVERIFIABLE
    assert failure.error == "SymPy verification failed: nope"
    assert args == ("interest on $5",) and kwargs == {"rate": 0.1}


def test_a_raising_handler_surfaces() -> None:
    def broken(failure: Failure, query: str) -> float:
        raise LookupError("no table")

    @fallback(handler=broken)
    def compute(query: str) -> VerificationResult:
        return VerificationResult(verified=False)

    with pytest.raises(FallbackError, match="raised LookupError: no table") as caught:
        compute("q")
    assert isinstance(caught.value.__cause__, LookupError)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_interrupts_are_never_swallowed(error: BaseException) -> None:
    @fallback(value=0)
    def compute(query: str) -> VerificationResult:
        raise error

    with pytest.raises(type(error)):
        compute("q")


def test_audit_errors_are_never_swallowed() -> None:
    @fallback(value=0)
    def compute(query: str) -> VerificationResult:
        raise AuditError("disk full")

    with pytest.raises(AuditError):
        compute("q")


async def test_async_paths_and_cancellation() -> None:
    @fallback(value=1)
    async def refuted(query: str) -> VerificationResult:
        await asyncio.sleep(0)
        return VerificationResult(verified=False)

    assert (await refuted("q")).source == "fallback"

    async def handler(failure: Failure, query: str) -> int:
        await asyncio.sleep(0)
        return len(query)

    @fallback(handler=handler)
    async def broken(query: str) -> VerificationResult:
        raise ConnectionError("down")

    result = await broken("four")
    assert (result.value, result.outcome) == (4, Outcome.TRANSIENT)

    started = asyncio.Event()

    @fallback(value=0)
    async def hangs(query: str) -> VerificationResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(hangs("q"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_async_handler_on_sync_function_is_a_clear_error() -> None:
    async def handler(failure: Failure, query: str) -> int:
        return 0

    @fallback(handler=handler)
    def compute(query: str) -> VerificationResult:
        return VerificationResult(verified=False)

    with pytest.raises(FallbackError, match="async fallback handler"):
        compute("q")


def test_methods() -> None:
    class Calculator:
        floor = 7.0

        @fallback(handler=lambda failure, self, query: self.floor)
        def compute(self, query: str) -> VerificationResult:
            return VerificationResult(verified=False)

    assert Calculator().compute("q").value == 7.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "exactly one of value"),
        ({"value": 1, "handler": lambda f: 1}, ValueError, "exactly one of value"),
        ({"handler": 3}, TypeError, "handler: must be callable"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fallback(**kwargs)


def test_the_raw_result_stays_out_of_the_repr() -> None:
    raw = VerificationResult(verified=False, error="Incorrect API key provided: sk-proj-****abcd")

    @fallback(value=0)
    def compute(query: str) -> VerificationResult:
        return raw

    result = compute("q")
    assert result.result is raw
    assert "sk-proj" not in repr(result)
