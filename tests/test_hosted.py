"""QWED's hosted clients against QWED's real API server: what every verify_* case comes back as.

The server is the one the `qwed` wheel ships (`qwed_new`), started by the `qwed_server` fixture
on 127.0.0.1 with the simulator as its LLM. Each case runs through `guard_client` under the
canonical stack (audit, fallback, retry, breaker) on the fake clock, and asserts the outcome,
`verified`, `source`, the attempts and what the audit trail says. The docs' hosted table is
rendered from `CASES` and checked by `test_the_docs_table_is_these_cases` (docs/hosted.md).
"""

# ruff: noqa: E501 - the case table reads best with one case per line

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qwed_sdk import QWEDAsyncClient, QWEDClient

from qwed_guard import GuardedResult, Outcome, Policy, guard_client
from qwed_guard.clock import FakeClock
from qwed_guard.sim.qwed_api import QwedApiServer
from tests.trails import attempts_of

PAGE = Path(__file__).resolve().parent.parent / "docs" / "hosted.md"
SCHEMA = "CREATE TABLE users (id INT, name TEXT)"
CONTEXT = "Paris is the capital and largest city of France."


def policy(**verdict: Any) -> Policy:
    data: dict[str, Any] = {
        "audited": {"sink": "memory:"},
        "fallback": {"value": "conservative"},
        "retry": {"max_tries": 3, "base": 1.0, "jitter": "none"},
        "circuit_breaker": {"failure_threshold": 50},
    }
    if verdict:
        data["verdict"] = verdict
    return Policy.from_dict(data)


@dataclass(frozen=True)
class Case:
    surface: str
    case: str
    method: str
    args: tuple[Any, ...]
    outcome: Outcome
    attempts: int
    server: str = "up"
    """"up", "down" (nothing listening) or "hangs" (accepts, never answers)."""
    asynchronous: bool = True
    """QWEDAsyncClient has this method too."""

    @property
    def retried(self) -> bool:
        return self.attempts > 1

    @property
    def verified(self) -> bool:
        return self.outcome is Outcome.VERIFIED

    @property
    def id(self) -> str:
        return f"{self.surface}:{self.case}"


LOGIC_SAT = "Find x such that x > 3 and x < 5"
LOGIC_UNSAT = "Find x such that x > 5 and x < 3"
CASES = [
    Case("verify_math", "true identity", "verify_math", ("2 + 2 = 4",), Outcome.VERIFIED, 1),
    Case("verify_math", "wrong claim", "verify_math", ("2 + 2 = 5",), Outcome.REFUTED, 1),
    Case("verify_math", "engine error", "verify_math", ("((((",), Outcome.UNVERIFIABLE, 1),
    Case("verify_math", "empty (400)", "verify_math", ("",), Outcome.PERMANENT, 1),
    Case("verify_math", "server down", "verify_math", ("2 + 2 = 4",), Outcome.TRANSIENT, 3, "down"),
    Case("verify_math", "server hangs", "verify_math", ("2 + 2 = 4",), Outcome.TRANSIENT, 3, "hangs"),
    Case("verify_code", "safe code", "verify_code", ("def f(x):\n    return x + 1\n",), Outcome.VERIFIED, 1),
    Case("verify_code", "unsafe code", "verify_code", ("import os\nos.system('ls')\n",), Outcome.REFUTED, 1),
    Case("verify_code", "server down", "verify_code", ("x = 1\n",), Outcome.TRANSIENT, 3, "down"),
    Case("verify_code", "server hangs", "verify_code", ("x = 1\n",), Outcome.TRANSIENT, 3, "hangs"),
    Case("verify_sql", "read-only query", "verify_sql", ("SELECT id FROM users", SCHEMA), Outcome.VERIFIED, 1, asynchronous=False),
    Case("verify_sql", "DROP TABLE", "verify_sql", ("DROP TABLE users", SCHEMA), Outcome.REFUTED, 1, asynchronous=False),
    Case("verify_sql", "server down", "verify_sql", ("SELECT 1", SCHEMA), Outcome.TRANSIENT, 3, "down", asynchronous=False),
    Case("verify_fact", "heuristic support", "verify_fact", ("Paris is the capital of France", CONTEXT), Outcome.UNVERIFIABLE, 1, asynchronous=False),
    Case("verify_fact", "PII in the claim", "verify_fact", ("mail bob@example.com", CONTEXT), Outcome.REFUTED, 1, asynchronous=False),
    Case("verify_fact", "server down", "verify_fact", ("Paris is in France", CONTEXT), Outcome.TRANSIENT, 3, "down", asynchronous=False),
    Case("verify_logic", "satisfiable", "verify_logic", (LOGIC_SAT,), Outcome.UNVERIFIABLE, 3),
    Case("verify_logic", "unsatisfiable", "verify_logic", (LOGIC_UNSAT,), Outcome.UNVERIFIABLE, 3),
    Case("verify_logic", "translation failed", "verify_logic", ("Tell me a story",), Outcome.UNVERIFIABLE, 3),
    Case("verify", "natural language", "verify", ("What is 15% of 200?",), Outcome.REFUTED, 3),
    Case("verify_batch", "all admitted", "verify_batch", ([{"query": "2+2=4", "type": "math"}, {"query": "3*3=9", "type": "math"}],), Outcome.VERIFIED, 1),
    Case("verify_batch", "one refused", "verify_batch", ([{"query": "2+2=4", "type": "math"}, {"query": "2+2=5", "type": "math"}],), Outcome.UNVERIFIABLE, 1),
]  # fmt: skip


@pytest.fixture(scope="module")
def hanging_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def client_timeout(case: Case) -> float:
    """Short against the server that hangs (the case is about that timeout); long enough
    against the live server that a loaded machine never turns an answer into a timeout."""
    return 0.5 if case.server == "hangs" else 30.0


def base_url(case: Case, server: QwedApiServer, hanging: str) -> str:
    return {"up": server.base_url, "down": closed_url(), "hangs": hanging}[case.server]


def audit_records(method: Callable[..., Any]) -> list[dict[str, Any]]:
    layer: Any = getattr(method, "find_layer")("audited")  # noqa: B009 - a guarded function
    return [dict(record) for record in layer.sink.records]


def check(case: Case, result: GuardedResult, method: Callable[..., Any], clock: FakeClock) -> None:
    assert result.outcome is case.outcome, (case.id, result.reason)
    assert result.verified is case.verified
    assert result.source == ("verified" if case.verified else "fallback")
    assert result.attempts == case.attempts
    assert len(clock.waits) == case.attempts - 1
    if not case.verified:
        assert result.value == "conservative" and result.attestation is None
        assert result.confidence == 0.0
    records = audit_records(method)
    call = records[-1]
    assert call["event"] == "call" and call["outcome"] == case.outcome.value
    assert call["verified"] is case.verified
    attempts = attempts_of(records)  # the failed ones' records, the answered one inline
    assert len(attempts) == case.attempts
    assert all(r["verified"] is (r["outcome"] == "verified") for r in attempts)
    if case.verified:
        assert attempts[-1]["inline"] is True and call["answered"]["outcome"] == "verified"
        assert call["answered"].get("attestation") == call.get("attestation")
    else:
        assert call["answered"] is None
    breaker: Any = getattr(method, "breaker")  # noqa: B009
    # Provider failures count against the breaker; a refused or unverifiable answer does not.
    if case.outcome in (Outcome.TRANSIENT, Outcome.PERMANENT):
        assert breaker.failures == case.attempts
    else:
        assert breaker.failures == 0


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_case_sync(
    case: Case,
    qwed_server: QwedApiServer,
    qwed_api_key: str,
    hanging_url: str,
    fake_clock: FakeClock,
) -> None:
    url = base_url(case, qwed_server, hanging_url)
    with QWEDClient(api_key=qwed_api_key, base_url=url, timeout=client_timeout(case)) as raw:
        client = guard_client(raw, policy())
        method = getattr(client, case.method)
        result = method(*case.args)
    check(case, result, method, fake_clock)


ASYNC_CASES = [case for case in CASES if case.asynchronous]


@pytest.mark.parametrize("case", ASYNC_CASES, ids=[case.id for case in ASYNC_CASES])
async def test_every_case_async(
    case: Case,
    qwed_server: QwedApiServer,
    qwed_api_key: str,
    hanging_url: str,
    fake_clock: FakeClock,
) -> None:
    url = base_url(case, qwed_server, hanging_url)
    timeout = client_timeout(case)
    async with QWEDAsyncClient(api_key=qwed_api_key, base_url=url, timeout=timeout) as raw:
        client = guard_client(raw, policy())
        method = getattr(client, case.method)
        result = await method(*case.args)
    check(case, result, method, fake_clock)


def test_a_refused_batch_names_its_items(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    items = [{"query": "2+2=4", "type": "math"}, {"query": "2+2=5", "type": "math"}]
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        result = guard_client(raw, policy()).verify_batch(items)
    assert result.reason is not None and "1 of 2 items not admitted" in result.reason
    assert "-1 (" in result.reason and "-0 (" not in result.reason  # the second item's id


def test_a_rate_limited_key_waits_what_the_server_says(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        statuses = []
        for _ in range(101):
            response = raw._client.post(
                f"{qwed_server.base_url}/verify/math",
                json={"expression": "1 + 1 = 2"},
                headers={"X-API-Key": qwed_api_key},
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after = float(response.headers["retry-after"])
                break
        assert statuses[-1] == 429
        result = guard_client(raw, policy()).verify_math("2 + 2 = 4")
    assert result.outcome is Outcome.TRANSIENT and result.attempts == 3
    assert result.verified is False and result.source == "fallback"
    # The server's Retry-After replaces the backoff (capped by max_delay, 60 s).
    assert fake_clock.waits == [min(retry_after, 60.0)] * 2


def test_a_bad_key_is_permanent_and_not_retried(
    qwed_server: QwedApiServer, fake_clock: FakeClock
) -> None:
    canary = "qwed_live_canary0000000000000000000000000"
    with QWEDClient(api_key=canary, base_url=qwed_server.base_url) as raw:
        method = guard_client(raw, policy()).verify_math
        result = method("2 + 2 = 4")
    assert result.outcome is Outcome.PERMANENT and result.attempts == 1
    assert "401" in (result.error or "")
    assert canary not in repr(audit_records(method))


def test_a_verified_hosted_answer_keeps_qwed_fields(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        method = guard_client(raw, policy()).verify_math
        result = method("x**2 + 2*x + 1")
    assert result.verified and result.source == "verified"
    assert result.value == "x**2 + 2*x + 1"  # the answer, not the whole result object
    assert result.confidence is None  # QWED gave none: never a made-up 1.0
    assert (result.status, result.admission) == ("VERIFIED", "ADMIT")
    assert result.attestation is not None and result.attestation.count(".") == 2
    call = audit_records(method)[-1]
    assert call["attestation"]["checked"] is False  # carried, not required
    assert len(call["attestation"]["sha256"]) == 64 and call["attestation"]["id"]


# ------------------------------------------------------------------------------ attestations


def test_a_required_attestation_that_verifies_admits(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        method = guard_client(raw, policy(require_attestation=True)).verify_math
        result = method("2 + 2 = 4")
    assert result.verified and result.outcome is Outcome.VERIFIED
    assert audit_records(method)[-1]["attestation"]["checked"] is True


def tamper(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return ".".join([head, payload, signature[:5] + flipped + signature[6:]])


@pytest.mark.parametrize("attack", ["tampered", "missing", "another answer's", "not a jwt"])
def test_an_attestation_that_does_not_verify_is_not_verified(
    attack: str, qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        other = raw.verify_math("3 * 3 = 9")

        def ask(expression: str) -> Any:
            answer = raw.verify_math(expression)
            answer.attestation = {
                "tampered": tamper(answer.attestation or ""),
                "missing": None,
                "another answer's": other.attestation,
                "not a jwt": "not-a-token",
            }[attack]
            return answer

        guarded = policy(require_attestation=True, jwks=qwed_server.base_url).wrap(ask)
        result = guarded("2 + 2 = 4")
    assert result.verified is False and result.source == "fallback"
    assert result.outcome is Outcome.UNVERIFIABLE
    assert "attestation" in (result.reason or "")
    assert result.attestation is None


def test_a_refused_answer_with_a_valid_attestation_stays_refused(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        blocked = raw.verify_math("2 + 2 = 5")
        assert blocked.attestation and blocked.admission == "BLOCKED"
        result = guard_client(raw, policy(require_attestation=True)).verify_math("2 + 2 = 5")
    assert result.outcome is Outcome.REFUTED and not result.verified


def test_an_admission_forged_onto_a_blocked_answer_is_caught(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:

        def ask(expression: str) -> Any:
            answer = raw.verify_math(expression)
            # Forged: the client-side fields say admitted; the signed token says BLOCKED.
            answer.is_verified, answer.admission = True, "ADMIT"
            answer.result = {**(answer.result or {}), "admission": "ADMIT"}
            return answer

        guarded = policy(require_attestation=True, jwks=qwed_server.base_url).wrap(ask)
        result = guarded("2 + 2 = 5")
    assert result.verified is False and result.outcome is Outcome.UNVERIFIABLE
    assert "admission" in (result.reason or "")


async def test_async_attestations_are_checked_without_blocking(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    async with QWEDAsyncClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        client = guard_client(raw, policy(require_attestation=True))
        results = await asyncio.gather(*(client.verify_math("2 + 2 = 4") for _ in range(5)))
    assert all(r.verified for r in results)


# ------------------------------------------------------------------------------- the docs


def table_rows() -> list[str]:
    rows = []
    for case in CASES:
        where = "" if case.server == "up" else f" ({case.server})"
        retried = "yes" if case.retried else "no"
        verified = "yes" if case.verified else "no"
        sync_only = "" if case.asynchronous else " (sync client only)"
        rows.append(
            f"| `{case.surface}`{sync_only} | {case.case}{where} | {case.outcome.value} | "
            f"{retried} | {verified} |"
        )
    return rows


def test_the_docs_table_is_these_cases() -> None:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("<!-- hosted-table:start -->")
    end = text.index("<!-- hosted-table:end -->")
    table = [line for line in text[start:end].splitlines() if line.startswith("| `")]
    assert table == table_rows()


# ------------------------------------------------------------------- QWED's LangChain tools


def test_qwed_langchain_tool_guarded_through_its_private_client(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    from qwed_sdk.langchain import QWEDMathTool

    # No fallback: the tool turns the guard's VerificationFailed into its own error string.
    strict = Policy.from_dict(
        {"audited": {"sink": "memory:"}, "retry": {"max_tries": 3, "jitter": "none"}}
    )
    tool = QWEDMathTool(api_key=qwed_api_key, base_url=qwed_server.base_url)
    tool._client = guard_client(tool._client, strict)
    assert tool._run("2 + 2 = 4").startswith("✅ VERIFIED")
    refused = tool._run("2 + 2 = 5")
    assert "not verified after 1 attempt" in refused  # final: not asked again
    down = QWEDMathTool(api_key=qwed_api_key, base_url=closed_url())
    down._client = guard_client(down._client, strict)
    assert "not verified after 3 attempts" in down._run("2 + 2 = 4")
    assert fake_clock.waits == [1.0, 2.0]
    records = audit_records(down._client.verify_math)  # the policy's one trail: the last call
    last = [r for r in records if r["call_id"] == records[-1]["call_id"]]
    assert [r["outcome"] for r in attempts_of(last)] == ["transient"] * 3
    assert last[-1]["answered"] is None


def test_refused_hosted_answers_reach_the_alerter(
    qwed_server: QwedApiServer, qwed_api_key: str, fake_clock: FakeClock
) -> None:
    alerting = Policy.from_dict(
        {
            "fallback": {"value": None},
            "alert_on_failures": {"threshold": 2, "notify": []},
            "retry": {"max_tries": 2},
        }
    )
    with QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url) as raw:
        client = guard_client(raw, alerting)
        assert client.verify_math("2 + 2 = 4").verified
        for _ in range(2):
            assert client.verify_sql("DROP TABLE users", SCHEMA).verified is False
    alerts = client.verify_sql.alerts
    assert [a.kind for a in alerts] == ["triggered"]
    assert alerts[0].outcome is Outcome.REFUTED
    assert list(client.verify_math.alerts) == []  # its own state: one method, one streak
