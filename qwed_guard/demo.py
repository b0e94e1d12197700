"""`qwed-guard demo`: the production stack around QWED, on the embedded simulator.

With the local client (the default) it starts the simulator in-process (or uses a real
OpenAI-compatible endpoint), builds QWEDLocal the guarded way (SDK retries off), runs a batch
of questions through the full stack and prints what happened: verified and fallback counts,
attempts and HTTP requests per call, retries and latency.

With the hosted client it starts QWED's own API server (the one the `qwed` wheel ships) next
to the simulator: each guarded call asks the simulator (the LLM) to translate the question
into an expression and a claimed answer, then has the server check ``expression = claim``
with `qwed_sdk.QWEDClient.verify_math`. An LLM made the claim, so a refused claim is asked
again (``VerdictRules(deterministic=False)``); verified answers carry the server's attestation.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwed_guard.fallback import GuardedResult

if TYPE_CHECKING:
    from qwed_guard.policy import Policy

__all__ = [
    "CLIENTS",
    "DEFAULT_AUDIT_PATH",
    "DemoError",
    "DemoSummary",
    "demo_policy",
    "run_demo",
]

CLIENTS = ("local", "hosted")
"""`local`: QWEDLocal on the LLM; `hosted`: QWEDClient on QWED's API server started here."""

DEFAULT_AUDIT_PATH = "qwed-guard-demo.audit.jsonl"
OUTAGE_PACE = 16.0
"""Seconds the `outage` profile's calls are spread over: its 10 s outage starts 2 s in."""
KEY_BUDGET = 80
"""Server calls one API key makes before a worker takes a fresh one (the server allows 100/min)."""
HOSTED_MAX_CONCURRENCY = 8
"""Requests in flight on the API server at most: many more on one server can wedge it."""


class DemoError(Exception):
    """Bad demo input or an unreachable endpoint: reported as one line, exit code 2."""


@dataclass
class DemoSummary:
    """What one demo run measured."""

    calls: int = 0
    verified: int = 0
    fallback: int = 0
    attempts: int = 0
    http_requests: int | None = None
    latencies: list[float] = field(default_factory=list)
    by_outcome: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    breaker_opened: int = 0
    short_circuited: int = 0
    alerts: list[str] = field(default_factory=list)
    audit_path: str = ""
    audit_report: str = ""
    client: str = "local"
    server_url: str | None = None
    """The hosted client's QWED API server."""
    attested: int | None = None
    """Verified answers that carried the server's attestation (hosted client)."""

    @property
    def retries(self) -> int:
        return self.attempts - self.calls

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    def rows(self) -> list[tuple[str, str]]:
        per_call = self.attempts / self.calls if self.calls else 0.0
        rows = []
        if self.client == "hosted":
            rows.append(("client", f"hosted, {self.server_url}"))
        rows += [
            ("calls", f"{self.calls}"),
            ("verified", f"{self.verified}"),
            ("fallback", f"{self.fallback}"),
        ]
        if self.attested is not None:
            rows.append(("attested answers", f"{self.attested} of {self.verified} verified"))
        rows += [
            ("attempts per call", f"{per_call:.2f}"),
            ("retries", f"{self.retries}"),
        ]
        if self.http_requests is not None and self.calls:
            # Hosted: the requests the LLM served (the API server's own are not counted).
            label = "LLM requests per call" if self.client == "hosted" else "HTTP requests per call"
            rows.append((label, f"{self.http_requests / self.calls:.2f}"))
        rows += [
            ("latency p50", _duration(self.percentile(0.50))),
            ("latency p95", _duration(self.percentile(0.95))),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]
        for outcome, count in sorted(self.by_outcome.items()):
            rows.append((f"fallback reason: {outcome}", f"{count}"))
        rows += [
            ("circuit breaker opened", f"{self.breaker_opened}"),
            ("short-circuited attempts", f"{self.short_circuited}"),
            ("alerts", ", ".join(self.alerts) or "none"),
            ("audit trail", self.audit_path),
            ("audit verify", self.audit_report),
        ]
        return rows


def percentile(values: Sequence[float], q: float) -> float:
    """The value at fraction `q` of `values` sorted (the nearest one; 0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 0.001 else f"{seconds * 1000:.0f} ms"


def _check_reachable(base_url: str, api_key: str | None) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        raise DemoError(f"cannot reach {base_url}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 500:
        raise DemoError(f"{base_url} answered HTTP {response.status_code}")


@contextmanager
def _endpoint(
    base_url: str | None, model: str | None, profile: str, seed: int, rates: dict[str, Any]
) -> Iterator[tuple[str, str, Any]]:
    if base_url is not None:
        yield base_url, model or "gpt-4o-mini", None
        return
    from qwed_guard.sim import SimulatedLLM

    # Import QWED (about 2 s) before the simulator's clock starts: the `outage` profile's
    # outage begins 2 s after start, and should begin during the run.
    importlib.import_module("qwed_sdk")
    try:
        llm = SimulatedLLM(profile=profile, seed=seed, **rates)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    with llm:
        yield llm.base_url, model or llm.model, llm


def demo_policy(audit_path: str) -> Policy:
    """The production preset as the demo runs it.

    The seed's exercise (3 tries at 1 s then 2 s, a conservative fallback, an alert after 5
    failed calls in a row, every attempt audited, a circuit breaker that opens when 80% of the
    last 50 attempts failed, which the `flaky` profile never reaches and an outage does at
    once), with the breaker's recovery timeout scaled to the demo: it probes again after 2 s.
    """
    from qwed_guard.policy import Policy

    return Policy.preset(
        "production",
        fallback_value=None,  # no verified answer: the caller routes the question to a person
        audited={"sink": f"jsonl:{audit_path}", "fsync": "batch"},
        alert_on_failures={"key": "demo.verify_math"},
        circuit_breaker={"key": "demo.verify_math", "recovery_timeout": 2.0},
    )


def run_demo(
    *,
    n: int = 200,
    profile: str = "flaky",
    seed: int = 7,
    concurrency: int = 8,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    rates: dict[str, Any] | None = None,
    audit_path: str = DEFAULT_AUDIT_PATH,
    pace: float | None = None,
    progress: bool = True,
    show_policy: Callable[[str], None] | None = None,
    client: str = "local",
) -> DemoSummary:
    """Run `n` questions through the guarded stack; raises DemoError on bad input.

    `client`: ``"local"`` (QWEDLocal on the simulator or `base_url`) or ``"hosted"`` (QWED's
    API server started here, translating with the simulator; no `base_url`).
    """
    if client not in CLIENTS:
        raise DemoError(f"--client must be one of {', '.join(CLIENTS)}, got {client!r}")
    if client == "hosted" and base_url is not None:
        raise DemoError("--base-url cannot be used with --client hosted (it runs the simulator)")
    if client == "hosted" and api_key_env is not None:
        raise DemoError("--api-key-env cannot be used with --client hosted")
    if n < 1:
        raise DemoError(f"--n must be at least 1, got {n}")
    if concurrency < 1:
        raise DemoError(f"--concurrency must be at least 1, got {concurrency}")
    if client == "hosted" and concurrency > HOSTED_MAX_CONCURRENCY:
        raise DemoError(
            f"--concurrency must be at most {HOSTED_MAX_CONCURRENCY} with --client hosted "
            f"(more requests in flight can wedge QWED's API server), got {concurrency}"
        )
    if pace is None:
        # An outage lasts 10 s: pace the outage run so it shows the breaker open and close.
        pace = OUTAGE_PACE if profile == "outage" and base_url is None else 0.0
    if pace < 0:
        raise DemoError(f"--pace must be >= 0 seconds, got {pace:g}")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise DemoError(f"environment variable {api_key_env} is not set")
    if base_url is not None:
        _check_reachable(base_url, api_key)
    from qwed_guard.sim import sample_questions

    questions = [q.text for q in sample_questions(n, seed)]
    summary = DemoSummary(audit_path=os.path.abspath(audit_path), client=client)
    policy = demo_policy(summary.audit_path)
    if show_policy is not None:
        show_policy(policy.describe())
    if client == "hosted":
        summary.attested = 0
        stack: Any = _hosted_stack(policy, profile, seed, rates or {}, model)
    else:
        stack = _local_stack(policy, base_url, model, profile, seed, rates or {}, api_key)
    with stack as (verify, llm, server_url):
        summary.server_url = server_url

        def one(query: str) -> tuple[GuardedResult, float]:
            started = time.perf_counter()
            result = verify(query)
            return result, time.perf_counter() - started

        begin = time.perf_counter()
        interval = pace / n
        with _progress(progress, n) as advance, ThreadPoolExecutor(concurrency) as pool:
            futures = []
            for index, query in enumerate(questions):
                # Spread the calls over `pace` seconds so an outage is seen start to end.
                delay = begin + index * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(one, query))
            for future in as_completed(futures):
                result, elapsed = future.result()
                summary.calls += 1
                summary.attempts += result.attempts
                summary.latencies.append(elapsed)
                if result.source == "verified":
                    summary.verified += 1
                    if summary.attested is not None and result.attestation:
                        summary.attested += 1
                else:
                    summary.fallback += 1
                    key = result.outcome.value
                    summary.by_outcome[key] = summary.by_outcome.get(key, 0) + 1
                advance()
        summary.wall_seconds = time.perf_counter() - begin
        if llm is not None:
            summary.http_requests = int(llm.stats()["requests"])
        breaker = verify.breaker
        summary.breaker_opened = breaker.opened
        summary.short_circuited = breaker.short_circuited
        summary.alerts = [alert.kind for alert in verify.alerts]
    _close_trail(policy)
    from qwed_guard.audit import verify_trail

    summary.audit_report = verify_trail(summary.audit_path).summary()
    return summary


@contextmanager
def _local_stack(
    policy: Policy,
    base_url: str | None,
    model: str | None,
    profile: str,
    seed: int,
    rates: dict[str, Any],
    api_key: str | None,
) -> Iterator[tuple[Any, Any, None]]:
    """QWEDLocal.verify_math under the policy, on the simulator or `base_url`."""
    from qwed_guard.client import guarded_client

    with _endpoint(base_url, model, profile, seed, rates) as (url, model_name, llm):
        client = guarded_client(base_url=url, model=model_name, api_key=api_key, timeout=10.0)

        @policy
        def verify(query: str) -> Any:
            return client.verify_math(query)

        yield verify, llm, None


# What QWED's API server tells its OpenAI-compatible provider when it translates a math question
# (qwed_new.providers.openai_compat `translate`, which adds the JSON line in `_call_json`).
TRANSLATION_PROMPT = (
    "You are a mathematical expression translator.\n"
    "Convert natural language math to formal expressions.\n"
    'Respond with JSON: {"expression": "...", "claimed_answer": ..., "reasoning": "...", '
    '"confidence": 0.95}\n\nRespond ONLY with valid JSON.'
)


def _claim(content: str | None) -> str | None:
    """``expression = claimed_answer`` from the LLM's JSON translation; None if it has none."""
    text = (content or "").strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    expression, claimed = data.get("expression"), data.get("claimed_answer")
    if not isinstance(expression, str) or not expression.strip() or claimed is None:
        return None
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float, str)):
        return None
    return f"{expression} = {claimed}"


class _Keys:
    """One QWEDClient per worker thread, on a fresh API key every `KEY_BUDGET` calls."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list[Any] = []

    def client(self) -> Any:
        from qwed_sdk import QWEDClient

        held = getattr(self._local, "held", None)
        if held is None or held[1] >= KEY_BUDGET:
            with self._lock:
                key = self._server.new_api_key()
                fresh = QWEDClient(api_key=key, base_url=self._server.base_url, timeout=10)
                self._clients.append(fresh)
            held = [fresh, 0]
            self._local.held = held
        held[1] += 1
        return held[0]

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _hosted_stack(
    policy: Policy, profile: str, seed: int, rates: dict[str, Any], model: str | None
) -> Iterator[tuple[Any, Any, str]]:
    """The simulator translates, QWED's API server checks the claim, under the policy."""
    import openai

    from qwed_guard.sim import SimulatedLLM
    from qwed_guard.sim.qwed_api import QwedApiServer, QwedApiServerError
    from qwed_guard.verdicts import VerdictRules

    importlib.import_module("qwed_sdk")
    port = _free_port()
    try:
        llm = SimulatedLLM(profile=profile, seed=seed, port=port, **rates)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    model_name = model or llm.model
    # The server starts (about 4 s) before the simulator, whose faults run on its own clock
    # (the `outage` profile's outage begins 2 s after the simulator starts).
    server = QwedApiServer(llm_base_url=f"http://127.0.0.1:{port}/v1", llm_model=model_name)
    try:
        server.start()
    except QwedApiServerError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DemoError(f"QWED's API server did not start: {first}") from None
    keys = _Keys(server)
    try:
        with llm:
            translator = openai.OpenAI(
                base_url=llm.base_url, api_key="sim-no-key", max_retries=0, timeout=10.0
            )

            def verify_claim(query: str) -> Any:
                reply = translator.chat.completions.create(
                    model=model_name,
                    messages=[
                        {"role": "system", "content": TRANSLATION_PROMPT},
                        {"role": "user", "content": query},
                    ],
                    temperature=0.0,
                )
                claim = _claim(reply.choices[0].message.content if reply.choices else None)
                if claim is None:
                    return None  # no usable translation: unverifiable, asked again
                return keys.client().verify_math(claim)

            verify = policy.wrap_with(verify_claim, VerdictRules(deterministic=False))
            try:
                yield verify, llm, server.base_url
            finally:
                translator.close()
    finally:
        keys.close()
        server.stop()


def _close_trail(policy: Policy) -> None:
    """Flush the trail (and pending alerts) so the verification below sees every record."""
    from qwed_guard.alerts import flush
    from qwed_guard.audit.sinks import close_all

    flush(5.0)
    close_all()


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("verifying", total=total)
        yield lambda: bar.advance(task)


def print_summary(summary: DemoSummary, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.rows():
        table.add_row(name, value)
    Console().print(table)
