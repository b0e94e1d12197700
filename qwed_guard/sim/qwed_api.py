"""QWED's own API server (``qwed_new.api.main:app``) as a subprocess on 127.0.0.1, for tests.

    with QwedApiServer(llm_base_url=llm.base_url) as server:
        client = QWEDClient(api_key=server.new_api_key(), base_url=server.base_url)
        client.verify("What is 15% of 200?")

The server runs offline in a private temporary directory (its SQLite database, ``HOME`` and log
live there), with random secrets, on a free port, started with the interpreter the caller runs
on (``sys.executable -m uvicorn``). With `llm_base_url` (an OpenAI-compatible ``/v1`` URL, such
as `SimulatedLLM.base_url`) the server's ``/verify/natural_language`` and ``/verify/logic``
translate through that LLM (``ACTIVE_PROVIDER=openai_compat``); without it they have no
provider and fail.

What the server does that tests must know about:

* **100 requests per minute per API key**: the 101st answers 429 with ``Retry-After``. Take a
  fresh key per test (`new_api_key`). The global limit (1000/min by default) is raised to
  `global_rate_limit` so a long test session on one server does not hit it.
* **Concurrent requests can wedge it, for good**: its SQLAlchemy pool holds 15 connections (5 +
  10 overflow, not configurable), and the API-key lookup (``get_current_tenant``) is a
  synchronous query run on the event loop. When the pool is empty the loop itself blocks on the
  checkout (30 s pool timeout, one waiter after another) while the requests holding connections
  need the loop to finish, so nothing answers, not even ``/health``. Measured here: bursts of 18-20
  concurrent requests on one key wedged it in 6 of 11 runs (still wedged 45 s later), 40 in 2
  of 3, while bursts of 5, 10 and 15 did not. Keep a server at no more than ~10 requests
  in flight, and give a test that must go beyond that a server of its own.
* `kill()` SIGKILLs it (connections are refused from then on); `pause()` SIGSTOPs it, so it
  accepts connections but never answers (a hung server) until `resume()`.
* Its start-up environment-integrity check rejects the ``.pth`` files setuptools and editable
  installs leave in site-packages, so it is switched off (``QWED_SKIP_ENV_INTEGRITY_CHECK``).

The secrets are never shown: not in `repr`, errors or `log_text()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx

__all__ = ["QwedApiServer", "QwedApiServerError"]

APP: Final = "qwed_new.api.main:app"
_HOST: Final = "127.0.0.1"
_POLL: Final = 0.05
_SECRET_NAMES: Final = (
    "API_KEY_SECRET",
    "QWED_JWT_SECRET_KEY",
    "QWED_API_KEY_LOOKUP_SECRET",
    "QWED_AUDIT_SECRET_KEY",
)
_REDACTED: Final = "<redacted>"
_LOG_TAIL: Final = 40


class QwedApiServerError(RuntimeError):
    """The server did not start, or it refused a set-up request (signup, key creation)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class QwedApiServer:
    """The real QWED API server in a subprocess on 127.0.0.1 (see the module docstring).

    `llm_base_url`: an OpenAI-compatible ``/v1`` URL the server translates with (`llm_model` is
    the model name it asks for). `startup_timeout`: seconds to wait for ``GET /health``.
    `env`: extra environment variables for the server (they override the defaults here).
    """

    def __init__(
        self,
        *,
        llm_base_url: str | None = None,
        llm_model: str = "qwed-sim",
        startup_timeout: float = 60.0,
        global_rate_limit: int = 1_000_000,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.llm_base_url = llm_base_url
        self.llm_model = llm_model
        self.startup_timeout = startup_timeout
        self.global_rate_limit = global_rate_limit
        self._extra_env = dict(env or {})
        self._secrets: dict[str, str] = {}
        self._dir: Path | None = None
        self._log_path: Path | None = None
        self._log_file: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._paused = False
        self._token: str | None = None
        self._api_key: str | None = None
        self._key_count = 0
        self._http: httpx.Client | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> QwedApiServer:
        """Start the server and wait until ``GET /health`` answers 200."""
        if self._proc is not None:
            raise QwedApiServerError("the QWED API server is already running")
        self._dir = Path(tempfile.mkdtemp(prefix="qwed-api-"))
        self._log_path = self._dir / "server.log"
        self._secrets = {name: secrets.token_hex(32) for name in _SECRET_NAMES}
        self._port = _free_port()
        env = self._environment()
        self._log_file = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    APP,
                    "--host",
                    _HOST,
                    "--port",
                    str(self._port),
                    "--no-access-log",
                ],
                cwd=self._dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _environment(self) -> dict[str, str]:
        assert self._dir is not None
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("QWED_", "OPENAI_", "CUSTOM_", "ANTHROPIC_", "AZURE_"))
            and name not in {"ACTIVE_PROVIDER", "DATABASE_URL", "REDIS_URL", "GOOGLE_API_KEY"}
        }
        env.update(self._secrets)
        env.update(
            {
                "QWED_CORS_ORIGINS": f"http://{_HOST}",
                "DATABASE_URL": f"sqlite:///{self._dir / 'qwed.db'}",
                "HOME": str(self._dir),
                "QWED_SKIP_ENV_INTEGRITY_CHECK": "true",
                "QWED_QUIET": "1",
                "QWED_RATE_LIMIT_GLOBAL": str(self.global_rate_limit),
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "*",
            }
        )
        if self.llm_base_url is not None:
            env.update(
                {
                    "ACTIVE_PROVIDER": "openai_compat",
                    "CUSTOM_BASE_URL": self.llm_base_url,
                    "CUSTOM_MODEL": self.llm_model,
                    "CUSTOM_API_KEY": "sim-no-key",
                }
            )
        env.update(self._extra_env)
        return env

    def _wait_healthy(self) -> None:
        assert self._proc is not None and self._http is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise QwedApiServerError(
                    f"the QWED API server exited with code {code} during start-up; "
                    f"log tail:\n{self._log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get("/health", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise QwedApiServerError(
                    f"the QWED API server did not answer GET /health on {self.base_url} within "
                    f"{self.startup_timeout:g} s; log tail:\n{self._log_tail()}"
                )
            time.sleep(_POLL)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                if self._paused:
                    self._signal(proc, signal.SIGCONT)
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait(timeout=10)
            else:
                proc.wait()
        self._paused = False
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._token = self._api_key = None

    def kill(self) -> None:
        """SIGKILL the server now (a crash): requests then fail to connect. `stop()` cleans up."""
        proc = self._require_proc()
        self._signal(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the server: it accepts connections but answers nothing until `resume()`."""
        self._signal(self._require_proc(), signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; requests that waited are then answered."""
        self._signal(self._require_proc(), signal.SIGCONT)
        self._paused = False

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise QwedApiServerError("the QWED API server is not running; call start()")
        return self._proc

    def __enter__(self) -> QwedApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- state

    @property
    def running(self) -> bool:
        """True while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` - what `qwed_sdk.QWEDClient` takes as base_url."""
        if self._port == 0:
            raise QwedApiServerError("the QWED API server has not been started")
        return f"http://{_HOST}:{self._port}"

    # ---------------------------------------------------------------- API keys

    def _post(self, path: str, body: dict[str, str], token: str | None = None) -> dict[str, Any]:
        if self._http is None:
            raise QwedApiServerError("the QWED API server is not running; call start()")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self._http.post(path, json=body, headers=headers)
        if response.status_code != 200:
            raise QwedApiServerError(
                f"POST {path} answered {response.status_code}: {self._redact(response.text)}"
            )
        data = response.json()
        if not isinstance(data, dict):
            raise QwedApiServerError(f"POST {path} answered a non-object")
        return data

    def _access_token(self) -> str:
        if self._token is None:
            data = self._post(
                "/auth/signup",
                {
                    "email": f"tests-{secrets.token_hex(4)}@example.com",
                    "password": secrets.token_urlsafe(18) + "aA1!",
                    "organization_name": "qwed-guard tests",
                },
            )
            self._token = str(data["access_token"])
        return self._token

    def new_api_key(self, name: str | None = None) -> str:
        """A fresh API key (its own 100 requests/min budget) of the server's one organization."""
        self._key_count += 1
        data = self._post(
            "/auth/api-keys", {"name": name or f"key-{self._key_count}"}, self._access_token()
        )
        return str(data["key"])

    @property
    def api_key(self) -> str:
        """The first key, made on first use (shared: mind its rate limit)."""
        if self._api_key is None:
            self._api_key = self.new_api_key("default")
        return self._api_key

    # ---------------------------------------------------------------- log

    def _redact(self, text: str) -> str:
        for value in self._secrets.values():
            text = text.replace(value, _REDACTED)
        return text

    def log_text(self) -> str:
        """What the server printed so far (stdout and stderr), secrets redacted."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._redact(self._log_path.read_text(errors="replace"))

    def _log_tail(self) -> str:
        return "\n".join(self.log_text().splitlines()[-_LOG_TAIL:])

    def __repr__(self) -> str:
        if self._proc is None:
            state = "stopped"
        elif self._paused:
            state = "paused"
        else:
            state = "running" if self._proc.poll() is None else "dead"
        where = f"http://{_HOST}:{self._port}" if self._port else "not started"
        llm = f", llm={self.llm_base_url}" if self.llm_base_url else ""
        return f"QwedApiServer({where}, {state}{llm})"
