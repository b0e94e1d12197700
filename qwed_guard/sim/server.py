"""The HTTP side of the simulator: an OpenAI-compatible server on 127.0.0.1.

Serves ``POST /v1/chat/completions`` and ``GET /v1/models`` in the shapes the openai SDK parses,
``GET /stats`` (what was served, as JSON), and two controls for programs that run it with
``qwed-guard sim``: ``POST /sim/outage`` (``{"seconds": 10}``) and ``POST /sim/reset`` (stats).
``GET /sim/in_flight`` says how many chat completions are being served now and at most at once.
HTTP/1.1 keep-alive works, so the SDK's pooled connections are reused; `stop()` closes them, so
a stopped simulator really refuses connections ("Connection error." in QWEDLocal). Like
OpenAI's API, JSON bodies are gzip-compressed for clients that accept it (the SDK's do).

Besides QWEDLocal's two prompts it answers the JSON translations QWED's API server asks its
OpenAI-compatible provider for (recognised by the system message): the math translation
(``questions.translation_for``) and the Z3 logic translation and its refinement
(``questions.logic_translation_for``). For those, ``wrong_answer`` gives a wrong claimed answer or
a negated constraint, and ``unevaluable`` a reply cut off mid-JSON.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import json
import signal
import socket
import sys
import threading
import types
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, TextIO

from qwed_guard import clock
from qwed_guard.sim import questions
from qwed_guard.sim.faults import (
    PROFILES,
    Decision,
    FaultConfig,
    FaultPlan,
    Reply,
    parse_script,
    rates_summary,
)
from qwed_guard.sim.questions import PromptKind

DEFAULT_MODEL: Final = "qwed-sim"
_HISTORY_LIMIT: Final = 100_000

# OpenAI's own wording, so classifiers and error strings behave as they would in production.
_MESSAGES: Final[dict[int, tuple[str, str, str | None]]] = {
    400: (
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
        "contact us through our help center at help.openai.com.)",
        "invalid_request_error",
        None,
    ),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    408: ("Request timed out.", "server_error", None),
    409: (
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    ),
    422: ("Unprocessable Entity", "invalid_request_error", None),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}
_RATE_LIMIT: Final = (
    "Rate limit reached for {model} in organization org-sim on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in {wait}. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)
_QUOTA: Final = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_UNAUTHORIZED: Final = (
    "Incorrect API key provided: sk-proj-****...abcd. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
_OTHER_REPLY: Final = (
    "I am qwed-guard's simulated LLM. I answer QWED's math prompts and arithmetic or finance "
    "questions such as 'What is 15% of 200?'."
)
_STANDARD_REPLY_KEYS: Final = (
    "ok",
    "error_500",
    "error_502",
    "error_503",
    "rate_limit",
    "quota",
    "unauthorized",
    "hang",
    "wrong_answer",
    "unevaluable",
    "malformed",
    "outage",
    "bad_request",
)


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _wait_text(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


class _Stats:
    """Thread-safe counters of what was served, keyed as documented on `SimulatedLLM.stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._peak = self._serving  # requests under way stay under way
            self._models = 0
            self._connections = 0
            # The API server's kinds (translation, logic) appear once one has been served.
            self._prompts: dict[str, int] = dict.fromkeys(("answer", "expression", "other"), 0)
            self._replies = dict.fromkeys(_STANDARD_REPLY_KEYS, 0)
            self._status: dict[str, int] = {}
            self._delayed = 0
            self._delay_total = 0.0
            self._history: collections.deque[tuple[str, str]] = collections.deque(
                maxlen=_HISTORY_LIMIT
            )

    def record(self, prompt: PromptKind | None, reply_key: str, status: int, delay: float) -> None:
        with self._lock:
            self._requests += 1
            if prompt is not None:
                self._prompts[prompt] = self._prompts.get(prompt, 0) + 1
            self._replies[reply_key] = self._replies.get(reply_key, 0) + 1
            self._status[str(status)] = self._status.get(str(status), 0) + 1
            if delay > 0:
                self._delayed += 1
                self._delay_total += delay
            self._history.append((prompt or "invalid", reply_key))

    def serving(self, change: int) -> None:
        with self._lock:
            self._serving += change
            self._peak = max(self._peak, self._serving)

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {"now": self._serving, "peak": self._peak}

    def model_listed(self) -> None:
        with self._lock:
            self._models += 1

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def snapshot(self, extra: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "prompts": dict(self._prompts),
                "replies": dict(self._replies),
                "status": dict(sorted(self._status.items())),
                "latency": {"delayed": self._delayed, "seconds": round(self._delay_total, 6)},
                "models_requests": self._models,
                "connections": self._connections,
                **extra,
            }

    def history(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._history)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's listen backlog is 5: a burst of new connections (100 async tasks) then
    # loses SYNs, and each lost one costs the client a 1 s retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: SimulatedLLM) -> None:
        self.sim = sim
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        """Drop every open keep-alive connection, so a stopped server serves nothing more."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        return "qwed-guard-sim"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACK
        # adds ~40 ms to every response.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)
        self.server.sim._stats.connection_opened()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    # ---------------------------------------------------------------- plumbing

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        if self.server.stopping.is_set():
            self.close_connection = True
            return
        compressed = (
            content_type == "application/json"
            and body
            and "gzip" in (self.headers.get("Accept-Encoding") or "")
        )
        if compressed:
            body = gzip.compress(body, compresslevel=1)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if compressed:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client gave up (timeout) or the server is stopping
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _not_found(self, method: str) -> None:
        self._send(
            404,
            _error_body(f"Invalid URL ({method} {self._path()})", "invalid_request_error", None),
        )

    # ---------------------------------------------------------------- routes

    def do_GET(self) -> None:
        path = self._path()
        sim = self.server.sim
        if path in ("/v1/models", "/models"):
            sim._stats.model_listed()
            created = int(clock.wall())
            body = {
                "object": "list",
                "data": [
                    {
                        "id": sim.model,
                        "object": "model",
                        "created": created,
                        "owned_by": "qwed-guard",
                    }
                ],
            }
            self._send(200, json.dumps(body).encode())
        elif path in ("/stats", "/v1/stats"):
            self._send(200, json.dumps(sim.stats()).encode())
        elif path == "/sim/in_flight":
            self._send(200, json.dumps(sim.in_flight()).encode())
        else:
            self._not_found("GET")

    def do_POST(self) -> None:
        path = self._path()
        body = self._read_body()
        if path in ("/v1/chat/completions", "/chat/completions"):
            stats = self.server.sim._stats
            stats.serving(+1)
            try:
                self._chat(body)
            finally:
                stats.serving(-1)
        elif path == "/sim/outage":
            self._control_outage(body)
        elif path == "/sim/reset":
            self.server.sim.reset_stats()
            self._send(200, b'{"reset": true}')
        else:
            self._not_found("POST")

    def _control_outage(self, body: bytes) -> None:
        try:
            seconds = float(json.loads(body or b"{}").get("seconds", 10.0))
            self.server.sim.outage(seconds)
        except (ValueError, TypeError, AttributeError) as exc:
            self._send(400, _error_body(str(exc), "invalid_request_error", None))
            return
        self._send(200, json.dumps({"outage_seconds": seconds}).encode())

    def _chat(self, raw: bytes) -> None:
        sim = self.server.sim
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            sim._stats.record(None, "bad_request", 400, 0.0)
            self._send(400, _error_body(*_MESSAGES[400]))
            return
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            sim._stats.record(None, "bad_request", 400, 0.0)
            self._send(
                400,
                _error_body(
                    "Missing required parameter: 'messages'.",
                    "invalid_request_error",
                    "missing_required_parameter",
                    "messages",
                ),
            )
            return
        model = str(request.get("model") or sim.model)
        prompt_kind, query = questions.classify_prompt(
            _last_user_text(messages), system=_system_text(messages)
        )
        decision = sim._plan.decide(_fault_kind(prompt_kind))
        if prompt_kind in _JSON_PROMPTS and decision.index >= len(sim.script):
            decision = _with_unevaluable(decision, sim.config.unevaluable)
        reply = decision.reply
        sim._stats.record(prompt_kind, reply.stat_key, _status_of(reply), decision.delay)
        if decision.delay > 0 and self.server.stopping.wait(decision.delay):
            self.close_connection = True
            return
        self._respond(decision, prompt_kind, query, model)

    def _respond(self, decision: Decision, prompt: PromptKind, query: str, model: str) -> None:
        reply = decision.reply
        kind = reply.kind
        if kind in ("error", "outage"):
            status = reply.status
            message, type_, code = _MESSAGES.get(
                status, (HTTPStatus(status).phrase, "server_error", None)
            )
            self._send(status, _error_body(message.format(model=model), type_, code))
        elif kind == "rate_limit":
            headers = [
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "0"),
            ]
            wait = reply.seconds
            if wait is not None:
                headers += [
                    ("retry-after", str(max(0, _ceil(wait)))),
                    ("retry-after-ms", str(round(wait * 1000))),
                    ("x-ratelimit-reset-requests", _wait_text(wait)),
                ]
            message = _RATE_LIMIT.format(model=model, wait=_wait_text(wait or 20.0))
            self._send(429, _error_body(message, "requests", "rate_limit_exceeded"), headers)
        elif kind == "quota":
            self._send(429, _error_body(_QUOTA, "insufficient_quota", "insufficient_quota"))
        elif kind == "unauthorized":
            self._send(401, _error_body(_UNAUTHORIZED, "invalid_request_error", "invalid_api_key"))
        elif kind == "malformed":
            body = (
                f'{{"id": "chatcmpl-sim{decision.index:06d}", "object": "chat.completion", '
                '"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
            )
            self._send(200, body.encode())
        else:
            if kind == "hang" and self.server.stopping.wait(reply.seconds or 0.0):
                self.close_connection = True
                return
            content = _content(reply, prompt, query, decision.u_wrong)
            self._send(200, _completion(content, model, decision.index))


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if whole == seconds else whole + 1


def _status_of(reply: Reply) -> int:
    return (
        reply.status
        if reply.kind in ("error", "outage", "rate_limit", "quota")
        else (401 if reply.kind == "unauthorized" else 200)
    )


# QWED's API server asks for one JSON translation where QWEDLocal asks for an answer and an
# expression: the answer prompt's faults (wrong_answer) are drawn for it, and then the
# unevaluable rate from the same request's spare draw (u_wrong, unused by a correct reply).
_JSON_PROMPTS: Final = frozenset({"translation", "logic"})


def _fault_kind(prompt: PromptKind) -> PromptKind:
    return "answer" if prompt in _JSON_PROMPTS else prompt


def _with_unevaluable(decision: Decision, rate: float) -> Decision:
    if decision.reply.kind == "ok" and decision.reply.content is None and decision.u_wrong < rate:
        return dataclasses.replace(decision, reply=Reply.unevaluable())
    return decision


def _system_text(messages: Sequence[Any]) -> str:
    return "\n".join(
        str(message.get("content"))
        for message in messages
        if isinstance(message, dict)
        and message.get("role") == "system"
        and isinstance(message.get("content"), str)
    )


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and part.get("type", "text") == "text"
                )
    return ""


def _content(reply: Reply, prompt: PromptKind, query: str, u_wrong: float) -> str:
    """The assistant's text for a 200 reply of this kind to this prompt."""
    if reply.content is not None:
        return reply.content
    if prompt == "translation":
        if reply.kind == "wrong_answer":
            return questions.wrong_translation_for(query, u_wrong)
        if reply.kind == "unevaluable":
            return questions.unevaluable_translation_for(query)
        return questions.translation_for(query)
    if prompt == "logic":
        if reply.kind == "wrong_answer":
            return questions.wrong_logic_translation_for(query)
        if reply.kind == "unevaluable":
            return questions.unevaluable_logic_translation_for(query)
        return questions.logic_translation_for(query)
    if reply.kind == "wrong_answer":
        if prompt == "expression":
            return questions.wrong_expression_for(query, u_wrong)
        return questions.wrong_answer_for(query, u_wrong)
    if reply.kind == "unevaluable":
        if prompt == "expression":
            return questions.unevaluable_expression_for(query)
        return questions.unevaluable_answer_for(query)
    if prompt == "answer":
        return questions.answer_for(query)
    if prompt == "expression":
        return questions.expression_for(query)
    solution = questions.solve(query)
    return solution.answer if solution else _OTHER_REPLY


def _completion(content: str, model: str, index: int) -> bytes:
    prompt_tokens = 60
    completion_tokens = max(1, len(content.split()))
    return json.dumps(
        {
            "id": f"chatcmpl-sim{index:06d}",
            "object": "chat.completion",
            "created": int(clock.wall()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "service_tier": "default",
            "system_fingerprint": "fp_qwed_sim",
        }
    ).encode()


class SimulatedLLM:
    """An OpenAI-compatible LLM on 127.0.0.1 that answers QWED's prompts and fails on purpose.

    ``with SimulatedLLM(profile="flaky", seed=7) as llm:`` then
    ``QWEDLocal(base_url=llm.base_url, model=llm.model, cache=False, max_retries=0)``.
    `profile` is one of `PROFILES`; keyword `options` override its rates and timings (see
    `FaultConfig`: ``error_5xx``, ``rate_limit``, ``quota``, ``unauthorized``, ``hang``,
    ``wrong_answer``, ``unevaluable``, ``malformed`` in [0, 1]; ``latency``, ``jitter``,
    ``hang_seconds``, ``retry_after``, ``outage_seconds`` in seconds; ``outage_after`` seconds
    or ``outage_after_requests`` requests after start). `script` replays per-request replies
    (`Reply` objects, status codes or short names) before the profile takes over.
    """

    def __init__(
        self,
        profile: str = "healthy",
        seed: int = 0,
        script: Iterable[Reply | str | int] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL,
        **options: Any,
    ) -> None:
        self.config = FaultConfig.build(profile, **options)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0-65535, got {port!r}")
        self.profile = profile
        self.seed = seed
        self.model = model
        self.script = parse_script(script)
        self._host = host
        self._port = port
        self._plan = FaultPlan(self.config, seed, self.script)
        self._stats = _Stats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> SimulatedLLM:
        """Bind and serve in a daemon thread; after `stop()` it restarts on the same port."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the simulator is already running")
            try:
                server = _Server((self._host, self._port), self)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
                ) from exc
            self._port = int(server.server_address[1])
            self._plan.restart()
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"qwed-guard-sim:{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; clients then get connection errors."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SimulatedLLM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (0 until the first `start()`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` - where /stats lives."""
        if self._port == 0:
            raise RuntimeError("the simulator has not been started; call start() or use `with`")
        return f"http://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` - what QWEDLocal and the openai SDK take as base_url."""
        return f"{self.url}/v1"

    # ---------------------------------------------------------------- faults and stats

    def outage(self, seconds: float, start_in: float = 0.0) -> None:
        """Answer every request with 503 for `seconds` (on `qwed_guard.clock`), from now."""
        self._plan.outage(seconds, start_in)

    def end_outage(self) -> None:
        """End the outage in progress now (an outage scheduled for later still comes)."""
        self._plan.end_outage()

    @property
    def in_outage(self) -> bool:
        return self._plan.in_outage()

    def stats(self) -> dict[str, Any]:
        """What was served, the same JSON as ``GET /stats``.

        ``requests`` (chat completions, including bad ones), ``prompts`` (answer / expression /
        other, and translation / logic - QWED's API server's prompts - once one was served),
        ``replies`` (ok, error_500/502/503 and any scripted error_<status>, rate_limit,
        quota, unauthorized, hang, wrong_answer, unevaluable, malformed, outage, bad_request),
        ``status`` (HTTP status -> count), ``latency`` (requests delayed and planned seconds),
        ``models_requests``, ``connections`` (TCP connections accepted: keep-alive reuses one),
        and the ``profile`` and ``seed``.
        """
        return self._stats.snapshot({"profile": self.profile, "seed": self.seed})

    def in_flight(self) -> dict[str, int]:
        """Chat completions being served now (`now`) and the most at once since the start or
        the last `reset_stats` (`peak`): what a concurrency limit must keep down."""
        return self._stats.in_flight()

    def reset_stats(self) -> None:
        """Zero the counters and the history (the random sequence carries on)."""
        self._stats.reset()

    def history(self) -> list[tuple[str, str]]:
        """(prompt kind, reply key) per chat request, in the order decided (last 100,000)."""
        return self._stats.history()

    def __repr__(self) -> str:
        where = self.base_url if self._port else "not started"
        return f"SimulatedLLM(profile={self.profile!r}, seed={self.seed}, {where})"


def parse_sim_options(items: Iterable[str]) -> dict[str, Any]:
    """``["error_5xx=0.3", "outage_after_requests=10"]`` as keyword options (CLI ``--set``).

    Values are numbers; ``outage_after_requests`` is an integer. Names and ranges are checked
    when the simulator is built, so a bad one still gets one clear line.
    """
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            value: float | int = (
                int(text) if name == "outage_after_requests" else float(text.rstrip("s"))
            )
        except ValueError:
            raise ValueError(f"{name} needs a number, got {text!r}") from None
        options[name] = value
    return options


def run_sim_cli(
    port: int = 8000,
    profile: str = "healthy",
    seed: int = 0,
    *,
    host: str = "127.0.0.1",
    model: str = DEFAULT_MODEL,
    duration: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    **options: Any,
) -> int:
    """`qwed-guard sim`: serve until Ctrl-C / SIGTERM (or `duration` seconds); the exit code.

    The first stdout line names the base URL, so a parent process can read the port it got
    (use ``port=0``). Bad input (unknown profile, a rate outside [0, 1], a port in use) prints
    one line to stderr and returns 2, never a traceback.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        llm = SimulatedLLM(profile, seed, host=host, port=port, model=model, **options)
        llm.start()
    except (ValueError, OSError) as exc:
        print(f"qwed-guard sim: error: {exc}", file=err)
        return 2
    rates = ", ".join(f"{k}={v:g}" for k, v in rates_summary(llm.config).items()) or "no faults"
    print(f"qwed-guard sim listening on {llm.base_url} (model {llm.model})", file=out)
    print(f"profile {profile}, seed {seed}: {rates}; stats at {llm.url}/stats", file=out)
    out.flush()
    done = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        llm.stop()
    stats = llm.stats()
    served = ", ".join(f"{k} {v}" for k, v in stats["replies"].items() if v)
    print(f"served {stats['requests']} requests: {served or 'none'}", file=out)
    return 0


__all__ = ["DEFAULT_MODEL", "PROFILES", "SimulatedLLM", "parse_sim_options", "run_sim_cli"]
