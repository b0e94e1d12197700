"""The canonical stack end to end: QWEDLocal over HTTP to the simulator, an outage of 503s,
`@fallback` outside `@alert_on_failures` outside `@retry`, and alerts posted to a webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qwed_guard import Outcome, fallback, guarded_client, retry
from qwed_guard.alerts import alert_on_failures, flush
from qwed_guard.alerts.delivery import shutdown
from qwed_guard.alerts.layer import DEFAULT_STORE
from qwed_guard.clock import FakeClock
from qwed_guard.sim import SimulatedLLM


class _Hook(BaseHTTPRequestHandler):
    received: list[Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    DEFAULT_STORE.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    shutdown(2.0)
    DEFAULT_STORE.clear()
    server.shutdown()
    server.server_close()
    thread.join(2)


def test_outage_alerts_once_and_resolves_through_the_canonical_stack(
    webhook: tuple[str, list[Any]], fake_clock: FakeClock
) -> None:
    url, received = webhook
    # Six 503s: three calls of two attempts each fail; then the simulator is healthy.
    with SimulatedLLM(script=["503"] * 6) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5.0)

        @fallback(value=100.0)
        @alert_on_failures(threshold=3, notify=[{"webhook": {"url": url}}], retry_delays=(0.01,))
        @retry(max_tries=2, jitter=None)
        def interest(query: str) -> Any:
            return client.verify_math(query)

        results = [interest("Calculate 10% interest on $1000") for _ in range(4)]
        assert [r.source for r in results] == ["fallback"] * 3 + ["verified"]
        assert results[0].outcome is Outcome.TRANSIENT and results[0].attempts == 2
        assert float(results[3].value) == 100.0
        assert llm.stats()["requests"] == 8  # 6 failed answer prompts, then answer + SymPy
    assert fake_clock.waits == [1.0, 1.0, 1.0]  # one backoff per failed call, never slept
    assert [a.kind for a in interest.alerts] == ["triggered", "resolved"]
    trigger, resolved = interest.alerts
    assert trigger.failures == 3 and trigger.outcome is Outcome.TRANSIENT
    assert "503" in (trigger.error or "")
    assert resolved.dedup_key == trigger.dedup_key
    assert flush(5)
    assert [body["kind"] for body in received] == ["triggered", "resolved"]
    assert received[0] == trigger.to_dict()
