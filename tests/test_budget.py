"""`@retry_budget`: retries capped at a share of the calls over a sliding window."""

from __future__ import annotations

from typing import Any

import pytest

from qwed_guard import Policy, VerificationFailed, retry, retry_budget
from qwed_guard.clock import FakeClock
from qwed_guard.errors import ParameterError
from qwed_guard.hooks import GaveUp
from qwed_guard.layer import observed


class Provider:
    def __init__(self) -> None:
        self.requests = 0
        self.failing = False

    def __call__(self) -> Any:
        self.requests += 1
        if self.failing:
            raise ConnectionError("503 Service Unavailable")
        return "ok"


def test_retries_stay_under_their_share_of_the_calls(fake_clock: FakeClock) -> None:
    provider = Provider()
    reasons: list[str] = []

    def hook(ctx: Any) -> Any:
        return lambda event: reasons.append(event.reason) if isinstance(event, GaveUp) else None

    @observed(hook)
    @retry_budget(ratio=0.2, min_per_second=0, window=10)
    @retry(max_tries=3, base=0, jitter=None)
    def verify() -> Any:
        return provider()

    for _ in range(50):
        assert verify() == "ok"
    provider.failing = True
    failures = []
    for _ in range(10):
        with pytest.raises(VerificationFailed) as caught:
            verify()
        failures.append(caught.value)
    # The n-th failing call has seen 50 + n calls, which allow 10 + n/5 retries: the first five
    # get their 2 each, the sixth one (11 <= 11.2), the next three none, the tenth one (12).
    assert [len(f.attempts) for f in failures] == [3, 3, 3, 3, 3, 2, 1, 1, 1, 2]
    assert provider.requests == 50 + 10 + 12
    assert [f.reason for f in failures[6:9]] == [
        f"retry budget spent: 11 retries for {calls} calls in the last 10 s "
        "(allowed: 20% of the calls + 0/s)"
        for calls in (57, 58, 59)
    ]
    assert reasons[:5] == ["max_tries=3 reached"] * 5
    assert reasons[5].startswith("retry budget spent: 11 retries for 56 calls")
    assert reasons[9].startswith("retry budget spent: 12 retries for 60 calls")
    budget = verify.find_layer("retry_budget").budget  # type: ignore[attr-defined]
    assert budget.snapshot() == {"key": budget.key, "calls": 60, "retries": 12, "allowed": 12}

    fake_clock.advance(20)  # two windows later the old calls and retries are forgotten
    assert budget.snapshot()["calls"] == 0
    with pytest.raises(VerificationFailed) as caught:
        verify()
    assert len(caught.value.attempts) == 1  # 1 call allows 0.2 retries: none


def test_the_window_slides(fake_clock: FakeClock) -> None:
    provider = Provider()

    @retry_budget(ratio=0.5, min_per_second=0, window=10)
    @retry(max_tries=2, base=0, jitter=None)
    def verify() -> Any:
        return provider()

    for _ in range(20):
        verify()
    fake_clock.advance(15)  # half-way into the next window: the last one counts for half
    budget = verify.find_layer("retry_budget").budget  # type: ignore[attr-defined]
    assert budget.snapshot()["calls"] == pytest.approx(10)
    provider.failing = True
    tries = []
    for _ in range(12):
        with pytest.raises(VerificationFailed) as caught:
            verify()
        tries.append(len(caught.value.attempts))
    # The k-th failing call sees 10 + k calls, allowing 5 + k/2 retries: the first ten are
    # retried, the 11th is not (11 > 10.5), the 12th is (11 <= 11). Counted in full, the old
    # window would have allowed them all.
    assert tries == [2] * 10 + [1, 2]


def test_min_per_second_lets_a_quiet_function_retry(fake_clock: FakeClock) -> None:
    provider = Provider()
    provider.failing = True

    @retry_budget(ratio=0, min_per_second=0.2, window=10)  # 2 retries per 10 s, whatever else
    @retry(max_tries=5, base=0, jitter=None)
    def verify() -> Any:
        return provider()

    with pytest.raises(VerificationFailed) as caught:
        verify()
    assert len(caught.value.attempts) == 3


def test_functions_sharing_a_key_share_a_budget(fake_clock: FakeClock) -> None:
    provider = Provider()

    @retry_budget(ratio=0.5, min_per_second=0, key="shared-budget")
    @retry(max_tries=2, base=0, jitter=None)
    def first() -> Any:
        return provider()

    @retry_budget(ratio=0.5, min_per_second=0, key="shared-budget")
    @retry(max_tries=2, base=0, jitter=None)
    def second() -> Any:
        return provider()

    for _ in range(10):
        first()
    provider.failing = True
    retried = 0
    for _ in range(10):
        with pytest.raises(VerificationFailed) as caught:
            second()
        retried += len(caught.value.attempts) - 1
    assert retried == 10  # 20 calls between them allow 10


async def test_async_calls_use_the_budget(fake_clock: FakeClock) -> None:
    provider = Provider()
    provider.failing = True

    @retry_budget(ratio=0, min_per_second=0.1, window=10)
    @retry(max_tries=5, base=0, jitter=None)
    async def verify() -> Any:
        return provider()

    with pytest.raises(VerificationFailed) as caught:
        await verify()
    assert len(caught.value.attempts) == 2
    assert caught.value.reason is not None
    assert caught.value.reason.startswith("retry budget spent")


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": "0.2"}, "ratio"),
        ({"min_per_second": float("nan")}, "min_per_second"),
        ({"window": 0}, "window"),
        ({"key": ""}, "key"),
        ({"state": "mysql://x"}, "state"),
    ],
)
def test_parameters_are_checked(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ParameterError, match=problem):
        retry_budget(**params)


def test_policy_section() -> None:
    policy = Policy(
        {"retry": {"max_tries": 3}, "attempt_timeout": {"seconds": 1}, "retry_budget": {}}
    )
    assert "retry_budget(ratio=0.2; min_per_second=1; window=10 s)" in policy.describe()
    with pytest.raises(Exception, match=r"retry_budget\.ratio: must be >= 0"):
        Policy({"retry_budget": {"ratio": -1}})
    with pytest.raises(Exception, match="did you mean 'window'"):
        Policy({"retry_budget": {"windw": 3}})
