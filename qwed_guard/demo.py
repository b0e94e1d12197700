"""`qwed-guard demo`: the production stack around QWEDLocal, on the embedded simulator.

It starts the simulator in-process (or uses a real OpenAI-compatible endpoint), builds the
client the guarded way (SDK retries off), runs a batch of questions through the full stack
and prints what happened: verified and fallback counts, attempts and HTTP requests per call,
retries and latency.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwed_guard.fallback import GuardedResult

if TYPE_CHECKING:
    from qwed_guard.policy import Policy

__all__ = ["DEFAULT_AUDIT_PATH", "DemoError", "DemoSummary", "demo_policy", "run_demo"]

DEFAULT_AUDIT_PATH = "qwed-guard-demo.audit.jsonl"
OUTAGE_PACE = 16.0
"""Seconds the `outage` profile's calls are spread over: its 10 s outage starts 2 s in."""


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

    @property
    def retries(self) -> int:
        return self.attempts - self.calls

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    def rows(self) -> list[tuple[str, str]]:
        per_call = self.attempts / self.calls if self.calls else 0.0
        rows = [
            ("calls", f"{self.calls}"),
            ("verified", f"{self.verified}"),
            ("fallback", f"{self.fallback}"),
            ("attempts per call", f"{per_call:.2f}"),
            ("retries", f"{self.retries}"),
        ]
        if self.http_requests is not None and self.calls:
            rows.append(("HTTP requests per call", f"{self.http_requests / self.calls:.2f}"))
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
) -> DemoSummary:
    """Run `n` questions through the guarded stack; raises DemoError on bad input."""
    if n < 1:
        raise DemoError(f"--n must be at least 1, got {n}")
    if concurrency < 1:
        raise DemoError(f"--concurrency must be at least 1, got {concurrency}")
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
    from qwed_guard.client import guarded_client
    from qwed_guard.sim import sample_questions

    questions = [q.text for q in sample_questions(n, seed)]
    summary = DemoSummary(audit_path=os.path.abspath(audit_path))
    policy = demo_policy(summary.audit_path)
    if show_policy is not None:
        show_policy(policy.describe())
    with _endpoint(base_url, model, profile, seed, rates or {}) as (url, model_name, llm):
        client = guarded_client(base_url=url, model=model_name, api_key=api_key, timeout=10.0)

        @policy
        def verify(query: str) -> Any:
            return client.verify_math(query)

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
                else:
                    summary.fallback += 1
                    key = result.outcome.value
                    summary.by_outcome[key] = summary.by_outcome.get(key, 0) + 1
                advance()
        summary.wall_seconds = time.perf_counter() - begin
        if llm is not None:
            summary.http_requests = int(llm.stats()["requests"])
        breaker = verify.breaker  # type: ignore[attr-defined]
        summary.breaker_opened = breaker.opened
        summary.short_circuited = breaker.short_circuited
        summary.alerts = [alert.kind for alert in verify.alerts]  # type: ignore[attr-defined]
    _close_trail(policy)
    from qwed_guard.audit import verify_trail

    summary.audit_report = verify_trail(summary.audit_path).summary()
    return summary


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
