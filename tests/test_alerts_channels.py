"""Alert channels against real local servers, and delivery that never slows the guarded call.

HTTP channels post to a stdlib server on 127.0.0.1; email goes to an aiosmtpd server on
127.0.0.1. Delivery retry delays are set to milliseconds so nothing waits long.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from loguru import logger

from qwed_guard.alerts import Alert, AlertLayer, alert_on_failures, flush
from qwed_guard.alerts.channels.slack import slack_text
from qwed_guard.alerts.delivery import Worker, shutdown
from qwed_guard.alerts.layer import DEFAULT_STORE
from qwed_guard.clock import FakeClock

FAST = (0.01, 0.01, 0.01)  # delivery retry delays: four attempts within milliseconds
ROUTING_KEY = "R0ut1ngKeyR0ut1ngKeyR0ut1ngKey00"


class Answer:
    def __init__(self, verified: bool, error: str | None = None) -> None:
        self.verified = verified
        self.value = "4" if verified else None
        self.error = error


OK = Answer(True)
DOWN = Answer(False, "LLM call failed: Error code: 503 - Service Unavailable")


# ---------------------------------------------------------------- a real HTTP server


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"status": "success"}'
    hang: bool = False


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.plans: dict[str, list[Reply]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def plan(self, path: str, *replies: Reply) -> None:
        self.plans[path] = list(replies)

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [r.body for r in self.received if r.path == path]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [r.at for r in self.received if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        server = self.server
        with server.lock:
            server.received.append(
                Received(self.path, dict(self.headers), json.loads(raw), time.monotonic())
            )
            plan = server.plans.get(self.path) or []
            reply = plan.pop(0) if plan else Reply()
        if reply.hang:
            server.release.wait(10)
        body = reply.body.encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client timed out and left

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield server
    server.release.set()
    shutdown(2.0)
    server.shutdown()
    server.server_close()
    thread.join(2)


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    DEFAULT_STORE.clear()
    yield
    shutdown(2.0)
    DEFAULT_STORE.clear()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def guarded(**params: Any) -> Any:
    params.setdefault("retry_delays", FAST)

    @alert_on_failures(**params)
    def verify(reply: Any) -> Any:
        return reply

    return verify


def layer_of(fn: Any) -> AlertLayer:
    layer = fn.find_layer("alert_on_failures")
    assert isinstance(layer, AlertLayer)
    return layer


def worker_of(fn: Any, index: int = 0) -> Worker:
    return layer_of(fn).workers[index]


# ---------------------------------------------------------------- webhook


def test_webhook_posts_the_alert_as_json(http: Recorder, fake_clock: FakeClock) -> None:
    verify = guarded(
        threshold=2,
        notify=[
            {"webhook": {"url": http.url("/hook"), "headers": {"Authorization": "Bearer t0k"}}}
        ],
    )
    verify(DOWN)
    verify(DOWN)
    fake_clock.advance(90)
    verify(OK)
    assert layer_of(verify).flush(5)
    name = f"{__name__}.guarded.<locals>.verify"
    assert http.bodies("/hook") == [
        {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "key": name,
            "kind": "triggered",
            "message": f"{name}: 2 consecutive failures (last outcome: transient: "
            "LLM call failed: Error code: 503 - Service Unavailable)",
            "failures": 2,
            "outcome": "transient",
            "error": "LLM call failed: Error code: 503 - Service Unavailable",
            "function": name,
            "policy_hash": None,
            "dedup_key": f"qwed-guard:{name}",
            "reason": "consecutive",
            "failure_rate": None,
        },
        {
            "timestamp": "2026-01-01T00:01:30.000Z",
            "key": name,
            "kind": "resolved",
            "message": f"{name}: recovered after 2 consecutive failures",
            "failures": 2,
            "outcome": "verified",
            "error": None,
            "function": name,
            "policy_hash": None,
            "dedup_key": f"qwed-guard:{name}",
            "reason": "consecutive",
            "failure_rate": None,
        },
    ]
    assert http.received[0].headers["Authorization"] == "Bearer t0k"
    assert http.received[0].headers["Content-Type"] == "application/json"


# ---------------------------------------------------------------- slack


def test_slack_posts_text_and_keeps_a_minimum_interval(
    http: Recorder, fake_clock: FakeClock
) -> None:
    verify = guarded(
        threshold=1, notify=[{"slack": {"webhook_url": http.url("/slack"), "min_interval": 0.2}}]
    )
    verify(DOWN)
    verify(OK)
    assert flush(5)
    trigger, resolved = verify.alerts
    name = trigger.key
    assert http.bodies("/slack") == [
        {
            "text": f":rotating_light: *[qwed-guard] TRIGGERED {name}*\n"
            f"{name}: 1 consecutive failure (last outcome: transient: "
            "LLM call failed: Error code: 503 - Service Unavailable)\n"
            f"function: {name} | failures: 1 | outcome: transient\n"
            f"at: 2026-01-01T00:00:00.000Z | dedup_key: qwed-guard:{name}"
        },
        {"text": slack_text(resolved)},
    ]
    assert http.bodies("/slack")[1]["text"].startswith(":white_check_mark: *[qwed-guard] RESOLVED")
    first, second = http.times("/slack")
    assert second - first >= 0.2


def test_slack_429_retry_after_is_honoured(http: Recorder, fake_clock: FakeClock) -> None:
    http.plan("/slack", Reply(429, {"Retry-After": "0.3"}, "rate_limited"), Reply(200, body="ok"))
    verify = guarded(
        threshold=1, notify=[{"slack": {"webhook_url": http.url("/slack"), "min_interval": 0}}]
    )
    verify(DOWN)
    assert flush(5)
    first, second = http.times("/slack")
    assert second - first >= 0.3  # the server's wait, not the 10 ms retry delay
    assert http.bodies("/slack")[0] == http.bodies("/slack")[1]
    assert worker_of(verify).sent == 1


# ---------------------------------------------------------------- pagerduty


def test_pagerduty_trigger_then_resolve_on_one_dedup_key(
    http: Recorder, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWED_GUARD_TEST_PD", ROUTING_KEY)
    for _ in range(2):
        http.plan("/v2/enqueue", Reply(202), Reply(202))
    channel = {
        "pagerduty": {
            "routing_key_env": "QWED_GUARD_TEST_PD",
            "url": http.url("/v2/enqueue"),
            "severity": "critical",
            "source": "worker-7.example.com",
        }
    }
    verify = guarded(threshold=3, key="llm-math", notify=[channel])
    for _ in range(3):
        verify(DOWN)
    fake_clock.advance(5)
    verify(OK)
    assert flush(5)
    trigger, resolve = http.bodies("/v2/enqueue")
    assert trigger == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "qwed-guard:llm-math",
        "client": "qwed-guard",
        "payload": {
            "summary": "llm-math: 3 consecutive failures (last outcome: transient: "
            "LLM call failed: Error code: 503 - Service Unavailable)",
            "source": "worker-7.example.com",
            "severity": "critical",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "component": f"{__name__}.guarded.<locals>.verify",
            "group": "llm-math",
            "class": "transient",
            "custom_details": {
                key: value for key, value in verify.alerts[0].to_dict().items() if key != "message"
            },
        },
    }
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "qwed-guard:llm-math",
    }


def test_pagerduty_required_fields_and_default_severity(
    http: Recorder, fake_clock: FakeClock
) -> None:
    channel = {"pagerduty": {"routing_key": ROUTING_KEY, "url": http.url("/pd")}}
    verify = guarded(threshold=1, notify=[channel], repeat_interval=60)
    verify(DOWN)
    fake_clock.advance(60)
    verify(DOWN)
    assert flush(5)
    events = http.bodies("/pd")
    assert [e["event_action"] for e in events] == ["trigger", "trigger"]  # the repeat updates it
    assert len({e["dedup_key"] for e in events}) == 1
    for event in events:
        payload = event["payload"]
        assert event["routing_key"] == ROUTING_KEY
        assert payload["severity"] == "error"
        assert payload["source"] == socket.gethostname()
        assert 0 < len(payload["summary"]) <= 1024
    assert events[1]["payload"]["custom_details"]["kind"] == "repeat"


def test_pagerduty_400_is_not_retried_and_the_key_is_never_logged(
    http: Recorder, fake_clock: FakeClock, logs: list[str]
) -> None:
    http.plan("/pd", Reply(400, body=f'{{"message": "Invalid routing_key {ROUTING_KEY}"}}'))
    channel = {"pagerduty": {"routing_key": ROUTING_KEY, "url": http.url("/pd")}}
    verify = guarded(threshold=1, notify=[channel])
    verify(DOWN)
    assert flush(5)
    assert len(http.bodies("/pd")) == 1
    assert worker_of(verify).failed == 1
    failure = [line for line in logs if "not delivered to pagerduty" in line]
    assert len(failure) == 1 and "after 1 attempt:" in failure[0] and "HTTP 400" in failure[0]
    assert all(ROUTING_KEY not in line for line in logs)


# ---------------------------------------------------------------- retries and failures


def test_500_is_retried_until_delivered(http: Recorder, fake_clock: FakeClock) -> None:
    http.plan("/hook", Reply(500), Reply(503), Reply(200))
    verify = guarded(threshold=1, notify=[{"webhook": {"url": http.url("/hook")}}])
    verify(DOWN)
    assert flush(5)
    bodies = http.bodies("/hook")
    assert len(bodies) == 3 and bodies[0] == bodies[2]
    worker = worker_of(verify)
    assert (worker.sent, worker.failed, worker.attempts) == (1, 0, 3)


def test_refused_connection_is_retried_then_logged_without_the_url(
    fake_clock: FakeClock, logs: list[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/s3cr3t-path"
    verify = guarded(threshold=1, notify=[{"webhook": {"url": url}}])
    verify(DOWN)
    assert flush(5)
    worker = worker_of(verify)
    assert (worker.attempts, worker.failed) == (4, 1)
    failure = [line for line in logs if "not delivered" in line]
    assert len(failure) == 1 and "after 4 attempts" in failure[0]
    assert all("s3cr3t-path" not in line for line in logs)


def test_a_hanging_or_failing_channel_does_not_slow_the_call(
    http: Recorder, fake_clock: FakeClock
) -> None:
    http.plan("/hang", *[Reply(hang=True)] * 8)
    http.plan("/fail", *[Reply(500)] * 8)
    threads: list[str] = []
    verify = guarded(
        threshold=1,
        timeout=0.2,
        notify=[
            {"webhook": {"url": http.url("/hang")}},
            {"webhook": {"url": http.url("/fail")}},
            lambda alert: threads.append(threading.current_thread().name),
        ],
    )
    started = time.perf_counter()
    assert verify(DOWN) is DOWN
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1  # the channel's timeout is 0.2 s: the call did not wait for it
    assert flush(5)
    # Delivery ran elsewhere and was retried: four attempts each, within their timeouts.
    assert threads and threads[0] != threading.current_thread().name
    assert threads[0].startswith("qwed-guard-alerts:")
    assert len(http.bodies("/hang")) == 4 and len(http.bodies("/fail")) == 4
    assert worker_of(verify, 0).failed == worker_of(verify, 1).failed == 1


def test_added_latency_with_broken_channels_is_negligible(
    http: Recorder, fake_clock: FakeClock
) -> None:
    """p99 of a failing call with a hanging and a 500 channel vs. the same with no channel."""
    http.plan("/hang", *[Reply(hang=True)] * 2000)
    http.plan("/fail", *[Reply(500)] * 2000)
    baseline = guarded(threshold=1, repeat_interval=0, notify=[])
    broken = guarded(
        threshold=1,
        repeat_interval=0,
        timeout=0.2,
        notify=[{"webhook": {"url": http.url("/hang")}}, {"webhook": {"url": http.url("/fail")}}],
    )
    base_times: list[float] = []
    broken_times: list[float] = []
    for _ in range(1000):  # every call alerts (repeat_interval=0): queues fill, then drop
        for fn, times in ((baseline, base_times), (broken, broken_times)):
            started = time.perf_counter()
            fn(DOWN)
            times.append(time.perf_counter() - started)
    p99_base = statistics.quantiles(base_times, n=100)[98]
    p99_broken = statistics.quantiles(broken_times, n=100)[98]
    added = p99_broken - p99_base
    print(
        f"\nalert delivery latency: p50 {statistics.median(base_times) * 1e6:.1f} us -> "
        f"{statistics.median(broken_times) * 1e6:.1f} us, p99 {p99_base * 1e6:.1f} us -> "
        f"{p99_broken * 1e6:.1f} us (added {added * 1e6:.1f} us)"
    )
    assert len(broken.alerts) == 100  # history keeps the last 100
    assert worker_of(broken, 0).pending > 0  # the hanging channel is still busy
    assert added < 0.005


def test_a_full_queue_drops_and_says_so_without_blocking(
    http: Recorder, fake_clock: FakeClock, logs: list[str]
) -> None:
    http.plan("/hang", *[Reply(hang=True)] * 10)
    verify = guarded(
        threshold=1,
        repeat_interval=0,
        timeout=5.0,
        queue_size=2,
        notify=[{"webhook": {"url": http.url("/hang")}}],
    )
    started = time.perf_counter()
    for _ in range(20):
        verify(DOWN)
    assert time.perf_counter() - started < 0.5
    worker = worker_of(verify)
    assert worker.dropped >= 17  # one in flight, two queued
    drops = [line for line in logs if "is full" in line]
    assert len(drops) == 1  # rate-limited, not one line per dropped alert


def test_a_crashing_callable_is_logged_and_not_retried(
    fake_clock: FakeClock, logs: list[str]
) -> None:
    calls: list[Alert] = []

    def broken(alert: Alert) -> None:
        calls.append(alert)
        raise ValueError("formatting bug")

    verify = guarded(threshold=1, notify=[broken])
    verify(DOWN)
    assert flush(5)
    assert len(calls) == 1
    assert any("ValueError: formatting bug" in line for line in logs)


def test_log_channel_writes_the_alert_through_loguru(fake_clock: FakeClock) -> None:
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="INFO")
    try:
        verify = guarded(threshold=1, notify=["log"])
        verify(DOWN)
        verify(OK)
        assert flush(5)
    finally:
        logger.remove(sink)
    ours = [r for r in records if "alert" in r["extra"]]
    assert [r["level"].name for r in ours] == ["ERROR", "INFO"]
    assert ours[0]["message"].startswith("[qwed-guard] TRIGGERED")
    assert ours[0]["extra"]["alert"] == verify.alerts[0].to_dict()


def test_pending_alerts_are_flushed_at_exit(http: Recorder, tmp_path: Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from qwed_guard.alerts import alert_on_failures

            url = {http.url("/exit")!r}

            @alert_on_failures(threshold=1, notify=[{{"webhook": {{"url": url}}}}])
            def verify():
                raise ConnectionError("down")

            try:
                verify()
            except ConnectionError:
                pass
            # no flush: the interpreter's exit must deliver it
            """
        )
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert [body["kind"] for body in http.bodies("/exit")] == ["triggered"]


def test_exit_is_bounded_when_a_channel_hangs(http: Recorder, tmp_path: Path) -> None:
    http.plan("/hang", Reply(hang=True))
    script = tmp_path / "hang.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from qwed_guard.alerts import alert_on_failures, delivery

            delivery.EXIT_FLUSH_TIMEOUT = 0.5
            @alert_on_failures(
                threshold=1, timeout=30, notify=[{{"webhook": {{"url": {http.url("/hang")!r}}}}}]
            )
            def verify():
                raise ConnectionError("down")

            try:
                verify()
            except ConnectionError:
                pass
            print(time.monotonic(), flush=True)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], check=True, timeout=60, capture_output=True, text=True
    )
    exited = time.monotonic()
    assert exited - float(done.stdout.strip()) < 3.0  # 0.5 s flush bound plus teardown
    assert "not delivered" in done.stderr or "exiting with 1 alert" in done.stderr


# ---------------------------------------------------------------- email


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"p4ssw0rd", handled=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    options: dict[str, Any] = getattr(request, "param", {})
    kwargs: dict[str, Any] = {"authenticator": mailbox.authenticate, "auth_require_tls": False}
    if options.get("tls"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert, key = _self_signed(tmp_path)
        context.load_cert_chain(cert, key)
        kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    yield mailbox, port
    controller.stop()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for `localhost`, which the channel is told to trust with `cafile`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _email(port: int, **extra: Any) -> dict[str, Any]:
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "qwed-guard@example.com",
        "to": ["oncall@example.com", "team@example.com"],
        "timeout": 5,
        **extra,
    }
    return {"email": settings}


def test_email_is_delivered_over_smtp(
    smtp_server: tuple[Mailbox, int], fake_clock: FakeClock
) -> None:
    mailbox, port = smtp_server
    verify = guarded(threshold=1, key="billing", notify=[_email(port)])
    verify(DOWN)
    assert flush(5)
    (envelope,) = mailbox.envelopes
    assert envelope.mail_from == "qwed-guard@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "team@example.com"]
    import email

    message = email.message_from_bytes(envelope.original_content or b"")
    assert message["Subject"].startswith("[qwed-guard] TRIGGERED billing: billing: 1 consecutive")
    assert message["X-QWED-Guard-Dedup-Key"] == "qwed-guard:billing"
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert body == verify.alerts[0].text() + "\n"
    assert mailbox.logins == []


def test_email_login_with_password_from_the_environment(
    smtp_server: tuple[Mailbox, int], fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox, port = smtp_server
    monkeypatch.setenv("QWED_GUARD_TEST_SMTP_PASSWORD", "p4ssw0rd")
    channel = _email(port, username="alerts", password_env="QWED_GUARD_TEST_SMTP_PASSWORD")
    verify = guarded(threshold=1, notify=[channel])
    verify(DOWN)
    assert flush(5)
    assert mailbox.logins == [(b"alerts", b"p4ssw0rd")]
    assert len(mailbox.envelopes) == 1


@pytest.mark.parametrize("smtp_server", [{"tls": True}], indirect=True)
def test_email_with_starttls(
    smtp_server: tuple[Mailbox, int], fake_clock: FakeClock, tmp_path: Path, logs: list[str]
) -> None:
    mailbox, port = smtp_server
    channel = _email(
        port,
        host="localhost",
        starttls=True,
        cafile=str(tmp_path / "cert.pem"),
        username="alerts",
        password="p4ssw0rd",
    )
    verify = guarded(threshold=1, notify=[channel])
    verify(DOWN)
    assert flush(5)
    assert len(mailbox.envelopes) == 1, logs
    assert mailbox.logins == [(b"alerts", b"p4ssw0rd")]
    # Without STARTTLS the server refuses the mail: a 5xx is not retried.
    plain = guarded(threshold=1, key="plain", notify=[_email(port, host="localhost")])
    plain(DOWN)
    assert flush(5)
    assert len(mailbox.envelopes) == 1
    assert worker_of(plain).attempts == 1 and worker_of(plain).failed == 1


def test_a_refused_recipient_is_not_retried(
    smtp_server: tuple[Mailbox, int], fake_clock: FakeClock
) -> None:
    mailbox, port = smtp_server
    verify = guarded(threshold=1, notify=[_email(port, to=["nobody@example.com"])])
    verify(DOWN)
    assert flush(5)
    assert mailbox.envelopes == []
    assert worker_of(verify).attempts == 1 and worker_of(verify).failed == 1


def test_a_wrong_smtp_password_is_not_retried(
    smtp_server: tuple[Mailbox, int], fake_clock: FakeClock, logs: list[str]
) -> None:
    mailbox, port = smtp_server
    verify = guarded(threshold=1, notify=[_email(port, username="alerts", password="wr0ngpass")])
    verify(DOWN)
    assert flush(5)
    assert worker_of(verify).attempts == 1 and mailbox.envelopes == []
    assert all("wr0ngpass" not in line for line in logs)


# ---------------------------------------------------------------- the CLI


def _cli(*argv: str) -> int:
    import argparse

    from qwed_guard.alerts.cli import register

    parser = argparse.ArgumentParser(prog="qwed-guard")
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    code: int = args.run(args)
    return code


def test_cli_sends_a_test_alert_and_its_resolve(
    http: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    notify = json.dumps([{"webhook": {"url": http.url("/hook")}}])
    assert _cli("alerts", "test", notify, "--key", "smoke") == 0
    assert [b["kind"] for b in http.bodies("/hook")] == ["triggered", "resolved"]
    assert {b["dedup_key"] for b in http.bodies("/hook")} == {"qwed-guard:smoke"}
    assert capsys.readouterr().out == "webhook(127.0.0.1): 2/2 delivered: ok\n"


def test_cli_exits_1_when_a_channel_refuses(
    http: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    http.plan("/hook", Reply(403))
    notify = json.dumps({"webhook": {"url": http.url("/hook")}})
    assert _cli("alerts", "test", notify, "--no-resolve") == 1
    assert "0/1 delivered: FAILED" in capsys.readouterr().out
    assert _cli("alerts", "test", '[{"teams": {}}]') == 2
    assert "unknown channel 'teams'" in capsys.readouterr().err
