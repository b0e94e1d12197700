"""QWED's real API server as a fixture (`qwed_server`, `qwed_api_key`), the simulator its LLM.

The fixture's server is shared by the session; the tests that kill or pause a server start their
own `QwedApiServer`. Nothing sleeps: the only wait is a 0.2 s read timeout on a paused server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from qwed_sdk import QWEDClient

from qwed_guard.sim import SimulatedLLM, questions
from qwed_guard.sim.questions import classify_prompt
from qwed_guard.sim.qwed_api import QwedApiServer, QwedApiServerError


@pytest.fixture
def client(qwed_server: QwedApiServer, qwed_api_key: str) -> Iterator[QWEDClient]:
    sdk = QWEDClient(api_key=qwed_api_key, base_url=qwed_server.base_url, timeout=30)
    yield sdk
    sdk.close()


# ------------------------------------------------------------------------------------ fixture


def test_health_answers(qwed_server: QwedApiServer) -> None:
    response = httpx.get(f"{qwed_server.base_url}/health", timeout=5)
    assert response.status_code == 200
    assert qwed_server.running
    assert qwed_server.base_url.startswith("http://127.0.0.1:")


def test_key_works_with_the_sdk(client: QWEDClient) -> None:
    result = client.verify_math("2 + 2 = 4")
    assert result.is_verified, result


def test_each_call_gives_a_fresh_key(qwed_server: QwedApiServer, qwed_api_key: str) -> None:
    keys = {qwed_server.new_api_key() for _ in range(3)} | {qwed_api_key}
    assert len(keys) == 4
    assert qwed_server.api_key == qwed_server.api_key  # the first key is stable
    for key in keys:
        response = httpx.post(
            f"{qwed_server.base_url}/verify/math",
            json={"expression": "1 + 1 = 2"},
            headers={"X-API-Key": key},
            timeout=10,
        )
        assert response.status_code == 200, response.text


def test_unknown_key_is_refused(qwed_server: QwedApiServer) -> None:
    response = httpx.post(
        f"{qwed_server.base_url}/verify/math",
        json={"expression": "1 + 1 = 2"},
        headers={"X-API-Key": "qwed_live_not-a-key"},
        timeout=10,
    )
    assert response.status_code == 401


def test_101st_request_on_one_key_gets_429_with_retry_after(
    qwed_server: QwedApiServer, qwed_api_key: str
) -> None:
    statuses: list[int] = []
    with httpx.Client(
        base_url=qwed_server.base_url, headers={"X-API-Key": qwed_api_key}, timeout=10
    ) as http:
        for _ in range(100):
            statuses.append(http.post("/verify/math", json={"expression": "2 * 3 = 6"}).status_code)
        limited = http.post("/verify/math", json={"expression": "2 * 3 = 6"})
    assert statuses == [200] * 100
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # Another key has its own budget.
    fresh = httpx.post(
        f"{qwed_server.base_url}/verify/math",
        json={"expression": "2 * 3 = 6"},
        headers={"X-API-Key": qwed_server.new_api_key()},
        timeout=10,
    )
    assert fresh.status_code == 200


def test_pause_hangs_resume_answers_kill_refuses() -> None:
    with QwedApiServer() as server:
        key = server.new_api_key()
        server.pause()
        assert server.paused and server.running
        assert "paused" in repr(server)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{server.base_url}/health", timeout=0.2)
        server.resume()
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
        sdk = QWEDClient(api_key=key, base_url=server.base_url, timeout=5)
        assert sdk.verify_math("3 + 4 = 7").is_verified
        server.kill()
        assert not server.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/health", timeout=1)
        with pytest.raises(httpx.ConnectError):
            sdk.verify_math("3 + 4 = 7")
        sdk.close()
    assert "stopped" in repr(server)


def test_no_secret_in_repr_errors_or_log(qwed_server: QwedApiServer) -> None:
    values = list(qwed_server._secrets.values())
    assert len(values) == 4 and all(len(v) >= 32 for v in values)
    qwed_server.new_api_key()
    shown = [repr(qwed_server), str(qwed_server), qwed_server.log_text()]
    with pytest.raises(QwedApiServerError) as refused:
        qwed_server._post("/auth/api-keys", {"name": "x"}, token="not-a-token")
    shown.append(str(refused.value))
    assert qwed_server.log_text()
    for text in shown:
        for value in values:
            assert value not in text


def test_startup_failure_names_the_log_tail() -> None:
    server = QwedApiServer(env={"QWED_RATE_LIMIT_PER_IP": "0"}, startup_timeout=30)
    with pytest.raises(QwedApiServerError, match="exited with code") as failed:
        server.start()
    assert "QWED_RATE_LIMIT_PER_IP" in str(failed.value)
    assert not server.running
    for value in server._secrets.values():
        assert value not in str(failed.value)


# ------------------------------------------------------------- the simulator's translations
#
# What the real server makes of the simulator's replies. The SDK's `is_verified` is False for
# every one of them: /verify/natural_language never admits (the translation's meaning is not
# proven, admission BLOCKED) and /verify/logic returns no `is_valid`, so the verdict lives in
# `status` and the result's fields.

NL = "What is 15% of 200?"
LOAN = "What is the monthly payment on a $200,000 loan at 6% for 30 years?"


def _client(server: QwedApiServer) -> QWEDClient:
    return QWEDClient(api_key=server.new_api_key(), base_url=server.base_url, timeout=30)


def test_correct_nl_math_is_verified_but_not_admitted(client: QWEDClient) -> None:
    for query, value in ((NL, 30.0), (LOAN, 1199.10105)):
        result = client.verify(query)
        assert (result.status, result.is_verified, result.admission, result.error) == (
            "VERIFIED",
            False,
            "BLOCKED",
            None,
        )
        assert result.result["is_valid"] is True
        assert result.result["developer_fields"]["status"] == "VERIFIED"
        assert result.result["calculated_value"] == pytest.approx(value)


def test_logic_sat_and_unsat(client: QWEDClient) -> None:
    sat = client.verify_logic("x > 3 and x < 5")
    assert (sat.status, sat.is_verified, sat.admission, sat.error) == (
        "VERIFIED",
        False,
        None,
        None,
    )
    assert sat.result["model"] == {"x": "4"}
    assert sat.result["dsl_code"] == "(AND (GT x 3) (LT x 5))"
    for query in ("x > 5 and x < 3", "Is there an integer x such that x > 3 and x < 4?"):
        unsat = client.verify_logic(query)
        assert (unsat.status, unsat.is_verified, unsat.admission, unsat.error) == (
            "UNVERIFIABLE",
            False,
            None,
            None,
        )
        assert unsat.result["developer_fields"]["status"] == "UNSAT"
    words = client.verify_logic("Find x and y such that x + y == 10, x > y, y is at least 3")
    assert words.status == "VERIFIED"
    model = {k: int(v) for k, v in words.result["model"].items()}
    assert model["x"] + model["y"] == 10 and model["x"] > model["y"] >= 3


def test_outside_the_forms(client: QWEDClient) -> None:
    math = client.verify("Who won the game?")
    assert (math.status, math.admission, math.error) == ("UNVERIFIABLE", "BLOCKED", None)
    logic = client.verify_logic("Who won the game?")
    assert (logic.status, logic.admission) == ("BLOCKED", None)
    assert logic.error == "No constraints generated from natural language query"


class Switchable:
    """A simulator on a fixed port that a test restarts with the options it needs."""

    def __init__(self) -> None:
        with SimulatedLLM() as probe:
            self.port = probe.port
        self.llm: SimulatedLLM | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def run(self, **options: Any) -> SimulatedLLM:
        self.stop()
        self.llm = SimulatedLLM(port=self.port, **options).start()
        return self.llm

    def stop(self) -> None:
        if self.llm is not None:
            self.llm.stop()
            self.llm = None


@pytest.fixture(scope="module")
def switchable() -> Iterator[Switchable]:
    sim = Switchable()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def fault_server(switchable: Switchable) -> Iterator[QwedApiServer]:
    with QwedApiServer(llm_base_url=switchable.base_url) as server:
        yield server


def test_wrong_answers(fault_server: QwedApiServer, switchable: Switchable) -> None:
    llm = switchable.run(wrong_answer=1.0)
    client = _client(fault_server)
    wrong = client.verify(NL)
    assert (wrong.status, wrong.is_verified, wrong.admission, wrong.error) == (
        "VERIFIED",
        False,
        "BLOCKED",
        None,
    )
    assert wrong.result["is_valid"] is False
    assert wrong.result["developer_fields"]["status"] == "DISPROVEN"
    assert wrong.result["claimed_value"] != 30.0 and wrong.result["calculated_value"] == 30.0
    # A wrong logic translation negates the last clause: an UNSAT question comes back SAT.
    flipped = client.verify_logic("x > 5 and x < 3")
    assert flipped.status == "VERIFIED"
    assert flipped.result["dsl_code"] == "(AND (GT x 5) (NOT (LT x 3)))"
    assert llm.stats()["replies"]["wrong_answer"] == 2
    assert llm.stats()["prompts"]["translation"] == llm.stats()["prompts"]["logic"] == 1


def test_malformed_translations(fault_server: QwedApiServer, switchable: Switchable) -> None:
    llm = switchable.run(unevaluable=1.0)
    client = _client(fault_server)
    math = client.verify(NL)
    assert (math.status, math.is_verified, math.admission, math.error) == (
        "UNVERIFIABLE",
        False,
        "BLOCKED",
        None,
    )
    assert math.result["constraint_id"] == "math.legacy_inconclusive"
    logic = client.verify_logic("x > 3 and x < 5")
    assert (logic.status, logic.is_verified, logic.admission, logic.error) == (
        "BLOCKED",
        False,
        None,
        "LLM translation failed",
    )
    assert llm.stats()["replies"]["unevaluable"] == 2


@pytest.mark.parametrize("down", ["503", "stopped"])
def test_llm_down(fault_server: QwedApiServer, switchable: Switchable, down: str) -> None:
    if down == "503":
        llm = switchable.run(script=[503, 503])
    else:
        switchable.stop()
    client = _client(fault_server)
    math = client.verify(NL)
    assert (math.status, math.is_verified, math.admission, math.error) == (
        "UNVERIFIABLE",
        False,
        "BLOCKED",
        None,
    )
    assert math.result["constraint_id"] == "math.legacy_inconclusive"
    logic = client.verify_logic("x > 3 and x < 5")
    assert (logic.status, logic.is_verified, logic.admission, logic.error) == (
        "BLOCKED",
        False,
        None,
        "LLM translation failed",
    )
    if down == "503":
        assert llm.stats()["replies"]["error_503"] == 2


# ------------------------------------------------------------------- the replies themselves


def test_server_prompts_are_classified_by_their_system_message() -> None:
    math_system = (
        "You are a mathematical expression translator.\nConvert natural language math to "
        "formal expressions."
    )
    logic_system = "You are a Logic Translator for Z3. Convert to variables and constraints."
    refine_system = 'You are a Logic Translator. Fix based on error: "bad"'
    assert classify_prompt(NL, system=math_system) == ("translation", NL)
    assert classify_prompt("x > 3", system=logic_system) == ("logic", "x > 3")
    assert classify_prompt("x > 3", system=refine_system) == ("logic", "x > 3")
    assert classify_prompt("hello", system="You are helpful.") == ("other", "hello")


def test_translation_json() -> None:
    assert json.loads(questions.translation_for(NL)) == {
        "expression": "15/100*200",
        "claimed_answer": 30,
        "reasoning": "percent of for: What is 15% of 200?",
        "confidence": 0.95,
    }
    loan = json.loads(questions.translation_for(LOAN))
    assert "sympy" not in loan["expression"] and "int(" not in loan["expression"]
    assert loan["claimed_answer"] == pytest.approx(1199.101050305505)
    assert json.loads(questions.wrong_translation_for(NL, 0.3))["claimed_answer"] != 30
    other = json.loads(questions.translation_for("Who won the game?"))
    assert other["expression"] == "0" and other["confidence"] < 0.5
    with pytest.raises(json.JSONDecodeError):
        json.loads(questions.unevaluable_translation_for(NL))


@pytest.mark.parametrize(
    ("query", "variables", "constraints"),
    [
        ("x > 3 and x < 5", {"x": "Int"}, ["x > 3", "x < 5"]),
        ("Is it possible that a = 2 and a != 2?", {"a": "Int"}, ["a == 2", "a != 2"]),
        ("3 < x < 5", {"x": "Int"}, ["3 < x < 5"]),
        ("x is greater than 3 and x is less than 5", {"x": "Int"}, ["x > 3", "x < 5"]),
        ("x < 0 or x > 10", {"x": "Int"}, ["x < 0 or x > 10"]),
        ("Real numbers x such that x > 3 and x < 4", {"x": "Real"}, ["x > 3", "x < 4"]),
        ("x > 3 AND y < x; y >= 1", {"x": "Int", "y": "Int"}, ["x > 3", "y < x", "y >= 1"]),
    ],
)
def test_logic_translation(query: str, variables: dict[str, str], constraints: list[str]) -> None:
    assert json.loads(questions.logic_translation_for(query)) == {
        "variables": variables,
        "constraints": constraints,
        "goal": "SATISFIABILITY",
    }


@pytest.mark.parametrize("query", ["Who won the game?", "x > 3.5", "x > 'a'", "f(x) > 1", ""])
def test_logic_outside_the_forms_has_no_constraints(query: str) -> None:
    assert questions.translate_logic(query) is None
    assert json.loads(questions.logic_translation_for(query))["constraints"] == []
