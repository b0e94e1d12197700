"""Private Redis and PostgreSQL servers for the tests, started from the Debian binaries.

A pytest plugin: list it in tests/conftest.py as `pytest_plugins = ["tests.services"]`.

`redis_url` and `postgres_url` are session fixtures: one redis-server and one PostgreSQL of the
test session's own, each on a free port with its data in a temporary directory, stopped and
deleted at the end. `redis_server` and `postgres_server` give a test a server of its own to kill
and restart. Nothing reads or touches the servers `make services` starts for the benchmarks.

`make test` installs the binaries (`scripts/services.sh install`); a test run without them fails
with that command rather than skipping. The servers die with the test process even when it is
killed (the parent-death signal), so an interrupted run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from benchmarks.services import postgres_answers

INSTALL = "install it with `bash scripts/services.sh install` (`make test` does)"
_PR_SET_PDEATHSIG = 1


def missing(what: str) -> NoReturn:
    """Fail a test whose server binary is not installed: a skipped test is not a passing one."""
    pytest.fail(f"{what}: {INSTALL}", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return preexec


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30.0
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.005)


class RedisServer:
    """A private redis-server on its own port, to stop and restart inside one test."""

    def __init__(self, directory: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.extra = extra
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (on the same port each time) and wait until it answers."""
        if self._process is not None:
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), *self.extra]
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(signal.SIGKILL),
        )
        try:
            _wait_until(self._ready, self._process, f"redis-server on port {self.port}")
        except RuntimeError:
            self.stop()
            raise

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


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        missing("no PostgreSQL binaries under /usr/lib/postgresql")
    return found[-1].parent


def _pg_user() -> str | None:
    """Who runs PostgreSQL: it refuses to run as root, so as root the `postgres` user that the
    Debian package creates (else `nobody`); otherwise the current user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer:
    """A private PostgreSQL instance: `initdb` in a temporary directory, `postgres` in the
    foreground on a free port. With a password, TCP logins need it (SCRAM); without, they are
    trusted."""

    def __init__(self, user: str = "postgres", password: str | None = None) -> None:
        self.bin = _pg_bin()
        self.os_user = _pg_user()
        self.user = user
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="qwed-guard-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        secret = f":{password}" if password else ""
        self.url = f"postgresql://{user}{secret}@127.0.0.1:{self.port}/postgres"
        self._process: subprocess.Popen[bytes] | None = None
        self.root.chmod(0o700)
        if self.os_user is not None:
            shutil.chown(self.root, self.os_user)

    def _popen(self, tool: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(self.bin / tool), *args], user=self.os_user, **kwargs)

    def init(self) -> None:
        args = ["-D", str(self.data), "-U", self.user, "-E", "UTF8", "--locale=C"]
        args += ["--auth-local=trust", "--no-sync"]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password)
            if self.os_user is not None:
                shutil.chown(pwfile, self.os_user)
            args += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth-host=trust"]
        init = self._popen("initdb", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = init.communicate(timeout=120)
        (self.root / "pwfile").unlink(missing_ok=True)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {output.decode(errors='replace')}")

    def start(self) -> None:
        """Start it (on the same port each time) and wait until it takes connections."""
        if self._process is not None:
            return
        # fsync off: the data is thrown away; a crash of the server process still loses nothing
        # committed, which is what the crash test needs.
        options = ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.root)]
        options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with (self.root / "log").open("ab") as log:
            self._process = self._popen(
                "postgres",
                "-D",
                str(self.data),
                *options,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent(signal.SIGQUIT),
            )
        try:
            _wait_until(
                lambda: postgres_answers(self.url, timeout=1),
                self._process,
                f"PostgreSQL on port {self.port} (see {self.root / 'log'})",
            )
        except RuntimeError:
            self.crash()
            raise

    def crash(self) -> None:
        """Stop it at once (immediate shutdown: no checkpoint, clients cut off)."""
        self._stop(signal.SIGQUIT)

    def stop(self) -> None:
        self._stop(signal.SIGINT)  # fast shutdown

    def _stop(self, sig: int) -> None:
        if self._process is None:
            return
        self._process.send_signal(sig)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def remove(self) -> None:
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(
    user: str = "postgres", password: str | None = None
) -> Iterator[PostgresServer]:
    server = PostgresServer(user, password)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the test session's private Redis."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of the test session's private PostgreSQL: a superuser with a password, so the
    tests see password authentication as in production."""
    # Random per run: the sink must scrub whatever the password is from its log lines.
    with running_postgres("qwed_guard", secrets.token_hex(12)) as server:
        yield server.url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own in the session's Redis, emptied afterwards."""
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


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A started redis-server of this test's own; `@pytest.mark.redis_args("--requirepass",
    "x")` adds options. Stopped after the test."""
    marker = request.node.get_closest_marker("redis_args")
    extra: tuple[Any, ...] = marker.args if marker is not None else ()
    server = RedisServer(tmp_path, *map(str, extra))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL of this test's own (trusted logins), to crash and restart."""
    with running_postgres() as server:
        yield server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_args(*args): extra redis-server options")
