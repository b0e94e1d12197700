"""The classifier: QWED results, SDK and transport exceptions, Retry-After, scrubbing."""

from __future__ import annotations

import email.utils
from typing import Any

import httpx
import httpx2
import openai
import pytest
from qwed_sdk.qwed_local import VerificationResult

from qwed_guard import Diagnosis, Outcome, classify, diagnose
from qwed_guard.outcomes import WireFailure, parse_retry_after, register_secret, scrub

# Error strings exactly as QWEDLocal 8.0 builds them from openai 3.x exceptions.
OVERLOADED = "LLM call failed: Error code: 503 - The server is overloaded or not ready yet."
RATE_LIMITED = (
    "LLM call failed: Error code: 429 - Rate limit reached for gpt-4o-mini in organization "
    "org-sim on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s."
)
QUOTA = (
    "LLM call failed: Error code: 429 - You exceeded your current quota, please check your "
    "plan and billing details. For more information on this error, read the docs."
)
BAD_KEY = (
    "LLM call failed: Error code: 401 - Incorrect API key provided: sk-proj-****...abcd. "
    "You can find your API key at https://platform.openai.com/account/api-keys."
)


def qwed(error: str | None, verified: bool = False) -> VerificationResult:
    return VerificationResult(verified=verified, value="4" if verified else None, error=error)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (OVERLOADED, Outcome.TRANSIENT),
        ("LLM call failed: Error code: 500 - The server had an error", Outcome.TRANSIENT),
        ("LLM call failed: Error code: 502 - Bad gateway.", Outcome.TRANSIENT),
        ("LLM call failed: Error code: 408 - Request Timeout", Outcome.TRANSIENT),
        ("LLM call failed: Error code: 409 - Conflict", Outcome.TRANSIENT),
        (RATE_LIMITED, Outcome.TRANSIENT),
        (QUOTA, Outcome.PERMANENT),
        (BAD_KEY, Outcome.PERMANENT),
        ("LLM call failed: Error code: 400 - Invalid request", Outcome.PERMANENT),
        ("LLM call failed: Error code: 403 - Forbidden", Outcome.PERMANENT),
        ("LLM call failed: Error code: 404 - The model does not exist", Outcome.PERMANENT),
        ("LLM call failed: Error code: 422 - Unprocessable", Outcome.PERMANENT),
        ("LLM call failed: Connection error.", Outcome.TRANSIENT),
        ("LLM call failed: Request timed out.", Outcome.TRANSIENT),
        ("LLM call failed: Unterminated string starting at: line 1 column 9", Outcome.TRANSIENT),
        ("LLM call failed: Expecting value: line 1 column 1 (char 0)", Outcome.TRANSIENT),
        ("SymPy verification failed: invalid syntax", Outcome.UNVERIFIABLE),
        ("SymPy not installed. Run: pip install sympy", Outcome.PERMANENT),
        ("LLM call failed: something nobody has seen before", Outcome.PERMANENT),
    ],
)
def test_qwed_error_strings(error: str, outcome: Outcome) -> None:
    assert classify(qwed(error)) is outcome


def test_verified_refuted_and_plain_values() -> None:
    assert classify(qwed(None, verified=True)) is Outcome.VERIFIED
    assert classify(qwed(None)) is Outcome.REFUTED
    # A plain value carries no verdict: it passes through as unchecked, never verified.
    assert classify(42) is Outcome.UNCHECKED


def test_wire_failure_makes_the_classification_exact() -> None:
    # The SDK's text says only "429"; the recorded body says the quota is gone.
    quota_text = "LLM call failed: Error code: 429 - Please check your plan."
    assert diagnose(qwed(quota_text)).outcome is Outcome.TRANSIENT
    wire = WireFailure(429, "insufficient_quota", "quota", None)
    assert diagnose(qwed(quota_text), wire=wire).outcome is Outcome.PERMANENT
    wire = WireFailure(429, "rate_limit_exceeded", "slow down", 2.5)
    found = diagnose(qwed(RATE_LIMITED), wire=wire)
    assert (found.outcome, found.status, found.code, found.retry_after) == (
        Outcome.TRANSIENT,
        429,
        "rate_limit_exceeded",
        2.5,
    )


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return httpx2.Response(status, json=body, headers=headers or {}, request=request)


def test_openai_exceptions() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    overloaded = openai.InternalServerError(
        "Error code: 503", response=_response(503, headers={"retry-after": "7"}), body=None
    )
    found = diagnose(overloaded)
    assert (found.outcome, found.status, found.retry_after) == (Outcome.TRANSIENT, 503, 7.0)
    quota_body = {"message": "You exceeded your current quota", "code": "insufficient_quota"}
    quota = openai.RateLimitError("Error code: 429", response=_response(429), body=quota_body)
    assert classify(quota) is Outcome.PERMANENT
    limited = openai.RateLimitError(
        "Error code: 429", response=_response(429), body={"code": "rate_limit_exceeded"}
    )
    assert classify(limited) is Outcome.TRANSIENT
    unauthorized = openai.AuthenticationError("401", response=_response(401), body=None)
    assert classify(unauthorized) is Outcome.PERMANENT
    assert classify(openai.APIConnectionError(request=request)) is Outcome.TRANSIENT
    assert classify(openai.APITimeoutError(request=request)) is Outcome.TRANSIENT


def test_transport_and_standard_exceptions() -> None:
    assert classify(httpx2.ConnectTimeout("slow")) is Outcome.TRANSIENT
    assert classify(httpx.ConnectError("refused")) is Outcome.TRANSIENT
    assert classify(httpx.RemoteProtocolError("cut")) is Outcome.TRANSIENT
    assert classify(TimeoutError()) is Outcome.TRANSIENT
    assert classify(ConnectionRefusedError()) is Outcome.TRANSIENT
    status_error = httpx.HTTPStatusError(
        "boom",
        request=httpx.Request("GET", "http://127.0.0.1/"),
        response=httpx.Response(502, request=httpx.Request("GET", "http://127.0.0.1/")),
    )
    assert classify(status_error) is Outcome.TRANSIENT
    assert classify(ValueError("bad input")) is Outcome.PERMANENT
    assert classify(KeyError("x")) is Outcome.PERMANENT


def test_custom_classifier_wins() -> None:
    def lenient(obj: Any) -> Outcome:
        return Outcome.TRANSIENT if isinstance(obj, ValueError) else Outcome.PERMANENT

    assert diagnose(ValueError("flaky"), classifier=lenient).outcome is Outcome.TRANSIENT
    detailed = diagnose(1, classifier=lambda _: Diagnosis(Outcome.TRANSIENT, retry_after=3.0))
    assert detailed.retry_after == 3.0
    # A classifier that answers nonsense fails closed, saying why.
    nonsense = diagnose(1, classifier=lambda _: "transient")
    assert nonsense.outcome is Outcome.UNVERIFIABLE and nonsense.final
    assert "expected an Outcome, a Diagnosis or a bool" in (nonsense.error or "")


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "4"}) == 4.0
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: sk-proj-abcdefghijklmnop", "sk-proj-abcdefghijklmnop"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("posting to https://user:hunter2@example.test/x failed", "hunter2"),
        ("state at redis://:hunter22@cache:6379/0 unreachable", "hunter22"),
        ("slack https://hooks.slack.com/services/T000/B000/XXXXSECRET", "XXXXSECRET"),
        ("https://example.test/cb?token=abc123secret&x=1", "abc123secret"),
        ('{"routing_key": "0123456789abcdef0123456789abcdef"}', "0123456789abcdef"),
    ],
)
def test_scrub_removes_secrets(text: str, secret: str) -> None:
    assert secret not in scrub(text)


def test_registered_secrets_are_scrubbed_and_errors_carry_scrubbed_text() -> None:
    register_secret("canary-password-77")
    assert "canary-password-77" not in scrub("login failed for canary-password-77")
    found = diagnose(qwed(BAD_KEY))
    assert found.error is not None
    assert "sk-proj" not in found.error
    assert found.status == 401
