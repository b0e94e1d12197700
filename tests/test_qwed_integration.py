"""@retry and @fallback around the real QWEDLocal and openai SDK, over HTTP on 127.0.0.1.

Each case runs twice where it can: through `guarded_client` (classified from the recorded HTTP
response) and through a plain `QWEDLocal(..., max_retries=0)` (classified from the error text
alone). The simulator's counters say what really crossed the wire.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from qwed_sdk import QWEDLocal

from qwed_guard import (
    Outcome,
    VerificationFailed,
    audited,
    fallback,
    guarded_client,
    retry,
)
from qwed_guard.clock import FakeClock
from qwed_guard.sim import Reply, SimulatedLLM
from tests.trails import attempts_of

BuildClient = Callable[[str, str], Any]


def _guarded(base_url: str, model: str) -> Any:
    return guarded_client(base_url=base_url, model=model, timeout=5.0)


def _plain(base_url: str, model: str) -> Any:
    return QWEDLocal(base_url=base_url, model=model, max_retries=0, cache=False)


@pytest.fixture(params=[_guarded, _plain], ids=["guarded_client", "plain_qwedlocal"])
def build(request: pytest.FixtureRequest) -> BuildClient:
    builder: BuildClient = request.param
    return builder


def _verifier(client: Any, **retry_args: Any) -> Callable[[str], Any]:
    @retry(**retry_args)
    def verify(query: str) -> Any:
        return client.verify_math(query)

    return verify


def _requests(llm: SimulatedLLM) -> int:
    return int(llm.stats()["requests"])


def test_503_twice_then_verified_on_attempt_3(build: BuildClient, fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["503", "503"]) as llm:
        verify = _verifier(build(llm.base_url, llm.model), jitter=None)
        result = verify("What is 2 + 2?")
        assert result.verified and result.value == "4"
        assert fake_clock.waits == [1.0, 2.0]
        # Two failed answer prompts, then the answer and the expression prompt.
        assert _requests(llm) == 4


def test_429_retry_after_is_honoured_unjittered(fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=[Reply.rate_limited(retry_after=2.5)]) as llm:
        verify = _verifier(_guarded(llm.base_url, llm.model))  # default full jitter
        assert verify("What is 5 * 5?").value == "25"
        assert fake_clock.waits == [2.5]
        assert _requests(llm) == 3


@pytest.mark.parametrize("reply", ["quota", "401"])
def test_quota_and_bad_key_are_tried_exactly_once(
    build: BuildClient, fake_clock: FakeClock, reply: str
) -> None:
    with SimulatedLLM(script=[reply]) as llm:
        verify = _verifier(build(llm.base_url, llm.model), max_tries=5)
        with pytest.raises(VerificationFailed) as caught:
            verify("What is 2 + 2?")
        assert caught.value.outcome is Outcome.PERMANENT
        assert len(caught.value.attempts) == 1
        assert fake_clock.waits == []
        assert _requests(llm) == 1
        # The key fragment in the 401 text never reaches our errors.
        assert "sk-proj" not in str(caught.value)


def test_guarded_client_records_the_status_and_code(fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["quota"]) as llm:
        verify = _verifier(_guarded(llm.base_url, llm.model))
        with pytest.raises(VerificationFailed) as caught:
            verify("What is 2 + 2?")
    attempt = caught.value.attempts[0]
    assert attempt.status == 429
    assert attempt.outcome is Outcome.PERMANENT


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


def test_connection_refused_is_transient_and_retried(
    build: BuildClient, fake_clock: FakeClock, closed_port: int
) -> None:
    verify = _verifier(build(f"http://127.0.0.1:{closed_port}/v1", "sim"), jitter=None)
    with pytest.raises(VerificationFailed) as caught:
        verify("What is 2 + 2?")
    assert [a.outcome for a in caught.value.attempts] == [Outcome.TRANSIENT] * 3
    assert fake_clock.waits == [1.0, 2.0]
    assert "Connection error" in (caught.value.error or "")


def test_wrong_answer_is_refuted_and_reasked(build: BuildClient, fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["wrong", "ok"]) as llm:
        verify = _verifier(build(llm.base_url, llm.model), jitter=None)
        result = verify("Calculate 15% of $200")
        assert result.verified and float(result.value) == 30.0
        assert _requests(llm) == 4
        assert fake_clock.waits == [1.0]


def test_unevaluable_expression_is_reasked(build: BuildClient, fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["ok", "unevaluable"]) as llm:
        client = build(llm.base_url, llm.model)
        attempts: list[Outcome] = []

        @retry(jitter=None)
        def verify(query: str) -> Any:
            result = client.verify_math(query)
            attempts.append(Outcome.VERIFIED if result.verified else Outcome.UNVERIFIABLE)
            return result

        assert verify("What is 5 * 5?").verified
        assert attempts == [Outcome.UNVERIFIABLE, Outcome.VERIFIED]
        assert _requests(llm) == 4


def _answer_prompts(llm: SimulatedLLM) -> int:
    return int(llm.stats()["prompts"]["answer"])


def _audited_verifier(client: Any) -> Any:
    @audited(sink="memory:")
    @retry(max_tries=3, jitter=None)
    def verify(query: str) -> Any:
        return client.verify_math(query)

    return verify


def _attempt_records(verify: Any) -> list[dict[str, Any]]:
    """The call's attempts: the failed ones' records and the answered one, inline in the call's."""
    sink = verify.find_layer("audited").sink
    return attempts_of(sink.records)


def test_a_failed_second_prompt_costs_one_more_request(fake_clock: FakeClock) -> None:
    # The answer arrives, the expression prompt gets a 503: the retry asks only for the
    # expression again, and the trail says the answer was reused.
    with SimulatedLLM(script=["ok", "503"]) as llm:
        verify = _audited_verifier(_guarded(llm.base_url, llm.model))
        result = verify("Calculate 10% interest on $1000")
        assert result.verified and float(result.value) == 100.0
        assert (_requests(llm), _answer_prompts(llm)) == (3, 1)
        first, second = _attempt_records(verify)
        assert (first["outcome"], first["status"], "reused" in first) == ("transient", 503, False)
        assert (second["outcome"], second["reused"]) == ("verified", 1)
        assert second["inline"] is True and "inline" not in first


def test_reuse_replies_off_asks_both_prompts_again(fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["ok", "503"]) as llm:
        client = guarded_client(
            base_url=llm.base_url, model=llm.model, timeout=5.0, reuse_replies=False
        )
        verify = _audited_verifier(client)
        assert verify("Calculate 10% interest on $1000").verified
        assert (_requests(llm), _answer_prompts(llm)) == (4, 2)
        assert all("reused" not in r for r in _attempt_records(verify))


def test_no_reply_outlives_a_wrong_answer(fake_clock: FakeClock) -> None:
    # Attempt 1: a wrong answer (refuted) -> attempt 2 asks afresh, and its answer arrives
    # but the expression prompt fails -> attempt 3 reuses attempt 2's answer, not attempt 1's.
    with SimulatedLLM(script=["wrong", "ok", "ok", "503"]) as llm:
        verify = _audited_verifier(_guarded(llm.base_url, llm.model))
        result = verify("Calculate 15% of $200")
        assert result.verified and float(result.value) == 30.0
        assert (_requests(llm), _answer_prompts(llm)) == (5, 2)
        outcomes = [(r["outcome"], r.get("reused", 0)) for r in _attempt_records(verify)]
        assert outcomes == [("refuted", 0), ("transient", 0), ("verified", 1)]


def test_a_malformed_reply_is_never_reused(fake_clock: FakeClock) -> None:
    with SimulatedLLM(script=["malformed", "ok"]) as llm:
        verify = _audited_verifier(_guarded(llm.base_url, llm.model))
        assert verify("What is 5 * 5?").verified
        assert (_requests(llm), _answer_prompts(llm)) == (3, 2)
        assert [r.get("reused", 0) for r in _attempt_records(verify)] == [0, 0]


def test_fallback_after_outage_keeps_the_conservative_value(
    build: BuildClient, fake_clock: FakeClock
) -> None:
    with SimulatedLLM(script=["503", "503", "503"]) as llm:
        client = build(llm.base_url, llm.model)

        @fallback(value=100.0)
        @retry(max_tries=3, jitter=None)
        def interest(query: str) -> Any:
            return client.verify_math(query)

        result = interest("Calculate 10% interest on $1000")
        assert (result.verified, result.value, result.source) == (False, 100.0, "fallback")
        assert result.outcome is Outcome.TRANSIENT and result.attempts == 3
        assert _requests(llm) == 3
        # The simulator is healthy again: the next call is verified.
        healthy = interest("Calculate 10% interest on $1000")
        assert (healthy.verified, healthy.source, float(healthy.value)) == (True, "verified", 100.0)


def test_sdk_retries_multiply_requests_unless_turned_off(fake_clock: FakeClock) -> None:
    """Why the guarded client sets max_retries=0: the SDK's own loop runs inside ours."""
    with SimulatedLLM(profile="healthy", error_5xx=1.0) as llm:
        ours = _verifier(_guarded(llm.base_url, llm.model), jitter=None)
        with pytest.raises(VerificationFailed):
            ours("What is 2 + 2?")
        assert _requests(llm) == 3
        llm.reset_stats()
        default_sdk = QWEDLocal(base_url=llm.base_url, model=llm.model, cache=False, max_retries=1)
        theirs = _verifier(default_sdk, jitter=None)
        with pytest.raises(VerificationFailed):
            theirs("What is 2 + 2?")
        assert _requests(llm) == 6


@pytest.mark.sim(script=["503"])
def test_simulated_llm_fixture_serves_the_marked_script(
    simulated_llm: SimulatedLLM, fake_clock: FakeClock
) -> None:
    verify = _verifier(_guarded(simulated_llm.base_url, simulated_llm.model), jitter=None)
    assert verify("What is 2 + 2?").verified
    assert simulated_llm.stats()["replies"]["error_503"] == 1
