"""Canaries planted in every secret form, searched for in every output: the audit trail, the
alert history and what receivers got, logs, exception messages, and the CLIs' output."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from qwed_guard import FallbackError, alert_on_failures, audited, fallback, retry
from qwed_guard.alerts.channels.pagerduty import PagerDutyChannel
from qwed_guard.alerts.delivery import Worker, shutdown
from qwed_guard.alerts.layer import DEFAULT_STORE
from qwed_guard.audit.cli import main as audit_main
from qwed_guard.errors import ParameterError
from qwed_guard.policy.cli import check

QUERY_PASSWORD = "CANARYqp01"
DSN_PASSWORD = "CANARYdsn02"
API_KEY_HEADER = "CANARYhdr03"
ROUTING_KEY = "CANARYpd04routingkey0123456789ab"
HOOK_TOKEN = "CANARYhook05T0K3N"
HANDLER_PASSWORD = "CANARYfb06"
URL_PASSWORD = "CANARYurl07"
YAML_PASSWORD = "CANARYyaml08"
QUERY = "What is CANARYq09 + 1?"
KEY_ENV = "QWED_GUARD_SECRETS_REDACT_KEY"

PROVIDER_ERROR = (
    f"LLM call failed: Error code: 401 - GET https://api.example.com/v1?password={QUERY_PASSWORD}"
    f" (pool host=db port=5432 password={DSN_PASSWORD} user=app; headers "
    f"{{'x-api-key': '{API_KEY_HEADER}'}}) while asking {QUERY!r}"
)
CANARIES = (
    QUERY_PASSWORD,
    DSN_PASSWORD,
    API_KEY_HEADER,
    ROUTING_KEY,
    HOOK_TOKEN,
    HANDLER_PASSWORD,
    URL_PASSWORD,
    YAML_PASSWORD,
)
TRAIL_ONLY = ("CANARYq09",)
"""redact="hmac" keeps the query out of the audit trail (and what the CLI shows of it); the
caller's own result and the alerts keep the provider's (scrubbed) error as it was."""


@dataclass
class Result:
    verified: bool
    value: Any = None
    confidence: float = 0.0
    error: str | None = None


class Echo(ThreadingHTTPServer):
    """A receiver that refuses everything and echoes the path and body back, as many do."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.bodies: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _EchoHandler(BaseHTTPRequestHandler):
    server: Echo
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        self.server.bodies.append(body)
        reply = f"no such hook {self.path}; you sent {body}".encode()
        self.send_response(400)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield server
    shutdown(2.0)
    server.shutdown()
    server.server_close()
    thread.join(2)
    DEFAULT_STORE.clear()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def assert_clean(where: str, text: str) -> None:
    trail = where in ("audit trail", "CLI output")
    for canary in CANARIES + (TRAIL_ONLY if trail else ()):
        if where == "what receivers got" and canary == ROUTING_KEY:
            continue  # PagerDuty itself must get its routing key
        assert canary not in text, f"{canary} leaked into {where}: {text[:400]}"


def test_no_canary_reaches_any_output(
    tmp_path: Path,
    echo: Echo,
    logs: list[str],
    fake_clock: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, "redaction-key-0123456789abcdef")
    trail = tmp_path / "audit.jsonl"
    outputs: dict[str, str] = {}

    @audited(sink=f"jsonl:{trail}", redact="hmac", redact_key_env=KEY_ENV, fsync="none")
    @fallback(value=0)
    @alert_on_failures(
        threshold=1,
        notify=[{"webhook": {"url": echo.url(f"/hooks/{HOOK_TOKEN}")}}],
        retry_delays=[],
    )
    @retry(max_tries=2, jitter=None)
    def ask(query: str) -> Result:
        return Result(False, error=PROVIDER_ERROR)

    result = ask(QUERY)
    outputs["result"] = f"{result!r} {result.error} {result.reason}"
    outputs["alert history"] = json.dumps([a.to_dict() for a in ask.alerts])  # type: ignore[attr-defined]

    # A PagerDuty channel built directly (not from options) whose receiver echoes its key.
    pagerduty = PagerDutyChannel(ROUTING_KEY, url=echo.url("/v2/enqueue"), timeout=2.0)
    worker = Worker(pagerduty, retry_delays=[])
    worker.submit(ask.alerts[-1])  # type: ignore[attr-defined]
    assert worker.flush(5.0) and worker.failed == 1
    worker.stop()
    from qwed_guard.alerts.delivery import flush

    assert flush(5.0)

    # A fallback handler whose own error holds a password.
    def handler(failure: Any, query: str) -> float:
        raise ValueError(f"cache at host=cache password={HANDLER_PASSWORD} is down")

    @fallback(handler=handler)
    def ask_again(query: str) -> Result:
        return Result(False, error="Error code: 503")

    with pytest.raises(FallbackError) as fallback_error:
        ask_again("q")
    outputs["FallbackError"] = str(fallback_error.value)

    # A bad sink URL names its password.
    with pytest.raises(ParameterError) as bad_sink:
        audited(sink=f"ftp://auditor:{URL_PASSWORD}@127.0.0.1/trail")
    outputs["bad sink URL error"] = f"{bad_sink.value} {bad_sink.value.problem}"

    # A YAML policy whose parse error quotes the line with the password.
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"retry:\n  max_tries: [password={YAML_PASSWORD}\n")
    assert check(str(policy)) == 2

    for argv in (["verify", str(trail)], ["show", str(trail)], ["stats", str(trail)]):
        audit_main(["audit", *argv])
    cli = capsys.readouterr()
    outputs["CLI output"] = cli.out + cli.err
    outputs["audit trail"] = trail.read_text()
    outputs["what receivers got"] = "\n".join(echo.bodies)
    outputs["logs"] = "\n".join(logs)

    assert "hmac-sha256:" in outputs["audit trail"]  # the query is there, as its HMAC
    assert any("not delivered" in line for line in logs)  # delivery errors were logged
    # The receivers did echo the secrets back: the logs show where they were cut out.
    assert "no such hook /***; you sent" in outputs["logs"]
    assert '{"routing_key":"***"' in outputs["logs"]
    for where, text in outputs.items():
        assert_clean(where, text)


def test_a_lost_record_is_logged_without_its_secret(logs: list[str], tmp_path: Path) -> None:
    def redactor(record: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError(f"vault at https://vault:{URL_PASSWORD}@vault.internal refused")

    @audited(sink=f"jsonl:{tmp_path / 'a.jsonl'}", redact=redactor, on_error="log")
    def ask(query: str) -> int:
        return 1

    assert ask("q") == 1
    text = "\n".join(logs)
    assert "was lost" in text and "vault.internal" in text
    assert_clean("logs", text)
