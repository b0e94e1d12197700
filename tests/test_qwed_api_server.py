"""QWED's real API server as a fixture (`qwed_server`, `qwed_api_key`), the simulator its LLM.

The fixture's server is shared by the session; the tests that kill or pause a server start their
own `QwedApiServer`. Waits are polls of a few milliseconds, never long sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from qwed_sdk import QWEDClient

from qwed_guard.sim.qwed_api import QwedApiServer, QwedApiServerError


def _poll(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


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
