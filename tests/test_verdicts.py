"""The verdict table: every result shape, fail-closed, and the attacks on it.

QWEDLocal's methods run for real (its deterministic checks need no LLM; its LLM methods ask the
simulator); hosted shapes are in tests/test_hosted.py against the real server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from qwed_sdk.qwed_local import QWEDLocal, VerificationResult

from qwed_guard import (
    GuardedResult,
    Outcome,
    Policy,
    VerdictRules,
    VerificationFailed,
    circuit_breaker,
    fallback,
    guard_client,
    register_verdict,
    retry,
)
from qwed_guard.clock import FakeClock
from qwed_guard.outcomes import Diagnosis, parse_retry_after
from qwed_guard.sim import SimulatedLLM
from qwed_guard.state import MemoryStore
from qwed_guard.verdicts import diagnose, unregister_verdict
from tests.trails import attempts_of

# ------------------------------------------------------------------ QWEDLocal, every method

QWEDLOCAL_ERRORS = [
    # (error text QWEDLocal writes, outcome, final)
    ("LLM call failed: Error code: 503 - overloaded", Outcome.TRANSIENT, False),
    ("LLM call failed: Connection error.", Outcome.TRANSIENT, False),
    ("LLM call failed: Request timed out.", Outcome.TRANSIENT, False),
    ("LLM call failed: Error code: 401 - Incorrect API key provided", Outcome.PERMANENT, False),
    ("SymPy verification failed: could not parse", Outcome.UNVERIFIABLE, False),
    ("SymPy not installed. Run: pip install sympy", Outcome.PERMANENT, False),
    ("Z3 verification failed: unknown variable y", Outcome.UNVERIFIABLE, False),
    ("Z3 not installed. Run: pip install z3-solver", Outcome.PERMANENT, False),
    ("Only Python supported currently (got: rust)", Outcome.PERMANENT, True),
    ("CodeVerifier is not available (install the full qwed package)", Outcome.PERMANENT, True),
    ("Code analysis failed: recursion", Outcome.UNVERIFIABLE, True),
]


@pytest.mark.parametrize(("error", "outcome", "final"), QWEDLOCAL_ERRORS)
def test_qwedlocal_error_texts(error: str, outcome: Outcome, final: bool) -> None:
    verdict = diagnose(VerificationResult(verified=False, error=error))
    assert (verdict.outcome, verdict.final) == (outcome, final)


@pytest.fixture
def local() -> QWEDLocal:
    # Deterministic checks never call the LLM: nothing listens on this port.
    return QWEDLocal(base_url="http://127.0.0.1:9/v1", model="none", api_key="sim-no-key")


@pytest.mark.parametrize(
    ("call", "outcome", "final"),
    [
        (lambda q: q.verify_code("def f(x):\n    return x + 1\n"), Outcome.VERIFIED, False),
        (lambda q: q.verify_code("import os\nos.system('ls')\n"), Outcome.REFUTED, True),
        (lambda q: q.verify_code("fn main() {}", language="rust"), Outcome.PERMANENT, True),
        (lambda q: q.verify_shell_command("ls -la"), Outcome.VERIFIED, False),
        (lambda q: q.verify_shell_command("rm -rf /"), Outcome.REFUTED, True),
        (lambda q: q.verify_file_access("/etc/shadow", allowed_paths=["/tmp"]), Outcome.REFUTED, True),  # noqa: E501
        (lambda q: q.verify_config({"aws": "AKIACANARY0000000000"}), Outcome.REFUTED, True),
        (lambda q: q.verify_config({"debug": True}), Outcome.VERIFIED, False),
    ],
)  # fmt: skip
def test_qwedlocal_deterministic_methods(
    local: QWEDLocal, call: Callable[[QWEDLocal], Any], outcome: Outcome, final: bool
) -> None:
    verdict = diagnose(call(local))
    assert (verdict.outcome, verdict.final) == (outcome, final)


def test_qwedlocal_llm_methods_against_the_simulator(fake_clock: FakeClock) -> None:
    with SimulatedLLM(profile="healthy") as llm:
        client = QWEDLocal(
            base_url=llm.base_url, model="qwed-sim", api_key="sim", max_retries=0, cache=False
        )
        assert diagnose(client.verify_math("What is 15% of 200?")).outcome is Outcome.VERIFIED
        logic = diagnose(client.verify_logic("Is there an x with x > 3 and x < 2?"))
    # The simulator gives QWEDLocal no Z3 program: unverifiable, and worth asking again.
    assert logic.outcome in (Outcome.UNVERIFIABLE, Outcome.REFUTED) and not logic.final
    with SimulatedLLM(profile="healthy") as llm:
        llm.outage(60)
        client = QWEDLocal(
            base_url=llm.base_url, model="qwed-sim", api_key="sim", max_retries=0, cache=False
        )
        assert diagnose(client.verify_math("What is 17 + 25?")).outcome is Outcome.TRANSIENT


def test_a_deterministic_refusal_is_not_retried_nor_counted(
    local: QWEDLocal, fake_clock: FakeClock
) -> None:
    client = guard_client(
        local,
        {
            "fallback": {"value": "refused"},
            "retry": {"max_tries": 5},
            # Even a breaker told to count refutations does not count a final one.
            "circuit_breaker": {"failure_threshold": 1, "failure_on": ["refuted", "transient"]},
        },
    )
    for _ in range(3):
        result = client.verify_shell_command("rm -rf /")
        assert (result.outcome, result.attempts, result.value) == (Outcome.REFUTED, 1, "refused")
    assert fake_clock.waits == []
    assert client.verify_shell_command.breaker.failures == 0


# ------------------------------------------------------------------------- plain values


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        (None, Outcome.UNVERIFIABLE),
        (False, Outcome.REFUTED),
        (True, Outcome.UNCHECKED),
        (12.5, Outcome.UNCHECKED),
        ("4", Outcome.UNCHECKED),
        ({"value": 4}, Outcome.UNCHECKED),
        ({"verified": False, "value": None}, Outcome.REFUTED),  # the seed lesson's own shape
        ({"verified": "yes"}, Outcome.UNVERIFIABLE),
        ({"verified": 1}, Outcome.UNVERIFIABLE),
        ({"verified": True, "value": 4}, Outcome.VERIFIED),
        # A verified flag that QWED's own admission contradicts is not verified.
        ({"verified": True, "admission": "BLOCKED"}, Outcome.UNVERIFIABLE),
        ({"verified": True, "admission": "ADMIT"}, Outcome.VERIFIED),
        # The flag and QWED's admission rule disagree: the rule wins.
        ({"is_verified": True, "status": "VERIFIED", "admission": "BLOCKED"}, Outcome.UNVERIFIABLE),
        ({"is_verified": False, "status": "VERIFIED", "admission": "BLOCKED"}, Outcome.REFUTED),
        ({"is_verified": True, "status": "VERIFIED", "admission": "ADMIT"}, Outcome.VERIFIED),
        ({"status": "VERIFIED"}, Outcome.UNCHECKED),  # no verdict field at all
        (float("nan"), Outcome.UNCHECKED),
        (10**400, Outcome.UNCHECKED),
    ],
)
def test_plain_values_and_look_alikes(value: Any, outcome: Outcome) -> None:
    assert diagnose(value).outcome is outcome


@pytest.mark.parametrize("value", [None, False, True, 0, "", 12.5, float("inf"), []])
def test_no_plain_value_is_ever_reported_verified(value: Any) -> None:
    @fallback(value="conservative")
    def compute() -> Any:
        return value

    result = compute()
    assert result.verified is False
    assert result.source in ("fallback", "unchecked")


def test_plain_fail_and_the_strict_preset_refuse_a_value_with_no_verdict(
    fake_clock: FakeClock,
) -> None:
    @fallback(value=0.0, verdict=VerdictRules(plain="fail"))
    def compute() -> float:
        return 12.5

    result = compute()
    assert (result.source, result.outcome, result.value) == ("fallback", Outcome.UNVERIFIABLE, 0)
    assert "carries no verdict" in (result.reason or "")
    strict = Policy.preset("strict", audited={"sink": "memory:"}).wrap(lambda: 12.5)
    with pytest.raises(VerificationFailed) as raised:
        strict()
    assert raised.value.outcome is Outcome.UNVERIFIABLE
    assert len(raised.value.attempts) == 1  # final: a plain value stays plain


@dataclass
class Mine:
    ok: bool


def test_a_qwedlocal_result_whose_evidence_blocks_is_not_verified() -> None:
    forged = VerificationResult(verified=True, value="SAFE", evidence={"admission": "BLOCKED"})
    assert diagnose(forged).outcome is Outcome.UNVERIFIABLE
    admitted = VerificationResult(verified=True, value="SAFE", evidence={"admission": "ADMIT"})
    assert diagnose(admitted).outcome is Outcome.VERIFIED


def test_an_unknown_type_fails_closed_until_registered() -> None:
    verdict = diagnose(Mine(ok=True))
    assert verdict.outcome is Outcome.UNVERIFIABLE and verdict.final
    assert "register_verdict" in (verdict.error or "")
    register_verdict(Mine, lambda r: r.ok, answer=lambda r: "mine")
    try:
        assert diagnose(Mine(ok=True)).outcome is Outcome.VERIFIED
        assert diagnose(Mine(ok=False)).outcome is Outcome.REFUTED

        @fallback(value=None)
        def ask() -> Mine:
            return Mine(ok=True)

        assert (ask().value, ask().verified) == ("mine", True)
    finally:
        unregister_verdict(Mine)
    assert diagnose(Mine(ok=True)).outcome is Outcome.UNVERIFIABLE


class Treacherous:
    """A look-alike whose fields break when read: its verdict must fail closed, not raise."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    @property
    def verified(self) -> bool:
        if self.broken == "verified":
            raise ValueError("verified cannot be read")
        return True

    @property
    def value(self) -> str:
        if self.broken == "value":
            raise ValueError("value cannot be read")
        return "4"


class LooksLikeAMapping(dict[str, Any]):
    pass


def test_a_look_alike_that_breaks_when_read_fails_closed() -> None:
    verdict = diagnose(Treacherous("verified"))
    assert verdict.outcome is Outcome.UNVERIFIABLE and verdict.final
    assert "cannot judge a Treacherous result: ValueError" in (verdict.error or "")

    @fallback(value="safe")
    def ask(broken: str) -> Any:
        return Treacherous(broken)

    refused = ask("verified")
    assert (refused.verified, refused.source, refused.value) == (False, "fallback", "safe")
    # Judged verified, but its value cannot be read: the call still returns, the value unread.
    kept = ask("value")
    assert kept.verified is True and isinstance(kept.value, Treacherous)


def test_the_shape_of_a_class_is_learnt_once_and_holds_for_every_result() -> None:
    # A Mapping subclass and a plain object class, each judged many times: the per-class
    # lookup must give each instance its own verdict.
    for _ in range(3):
        assert diagnose(LooksLikeAMapping(verified=True)).outcome is Outcome.VERIFIED
        assert diagnose(LooksLikeAMapping(verified=False)).outcome is Outcome.REFUTED
        assert diagnose(LooksLikeAMapping(other=1)).outcome is Outcome.UNCHECKED
        assert diagnose(Mine(ok=True)).outcome is Outcome.UNVERIFIABLE


# ------------------------------------------------------------------------- user verdicts


def raises(result: Any) -> bool:
    raise RuntimeError("verdict bug sk-canary12345678")


@pytest.mark.parametrize(
    ("judge", "needle"),
    [
        (raises, "raised RuntimeError"),
        (lambda r: "verified", "returned str"),
        (lambda r: 1, "returned int"),
        (lambda r: None, "returned NoneType"),
    ],
)
def test_a_verdict_that_raises_or_answers_nonsense_fails_closed(
    judge: Callable[[Any], Any], needle: str, fake_clock: FakeClock
) -> None:
    @fallback(value="safe", verdict=judge)
    @retry(max_tries=3)
    def ask() -> Any:
        return VerificationResult(verified=True, value="4")

    result = ask()
    assert result.verified is False and result.source == "fallback"
    assert result.outcome is Outcome.UNVERIFIABLE and result.attempts == 1
    assert needle in (result.reason or "")
    assert "canary12345678" not in repr(result)


def test_a_verdict_decides_instead_of_the_table(fake_clock: FakeClock) -> None:
    @fallback(value=None, verdict=lambda r: r["score"] > 0.9)
    def ask(score: float) -> dict[str, float]:
        return {"score": score}

    assert ask(0.95).verified is True
    assert ask(0.5).outcome is Outcome.REFUTED


def test_verdict_given_twice_to_one_stack_is_refused() -> None:
    with pytest.raises(ValueError, match="verdict"):

        @fallback(value=None, verdict=lambda r: True)
        @retry(verdict=lambda r: False)
        def ask() -> int:
            return 1


def test_a_policy_file_names_its_verdict() -> None:
    policy = Policy.from_dict({"verdict": {"plain": "fail"}, "retry": {}})
    assert policy.verdict == VerdictRules(plain="fail")
    assert "verdict(plain=fail)" in policy.describe()
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ValueError, match=r"verdict\.plain"):
        Policy.from_dict({"verdict": {"plain": "maybe"}, "retry": {}})
    with pytest.raises(ValueError, match=r"verdict\.requre_attestation"):
        Policy.from_dict({"verdict": {"requre_attestation": True}, "retry": {}})


def test_require_attestation_without_keys_fails_closed() -> None:
    @fallback(value=None, verdict=VerdictRules(require_attestation=True))
    def ask() -> VerificationResult:
        return VerificationResult(verified=True, value="4")

    result = ask()
    assert result.verified is False and "attestation required" in (result.reason or "")


# ------------------------------------------------------------------- defects on the way


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_a_non_finite_retry_after_is_ignored(raw: str) -> None:
    assert parse_retry_after({"retry-after": raw}) is None
    assert parse_retry_after({"retry-after-ms": raw}) is None


def nan_wait(obj: Any) -> Diagnosis:
    """A classifier that asks for a NaN wait (as a `Retry-After: nan` once did)."""
    if isinstance(obj, BaseException):
        return Diagnosis(Outcome.TRANSIENT, "slow", retry_after=math.nan)
    return Diagnosis(Outcome.VERIFIED)


def test_a_nan_wait_never_reaches_the_clock_or_the_trail(fake_clock: FakeClock) -> None:
    replies = iter([TimeoutError("slow"), VerificationResult(verified=True, value="4")])
    policy = Policy.from_dict(
        {
            "audited": {"sink": "memory:"},
            "fallback": {"value": None},
            "retry": {"max_tries": 3, "jitter": "none", "classifier": nan_wait},
        }
    )

    def ask() -> VerificationResult:
        reply = next(replies)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    guarded: Any = policy.wrap(ask)
    result = guarded()
    assert result.verified is True and result.source == "verified" and result.attempts == 2
    assert fake_clock.waits == [1.0]
    records = guarded.find_layer("audited").sink.records
    assert [r["wait_us"] for r in attempts_of(records)] == [0, 1_000_000]
    assert records[-1]["answered"]["wait_us"] == 1_000_000  # the verified one, inline


def test_functions_sharing_a_name_never_share_state_in_one_store(fake_clock: FakeClock) -> None:
    store = MemoryStore()

    def make() -> Callable[[], str]:
        @circuit_breaker(failure_threshold=1, state=store)
        def ask() -> str:
            raise ConnectionError("down")

        return ask

    first, second = make(), make()
    with pytest.raises(ConnectionError):
        first()
    assert first.breaker.state.value == "open"
    assert second.breaker.state.value == "closed"  # its own key: name#2
    assert second.breaker.key == first.breaker.key + "#2"


def test_a_nested_guarded_result_keeps_its_verdict() -> None:
    @fallback(value="inner")
    def inner() -> VerificationResult:
        return VerificationResult(verified=False)

    @fallback(value="outer")
    def outer() -> GuardedResult:
        return inner()

    result = outer()
    assert result.verified is False and result.value == "outer"
