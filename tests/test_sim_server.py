"""The simulator over real HTTP, driven by the real openai SDK and the real QWEDLocal."""

from __future__ import annotations

import os

os.environ.setdefault("QWED_QUIET", "1")

import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qwed_guard import clock
from qwed_guard.sim import Reply, SimulatedLLM, parse_sim_options, run_sim_cli, sample_questions
from qwed_guard.sim.questions import QUESTION_FORMS

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")
qwed_sdk = pytest.importorskip("qwed_sdk")

Q = "What is 2 + 2?"


def qwed(llm: SimulatedLLM, **kwargs: Any) -> Any:
    """QWEDLocal as the guard builds it: no SDK retries, no disk cache."""
    return qwed_sdk.QWEDLocal(
        base_url=llm.base_url, model=llm.model, cache=False, max_retries=0, **kwargs
    )


@pytest.fixture(scope="module")
def healthy() -> Iterator[SimulatedLLM]:
    with SimulatedLLM() as llm:
        yield llm


@pytest.fixture(scope="module")
def healthy_client(healthy: SimulatedLLM) -> Any:
    return qwed(healthy)


@pytest.fixture
def fake_clock() -> Iterator[clock.FakeClock]:
    fake = clock.FakeClock()
    previous = clock.install(fake)
    try:
        yield fake
    finally:
        clock.install(previous)


# ------------------------------------------------------------------ the question family


@pytest.mark.parametrize(("kind", "query"), [(k, q) for k, q, _ in QUESTION_FORMS])
def test_qwed_verifies_every_form(healthy_client: Any, kind: str, query: str) -> None:
    from qwed_guard.sim import solve

    solution = solve(query)
    assert solution is not None and solution.kind == kind
    result = healthy_client.verify_math(query)
    assert result.verified is True, result
    assert result.error is None
    assert result.value == solution.qwed_value
    assert result.evidence["llm_answer"] == solution.answer


def test_qwed_verifies_the_demo_mix(healthy_client: Any) -> None:
    for q in sample_questions(40, seed=3):
        result = healthy_client.verify_math(q.text)
        assert (result.verified, result.value) == (True, q.value), q


def test_outside_the_family_is_unverifiable_not_a_crash(healthy_client: Any) -> None:
    result = healthy_client.verify_math("Who won the 1998 World Cup?")
    assert result.verified is False
    assert result.error.startswith("SymPy verification failed")
    assert result.evidence["llm_answer"]  # a plausible number, not an empty reply


# ------------------------------------------------------------------ every fault kind


FAULTS = [
    (["503"], "LLM call failed: Error code: 503 - The server is overloaded or not ready yet."),
    (["500"], "LLM call failed: Error code: 500 - The server had an error while processing"),
    (["502"], "LLM call failed: Error code: 502 - Bad gateway."),
    (["429"], "LLM call failed: Error code: 429 - Rate limit reached for qwed-sim in org"),
    (["quota"], "LLM call failed: Error code: 429 - You exceeded your current quota"),
    (["401"], "LLM call failed: Error code: 401 - Incorrect API key provided: sk-proj-****"),
    (["outage"], "LLM call failed: Error code: 503 - The server is overloaded or not ready yet."),
    (["malformed"], "LLM call failed: Unterminated string"),
    (["ok", "unevaluable"], "SymPy verification failed: invalid syntax"),
    (["ok", "503"], "LLM call failed: Error code: 503 - "),
]


@pytest.mark.parametrize(("script", "error"), FAULTS, ids=[" ".join(s) for s, _ in FAULTS])
def test_each_fault_through_qwedlocal(script: list[str], error: str) -> None:
    with SimulatedLLM(script=script) as llm:
        client = qwed(llm)
        result = client.verify_math(Q)
        assert result.verified is False
        assert result.error.startswith(error), result.error
        healed = client.verify_math(Q)  # the script ran out: healthy again
        assert (healed.verified, healed.value) == (True, "4")
        stats = llm.stats()
    assert stats["requests"] == len(script) + 2
    assert sum(stats["replies"].values()) == stats["requests"]


def test_wrong_answer_is_refuted_with_no_error() -> None:
    with SimulatedLLM(script=["wrong", "ok", "ok", "wrong"]) as llm:
        client = qwed(llm)
        first = client.verify_math("Calculate 15% of $200")
        second = client.verify_math("Calculate 15% of $200")
    assert (first.verified, first.error, first.value) == (False, None, "30")
    assert first.evidence["llm_answer"] != "30"
    # "wrong" on the expression prompt: code for a wrong number, also refuted
    assert (second.verified, second.error) == (False, None)
    assert second.evidence["llm_answer"] == "30" and second.value != "30"


def test_quota_and_auth_bodies_carry_code_and_type() -> None:
    """The SDK's string drops `code`; the body (what a response hook sees) keeps it."""
    script: list[Reply | str] = [
        "quota",
        "401",
        Reply.rate_limited(retry_after=1.5),
        Reply.rate_limited(None),
    ]
    with SimulatedLLM(script=script) as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
        errors = []
        for _ in script:
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": Q}]
                )
            errors.append(info.value)
    quota, auth, limited, bare = errors
    assert isinstance(quota, openai.RateLimitError)
    assert quota.body["code"] == quota.body["type"] == "insufficient_quota"
    assert "insufficient_quota" not in str(quota)
    assert isinstance(auth, openai.AuthenticationError)
    assert (auth.body["code"], auth.body["type"]) == ("invalid_api_key", "invalid_request_error")
    assert limited.body["code"] == "rate_limit_exceeded" and limited.body["type"] == "requests"
    assert limited.response.headers["retry-after"] == "2"
    assert limited.response.headers["retry-after-ms"] == "1500"
    assert "gpt-4o-mini" in limited.body["message"] and "try again in 1.5s" in limited.message
    assert "retry-after" not in bare.response.headers


def test_stopped_server_is_a_connection_error_and_restarts_on_its_port() -> None:
    llm = SimulatedLLM().start()
    client = qwed(llm)
    assert client.verify_math(Q).verified  # leaves a pooled keep-alive connection behind
    url = llm.base_url
    llm.stop()
    result = client.verify_math(Q)
    assert result.error == "LLM call failed: Connection error."
    llm.start()
    try:
        assert llm.base_url == url
        assert client.verify_math(Q).verified
    finally:
        llm.stop()


def test_hang_is_a_client_timeout() -> None:
    with SimulatedLLM(script=[Reply.hang(0.5)]) as llm:
        client = qwed(llm, timeout=0.2)
        started = time.perf_counter()
        result = client.verify_math(Q)
        elapsed = time.perf_counter() - started
        assert result.error == "LLM call failed: Request timed out."
        assert 0.2 <= elapsed < 0.5
        assert client.verify_math(Q).verified  # the next call is served meanwhile
        assert llm.stats()["replies"]["hang"] == 1
    # stop() interrupted the hanging handler instead of waiting for it


def test_latency_is_served_and_counted() -> None:
    with SimulatedLLM(latency=0.05, jitter=0.02, seed=4) as llm:
        client = qwed(llm)
        started = time.perf_counter()
        assert client.verify_math(Q).verified
        assert time.perf_counter() - started >= 0.1
        latency = llm.stats()["latency"]
    assert latency["delayed"] == 2
    assert 0.1 <= latency["seconds"] <= 0.14


def test_outage_window_on_a_fake_clock(fake_clock: clock.FakeClock) -> None:
    with SimulatedLLM() as llm:
        client = qwed(llm)
        llm.outage(10.0)
        down = client.verify_math(Q)
        assert down.error.startswith("LLM call failed: Error code: 503 - The server is overloaded")
        fake_clock.advance(10.0)
        assert client.verify_math(Q).verified
        # the same through the control endpoint a program would use
        response = httpx.post(f"{llm.url}/sim/outage", json={"seconds": 5})
        assert response.json() == {"outage_seconds": 5.0}
        assert client.verify_math(Q).error.startswith("LLM call failed: Error code: 503")
        fake_clock.advance(5.0)
        assert client.verify_math(Q).verified
        replies = llm.stats()["replies"]
    assert (replies["outage"], replies["ok"]) == (2, 4)


def test_outage_after_requests_profile_option(fake_clock: clock.FakeClock) -> None:
    with SimulatedLLM(outage_after_requests=4, outage_seconds=3.0) as llm:
        client = qwed(llm)
        results = [client.verify_math(Q) for _ in range(3)]
        assert [r.verified for r in results] == [True, True, False]
        fake_clock.advance(3.0)
        assert client.verify_math(Q).verified


# ------------------------------------------------------------------ wire facts and stats


def test_reproducible_and_stats_match_what_the_wire_saw() -> None:
    def run() -> tuple[list[tuple[bool, str | None]], list[tuple[str, str]], dict[str, Any]]:
        statuses: Counter[str] = Counter()

        def hook(response: Any) -> None:
            statuses[str(response.status_code)] += 1

        with SimulatedLLM("flaky", seed=7, malformed=0.05, unevaluable=0.1) as llm:
            http_client = httpx2.Client(event_hooks={"response": [hook]})
            client = qwed(llm, http_client=http_client)
            results = [(r.verified, r.error) for r in map(client.verify_math, [Q] * 40)]
            over_http = httpx.get(f"{llm.url}/stats").json()
            stats = llm.stats()
            history = llm.history()
        assert over_http == stats
        assert stats["status"] == dict(sorted(statuses.items()))
        assert stats["requests"] == sum(statuses.values()) == len(history)
        counted = Counter(kind for _, kind in history)
        assert {k: v for k, v in stats["replies"].items() if v} == dict(counted)
        assert stats["prompts"]["answer"] == 40
        # every failed LLM call was one non-200 or malformed reply
        llm_failures = sum(1 for _, e in results if e and e.startswith("LLM call failed"))
        non_ok = sum(v for s, v in statuses.items() if s != "200") + counted["malformed"]
        assert llm_failures == non_ok
        return results, history, stats

    first, second = run(), run()
    assert first == second
    results, _, stats = first
    kinds = set(stats["replies"]) - {"ok"}
    assert sum(stats["replies"][k] for k in kinds) > 0  # the profile really failed sometimes
    assert any(v for v, _ in results)


def test_keep_alive_reuses_one_connection() -> None:
    with SimulatedLLM() as llm:
        client = qwed(llm)
        for _ in range(10):
            assert client.verify_math(Q).verified
        assert llm.stats()["connections"] == 1
        assert llm.stats()["requests"] == 20


def test_concurrent_callers() -> None:
    with SimulatedLLM() as llm:
        client = qwed(llm)
        questions = sample_questions(10, seed=1)
        failures: list[Any] = []

        def work() -> None:
            try:
                for q in questions:
                    result = client.verify_math(q.text)
                    if not result.verified or result.value != q.value:
                        failures.append(result)
            except BaseException as exc:  # a thread's error must reach the test
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert llm.stats()["requests"] == 160
        assert llm.stats()["prompts"] == {"answer": 80, "expression": 80, "other": 0}


def test_reset_stats() -> None:
    with SimulatedLLM() as llm:
        assert qwed(llm).verify_math(Q).verified
        llm.reset_stats()
        stats = llm.stats()
        assert stats["requests"] == 0 and llm.history() == []
        assert httpx.post(f"{llm.url}/sim/reset").json() == {"reset": True}


def test_models_and_other_prompts_with_the_openai_sdk(healthy: SimulatedLLM) -> None:
    client = openai.OpenAI(base_url=healthy.base_url, api_key="x", max_retries=0)
    assert [m.id for m in client.models.list()] == [healthy.model]

    def ask(text: str) -> str:
        completion = client.chat.completions.create(
            model="any-model", messages=[{"role": "user", "content": text}]
        )
        assert completion.model == "any-model"
        assert completion.choices[0].finish_reason == "stop"
        return str(completion.choices[0].message.content)

    assert ask("What is 15% of 200?") == "30"
    assert "simulated LLM" in ask("Tell me a joke")


def test_bad_requests_get_openai_errors(healthy: SimulatedLLM) -> None:
    before = healthy.stats()["replies"]["bad_request"]
    bad_json = httpx.post(f"{healthy.base_url}/chat/completions", content=b"{nope")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["message"].startswith("We could not parse the JSON body")
    no_messages = httpx.post(f"{healthy.base_url}/chat/completions", json={"model": "m"})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    unknown = httpx.post(f"{healthy.base_url}/nope", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert httpx.get(f"{healthy.url}/").status_code == 404
    assert healthy.stats()["replies"]["bad_request"] == before + 2


def test_lifecycle_errors() -> None:
    llm = SimulatedLLM()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = llm.base_url
    with llm:
        with pytest.raises(RuntimeError, match="already running"):
            llm.start()
        assert llm.running and llm.base_url.startswith("http://127.0.0.1:")
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            SimulatedLLM(port=llm.port).start()
    assert not llm.running
    llm.stop()  # idempotent


# ------------------------------------------------------------------ the CLI entry point


def test_run_sim_cli_serves_then_exits_zero() -> None:
    out = io.StringIO()
    code = run_sim_cli(port=0, profile="flaky", seed=3, duration=0.05, out=out)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("qwed-guard sim listening on http://127.0.0.1:")
    assert lines[0].split()[4].endswith("/v1")
    assert "error_5xx=0.2" in lines[1]
    assert lines[-1] == "served 0 requests: none"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "nope"}, "qwed-guard sim: error: unknown profile 'nope'"),
        ({"error_5xx": 1.5}, "qwed-guard sim: error: error_5xx must be a rate in [0, 1]"),
    ],
)
def test_run_sim_cli_bad_input_is_one_line(kwargs: dict[str, Any], message: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_sim_cli(port=0, out=out, err=err, **kwargs) == 2
    assert err.getvalue().startswith(message)
    assert err.getvalue().count("\n") == 1
    assert out.getvalue() == ""


def test_run_sim_cli_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = io.StringIO()
        assert run_sim_cli(port=port, out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith(
        f"qwed-guard sim: error: [Errno 98] cannot listen on 127.0.0.1:{port}"
    )


def test_stats_json_is_plain_data(healthy: SimulatedLLM) -> None:
    stats = healthy.stats()
    assert json.loads(json.dumps(stats)) == stats
    assert set(stats) == {
        "requests",
        "prompts",
        "replies",
        "status",
        "latency",
        "models_requests",
        "connections",
        "profile",
        "seed",
    }


def test_parse_sim_options() -> None:
    assert parse_sim_options(["error_5xx=0.3", "latency=0.2s", "outage-after-requests=10"]) == {
        "error_5xx": 0.3,
        "latency": 0.2,
        "outage_after_requests": 10,
    }
    for bad in ("error_5xx", "=1", "latency=fast"):
        with pytest.raises(ValueError):
            parse_sim_options([bad])
