"""Fixtures for the live Redis and PostgreSQL servers that `make services` starts.

A pytest plugin: list it in tests/conftest.py as `pytest_plugins = ["tests.services"]`.

The URLs come from `QWED_GUARD_REDIS_URL` / `QWED_GUARD_POSTGRES_URL`, else from the env file
that scripts/services.sh writes, else the default local ports. A test that needs a server that
is not running is skipped with the reason and the command that starts it; under CI (`CI` set)
it fails instead, because CI always starts the servers and must run those tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from benchmarks.services import HOW_TO_START, postgres_answers, redis_answers, service_url


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (under CI) a test whose server is not there."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must start it with scripts/services.sh before the tests")
    pytest.skip(f"{what}: {HOW_TO_START}")


def _tcp_answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1.0
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the live Redis started by `make services` (skips/fails when it is down)."""
    pytest.importorskip("redis", reason="the redis package (extra 'fleet') is not installed")
    url = service_url("QWED_GUARD_REDIS_URL")
    if not redis_answers(url):
        missing(f"no Redis answering at {urlsplit(url).hostname}:{urlsplit(url).port}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the live PostgreSQL started by `make services` (skips/fails when it is down)."""
    url = service_url("QWED_GUARD_POSTGRES_URL")
    try:
        import psycopg  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        answers = _tcp_answers(url, 5432)
    else:
        answers = postgres_answers(url)
    if not answers:
        missing(f"no PostgreSQL answering at {urlsplit(url).hostname}:{urlsplit(url).port}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own in the live Redis, emptied afterwards."""
    import redis

    prefix = f"qwed_guard_test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        names = list(client.scan_iter(match=prefix + "*"))
        if names:
            client.delete(*names)
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on its own port, to stop and restart inside one test."""

    def __init__(self, directory: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.extra = extra
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start it (on the same port each time) and wait until it answers."""
        if self._process is not None:
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), *self.extra]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.005)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        # A server with a password answers NOAUTH: up all the same.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """Kill it at once, as a crash or a network cut would."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A started private redis-server; `@pytest.mark.redis_args("--requirepass", "x")` adds
    options. Stopped after the test."""
    marker = request.node.get_closest_marker("redis_args")
    extra: tuple[Any, ...] = marker.args if marker is not None else ()
    server = RedisServer(tmp_path, *map(str, extra))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_args(*args): extra redis-server options")
