"""Every numeric option is bounded where it is given, the audit writer cannot die silently, and
an alert delivery's timeout bounds the whole delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qwed_guard import AuditError, Policy, PolicyError, audited
from qwed_guard.alerts import AlertLayer
from qwed_guard.alerts.channels.base import DeliveryError
from qwed_guard.alerts.channels.webhook import WebhookChannel
from qwed_guard.alerts.delivery import Worker
from qwed_guard.alerts.record import Alert
from qwed_guard.audit import JsonlSink
from qwed_guard.errors import ParameterError
from qwed_guard.outcomes import Outcome


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_ms", 1e308),
        ("batch_ms", float("inf")),
        ("batch_ms", float("nan")),
        ("batch_ms", 0),
        ("batch_size", 10**12),
        ("checkpoint_every", 10**12),
        ("rotate_seconds", 1e308),
        ("rotate_bytes", 2**62),
        ("keep_days", float("inf")),
        ("keep_files", 0),
    ],
)
def test_audit_numbers_are_bounded_with_the_field_named(name: str, value: Any) -> None:
    with pytest.raises(ParameterError) as caught:
        audited(sink="memory:", **{name: value})
    assert caught.value.param == name
    with pytest.raises(PolicyError, match=rf"audited\.{name}: must be"):
        Policy.from_dict({"audited": {"sink": "memory:", name: value}})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retry_delays", [1e308]),
        ("retry_delays", [float("nan")]),
        ("retry_delays", [0.1] * 21),
        ("timeout", 1e308),
        ("timeout", float("inf")),
        ("repeat_interval", 1e308),
        ("threshold", 10**12),
        ("queue_size", 10**12),
    ],
)
def test_alert_numbers_are_bounded_with_the_field_named(name: str, value: Any) -> None:
    with pytest.raises(ParameterError) as caught:
        AlertLayer(notify=["log"], **{name: value})
    assert caught.value.param == name
    with pytest.raises(PolicyError, match=rf"alert_on_failures\.{name}(\[\d+\])?: "):
        Policy.from_dict({"alert_on_failures": {"notify": ["log"], name: value}})


def test_a_worker_refuses_unbounded_delays_itself() -> None:
    channel = WebhookChannel("http://127.0.0.1:9/hook", timeout=1.0)
    with pytest.raises(ParameterError, match="retry_delays"):
        Worker(channel, retry_delays=[1e308])


class _Stuck(JsonlSink):
    """A trail on storage that stops answering (an NFS server gone): commits block."""

    def __init__(self, path: Path, release: threading.Event) -> None:
        super().__init__(path, fsync="batch", batch_ms=1)
        self.release = release

    def _commit(self, records: list[dict[str, Any]], durable: bool, **kw: Any) -> None:
        self.release.wait(5)
        super()._commit(records, durable, **kw)


class _Broken(JsonlSink):
    """A writer failure that is not an I/O error (what an unbounded timer raised)."""

    def _commit(self, records: list[dict[str, Any]], durable: bool, **kw: Any) -> None:
        raise OverflowError("timeout value is too large")


def test_any_writer_failure_fails_the_pending_calls_closed(tmp_path: Path) -> None:
    sink = _Broken(tmp_path / "audit.jsonl", fsync="batch", batch_ms=1)

    @audited(sink=sink)
    def ask(query: str) -> int:
        return 1

    with pytest.raises(AuditError):
        for _ in range(3):  # the first append queues; the failure reaches the next caller
            ask("q")
            sink.flush(timeout=2)
    with pytest.raises(AuditError, match=r"OverflowError|too large"):
        ask("q")


def test_flush_returns_by_its_timeout_when_the_writer_hangs(tmp_path: Path) -> None:
    release = threading.Event()
    sink = _Stuck(tmp_path / "audit.jsonl", release)
    sink.append([{"v": 1, "event": "attempt", "id": "x"}])
    started = time.monotonic()
    with pytest.raises(AuditError, match=r"flush timed out after 0\.05 s with 1 record"):
        sink.flush(timeout=0.05)
    assert time.monotonic() - started < 1.0
    release.set()
    sink.flush(timeout=5)
    sink.close()


class _Drip(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "400")
        self.end_headers()
        try:
            for _ in range(400):  # each byte well within a read timeout, the whole far beyond
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.01)
        except OSError:
            pass  # the client gave up: what the timeout is for

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def drip() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join(2)


def alert() -> Alert:
    return Alert(
        timestamp="2026-01-01T00:00:00.000000Z",
        key="k",
        kind="triggered",
        message="m",
        failures=1,
        outcome=Outcome.TRANSIENT,
        error=None,
        function="f",
        policy_hash=None,
        dedup_key="d",
        reason="consecutive",
    )


def test_a_delivery_timeout_bounds_the_whole_delivery(drip: str) -> None:
    channel = WebhookChannel(drip, timeout=0.15)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"took longer than 0\.15 s") as caught:
        channel.send(alert())
    assert time.monotonic() - started < 1.0  # the server would take 4 s
    assert caught.value.retryable
    channel.close()


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("circuit_breaker", "recovery_timeout", 1e308),
        ("circuit_breaker", "recovery_timeout", float("nan")),
        ("circuit_breaker", "failure_threshold", 10**15),
        ("attempt_timeout", "seconds", 1e308),
        ("attempt_timeout", "seconds", float("nan")),
    ],
)
def test_breaker_and_timeout_numbers_are_bounded(section: str, name: str, value: Any) -> None:
    with pytest.raises(PolicyError, match=rf"{section}\.{name}: must be"):
        Policy.from_dict({section: {name: value}})
