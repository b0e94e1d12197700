"""The breaker in front of a real provider: the simulator's outage, QWEDLocal, the whole stack."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

from qwed_guard import clock, fallback, guarded_client, retry
from qwed_guard.breaker import BreakerState, circuit_breaker
from qwed_guard.clock import FakeClock
from qwed_guard.outcomes import Outcome
from qwed_guard.sim import SimulatedLLM

QUESTION = "What is 15% of 200?"
RECOVERY = 10.0
OUTAGE = 60.0


def requests_served(llm: SimulatedLLM) -> int:
    stats: dict[str, Any] = httpx.get(f"{llm.url}/stats", timeout=5).json()
    return int(stats["requests"])


def test_outage_falls_back_fast_without_requests_and_recovers(fake_clock: FakeClock) -> None:
    with SimulatedLLM(profile="healthy", seed=1) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5)

        @fallback(value=30.0)
        @retry(max_tries=3, jitter=None)
        @circuit_breaker(failure_threshold=3, recovery_timeout=RECOVERY)
        def ask(query: str) -> Any:
            return client.verify_math(query)

        assert ask(QUESTION).source == "verified"
        llm.outage(OUTAGE)
        outage_end = clock.monotonic() + OUTAGE

        # The first call's three attempts fail and open the breaker.
        first = ask(QUESTION)
        assert (first.source, first.outcome) == ("fallback", Outcome.TRANSIENT)
        assert ask.breaker.state is BreakerState.OPEN

        # Then one call per second of (fake) time until the breaker has closed again.
        short_circuited: list[float] = []
        probes = 0
        requests_during_outage = requests_served(llm)
        while ask.breaker.state is not BreakerState.CLOSED:
            assert clock.monotonic() < outage_end + 2 * RECOVERY, "the breaker never closed"
            fake_clock.advance(1.0)
            before = llm.stats()["requests"]
            started = time.perf_counter()
            result = ask(QUESTION)
            elapsed = time.perf_counter() - started
            if result.attempts == 1 and result.outcome is Outcome.SHORT_CIRCUITED:
                assert llm.stats()["requests"] == before  # no HTTP request at all
                assert result.source == "fallback"
                assert result.value == 30.0
                short_circuited.append(elapsed)
            else:
                probes += 1
        closed_at = clock.monotonic()
        requests_during_outage = requests_served(llm) - requests_during_outage

        # It closed after the outage ended, within recovery_timeout plus one probe (the calls
        # come once a second, so "one probe" is at most one second late).
        assert outage_end < closed_at <= outage_end + RECOVERY + 1.0
        assert result.source == "verified"
        # Most calls while it was down, and only the few probes reached the provider:
        # one request each while the outage lasted, two (answer and expression) for the last.
        assert len(short_circuited) >= 40
        assert probes == (ask.breaker.opened - 1) + 1
        assert requests_during_outage == (probes - 1) + 2
        median = statistics.median(short_circuited)
        print(
            f"short-circuited calls: {len(short_circuited)}, median {median * 1e6:.0f} us, "
            f"max {max(short_circuited) * 1e6:.0f} us; probes {probes}"
        )
        assert median < 0.005  # well under 1 ms on a quiet machine; CI-safe bound


async def test_async_stack_short_circuits_during_the_outage(fake_clock: FakeClock) -> None:
    with SimulatedLLM(profile="healthy", seed=2) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5)
        calls = 0

        @fallback(value=-1)
        @retry(max_tries=2, jitter=None)
        @circuit_breaker(failure_threshold=2, recovery_timeout=RECOVERY)
        async def ask(query: str) -> Any:
            nonlocal calls
            calls += 1
            return client.verify_math(query)  # QWEDLocal is synchronous; fine for a test

        llm.outage(5)
        assert (await ask(QUESTION)).outcome is Outcome.TRANSIENT
        before = llm.stats()["requests"]
        for _ in range(20):
            result = await ask(QUESTION)
            assert (result.value, result.outcome) == (-1, Outcome.SHORT_CIRCUITED)
        assert llm.stats()["requests"] == before
        assert calls == 2
        fake_clock.advance(RECOVERY)
        assert (await ask(QUESTION)).source == "verified"
        assert ask.breaker.state is BreakerState.CLOSED


def _preset_breaker_opens(circuit_breaker_override: dict[str, Any], calls: int) -> int:
    from qwed_guard import Policy
    from qwed_guard.sim import sample_questions

    with SimulatedLLM(profile="flaky", seed=3) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5)
        policy = Policy.preset(
            "production",
            fallback_value=None,
            audited={"sink": "memory:"},
            alert_on_failures={"notify": []},
            circuit_breaker=circuit_breaker_override,
        )

        @policy
        def ask(query: str) -> Any:
            return client.verify_math(query)

        for question in sample_questions(calls, seed=3):
            ask(question.text)
        opened: int = ask.breaker.opened
        return opened


def test_the_production_breaker_stays_closed_under_a_flaky_provider(
    fake_clock: FakeClock,
) -> None:
    # One request in four fails (about 44% of attempts): no outage, so the preset's breaker
    # (80% of the last 50 attempts) must not open; "5 failed attempts in a row" would.
    assert _preset_breaker_opens({}, 300) == 0
    assert _preset_breaker_opens({"failure_threshold": 5, "failure_rate": None}, 300) > 0
