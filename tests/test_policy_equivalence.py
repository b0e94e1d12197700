"""A policy dict behaves exactly like the same decorators stacked by hand, sync and async.

Each case runs one script of replies (503s, wrong answers, a bad key, exceptions, successes)
through a hand-stacked function and through `Policy.from_dict(...)`, and compares everything a
user can observe: what each call returned or raised, how many attempts it made, every wait,
fallbacks, alerts, the breaker's state and the audit lines.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from qwed_guard import VerificationFailed, fallback, retry
from qwed_guard.alerts import alert_on_failures
from qwed_guard.alerts.layer import DEFAULT_STORE
from qwed_guard.audit import audited
from qwed_guard.breaker import circuit_breaker
from qwed_guard.clock import FakeClock
from qwed_guard.fallback import GuardedResult
from qwed_guard.policy import Policy
from qwed_guard.testing import fake_time


@dataclass(frozen=True)
class Result:
    verified: bool
    value: Any = None
    error: str | None = None
    confidence: float = 1.0


OK = Result(True, 42.0)
DOWN = Result(False, None, "LLM call failed: Error code: 503 - overloaded")
WRONG = Result(False, 7.0)
BAD_KEY = Result(False, None, "LLM call failed: Error code: 401 - Incorrect API key provided")

# One reply per attempt, in order; after the script every attempt succeeds.
SCRIPT: list[Any] = [
    OK,
    DOWN, OK,
    WRONG, WRONG, WRONG,
    BAD_KEY,
    TimeoutError("read timed out"), DOWN, DOWN,
    DOWN, DOWN, DOWN,
    DOWN, DOWN, DOWN,
    DOWN, DOWN, DOWN,
]  # fmt: skip
CALLS = 12


class Replies:
    def __init__(self) -> None:
        self.left = list(SCRIPT)
        self.calls = 0

    def next(self) -> Result:
        self.calls += 1
        reply = self.left.pop(0) if self.left else OK
        if isinstance(reply, Exception):
            # A fresh exception each time: a raised one keeps its traceback, and with it the
            # run's function alive into the next run.
            raise type(reply)(*reply.args)
        return reply


Stack = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class Case:
    name: str
    by_hand: Callable[[], Stack]
    """Builds the decorators afresh for each run, as a user writing them above a def would."""
    data: dict[str, Any]


def _hand(*decorators: Stack) -> Stack:
    """Apply decorators as written top to bottom above a `def`."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorate in reversed(decorators):
            fn = decorate(fn)
        return fn

    return apply


CASES = [
    Case(
        "retry+fallback",
        lambda: _hand(fallback(value=100.0), retry(max_tries=3, base=1, factor=2, jitter=None)),
        {
            "retry": {"max_tries": 3, "base": 1, "factor": 2, "jitter": None},
            "fallback": {"value": 100.0},
        },
    ),
    Case(
        "retry alone fails closed",
        lambda: _hand(retry(max_tries=2, base=0.5, jitter=None, max_reasks=1)),
        {"retry": {"max_tries": 2, "base": 0.5, "jitter": None, "max_reasks": 1}},
    ),
    Case(
        "fallback+alerts+retry",
        lambda: _hand(
            fallback(value=0.0),
            alert_on_failures(threshold=2, notify=[], repeat_interval=5),
            retry(max_tries=3, base=1, jitter=None),
        ),
        {
            "fallback": {"value": 0.0},
            "alert_on_failures": {"threshold": 2, "notify": [], "repeat_interval": 5},
            "retry": {"max_tries": 3, "base": 1, "jitter": None},
        },
    ),
    Case(
        "canonical four without audit",
        lambda: _hand(
            fallback(value=-1.0),
            alert_on_failures(threshold=3, notify=[]),
            retry(max_tries=3, base=1, factor=2, jitter=None),
            circuit_breaker(failure_threshold=4, recovery_timeout=5),
        ),
        {
            "retry": {"max_tries": 3, "base": 1, "factor": 2, "jitter": None},
            "fallback": {"value": -1.0},
            "circuit_breaker": {"failure_threshold": 4, "recovery_timeout": 5},
            "alert_on_failures": {"threshold": 3, "notify": []},
        },
    ),
]


CASES.append(
    Case(
        "the canonical five",
        lambda: _hand(
            audited(sink="memory:"),
            fallback(value=100.0),
            alert_on_failures(threshold=5, notify=[], repeat_interval=None),
            retry(max_tries=3, base=1, factor=2, jitter=None),
            circuit_breaker(failure_threshold=6, recovery_timeout=3),
        ),
        {
            "audited": {"sink": "memory:"},
            "fallback": {"value": 100.0},
            "alert_on_failures": {"threshold": 5, "notify": [], "repeat_interval": None},
            "retry": {"max_tries": 3, "base": 1, "factor": 2, "jitter": None},
            "circuit_breaker": {"failure_threshold": 6, "recovery_timeout": 3},
        },
    )
)

# Audit fields that name the run rather than describe the behaviour.
_RUN_FIELDS = {"id", "call_id", "ts", "function", "hash", "prev_hash", "seq", "policy"}


def _summary(outcome: Any) -> tuple[Any, ...]:
    if isinstance(outcome, GuardedResult):
        return ("result", outcome.source, outcome.value, outcome.attempts, outcome.outcome)
    if isinstance(outcome, VerificationFailed):
        return ("raised", outcome.outcome, len(outcome.attempts), outcome.reason)
    if isinstance(outcome, BaseException):
        return ("raised", type(outcome).__name__, str(outcome))
    return ("result", outcome)


def _observe(fn: Any, replies: Replies, clock: FakeClock) -> dict[str, Any]:
    seen: dict[str, Any] = {"calls": [], "invocations": replies.calls, "waits": list(clock.waits)}
    kinds = [layer.kind for layer in fn.guard_layers]
    if "alert_on_failures" in kinds:
        seen["alerts"] = [(a.kind, a.failures, a.outcome, a.reason, a.function) for a in fn.alerts]
    if "circuit_breaker" in kinds:
        seen["breaker"] = (fn.breaker.state, fn.breaker.opened, fn.breaker.short_circuited)
    audit = fn.find_layer("audited")
    if audit is not None:
        records = audit.sink.records
        seen["audit"] = [{k: v for k, v in r.items() if k not in _RUN_FIELDS} for r in records]
        seen["audit_policy"] = {r["policy"] for r in records}
    return seen


def _run_sync(stack: Stack, label: str) -> dict[str, Any]:
    replies = Replies()

    def verify(query: str) -> Result:
        return replies.next()

    verify.__qualname__ = label

    guarded: Any = stack(verify)
    outcomes = []
    with fake_time() as clock:
        for _ in range(CALLS):
            try:
                outcomes.append(_summary(guarded("What is 10% of 1000?")))
            except Exception as exc:
                outcomes.append(_summary(exc))
            clock.advance(1.0)
        seen = _observe(guarded, replies, clock)
    seen["calls"] = outcomes
    return seen


def _run_async(stack: Stack, label: str) -> dict[str, Any]:
    replies = Replies()

    async def verify(query: str) -> Result:
        await asyncio.sleep(0)
        return replies.next()

    verify.__qualname__ = label

    guarded: Any = stack(verify)

    async def main(clock: FakeClock) -> list[tuple[Any, ...]]:
        outcomes = []
        for _ in range(CALLS):
            try:
                outcomes.append(_summary(await guarded("What is 10% of 1000?")))
            except Exception as exc:
                outcomes.append(_summary(exc))
            clock.advance(1.0)
        return outcomes

    with fake_time() as clock:
        outcomes = asyncio.run(main(clock))
        seen = _observe(guarded, replies, clock)
    seen["calls"] = outcomes
    return seen


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_policy_behaves_like_hand_stacked_decorators(case: Case, mode: str) -> None:
    run = _run_sync if mode == "sync" else _run_async
    policy = Policy.from_dict(case.data)
    # Both runs use one function name (it appears in errors and records); alert counts live in
    # a process-wide store keyed by that name, so each run starts from an empty one.
    label = f"verify[{case.name}-{mode}]"
    DEFAULT_STORE.clear()
    by_hand = run(case.by_hand(), label)
    DEFAULT_STORE.clear()
    gc.collect()  # the first run's function is gone: the second one gets its name's state key
    by_policy = run(policy, label)
    if "audit" in by_hand:
        # Only the policy's calls carry its hash: into every audit record and every alert.
        assert by_hand.pop("audit_policy") == {None}
        assert by_policy.pop("audit_policy") == {policy.hash}
        stamped = json.dumps(by_policy["audit"], default=str)
        if "alert_sent" in stamped:
            assert f'"policy_hash": "{policy.hash}"' in stamped
        by_policy["audit"] = json.loads(stamped.replace(f'"{policy.hash}"', "null"))
        by_hand["audit"] = json.loads(json.dumps(by_hand["audit"], default=str))
        assert len(by_hand["audit"]) > CALLS
    assert by_policy == by_hand
    # The script makes every case retry, wait and end calls in several ways: equality is not
    # vacuous.
    assert by_hand["waits"] and len(set(by_hand["calls"])) >= 3
