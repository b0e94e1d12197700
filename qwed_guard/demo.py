"""`qwed-guard demo`: the production stack around QWEDLocal, on the embedded simulator.

It starts the simulator in-process (or uses a real OpenAI-compatible endpoint), builds the
client the guarded way (SDK retries off), runs a batch of questions through the full stack
and prints what happened: verified and fallback counts, attempts and HTTP requests per call,
retries and latency.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qwed_guard.fallback import GuardedResult, fallback
from qwed_guard.retry import retry

__all__ = ["DemoError", "DemoSummary", "run_demo"]


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

    @property
    def retries(self) -> int:
        return self.attempts - self.calls

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]

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
            ("latency p50", f"{self.percentile(0.50) * 1000:.0f} ms"),
            ("latency p95", f"{self.percentile(0.95) * 1000:.0f} ms"),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]
        for outcome, count in sorted(self.by_outcome.items()):
            rows.append((f"fallback reason: {outcome}", f"{count}"))
        return rows


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

    try:
        llm = SimulatedLLM(profile=profile, seed=seed, **rates)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    with llm:
        yield llm.base_url, model or llm.model, llm


def build_verifier(client: Any) -> Callable[[str], GuardedResult]:
    """The production stack the demo runs: fallback(retry(verify_math))."""

    @fallback(value=None)
    @retry(max_tries=3, base=1.0, factor=2.0, max_delay=8.0)
    def verify(query: str) -> Any:
        return client.verify_math(query)

    return verify


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
    progress: bool = True,
) -> DemoSummary:
    """Run `n` questions through the guarded stack; raises DemoError on bad input."""
    if n < 1:
        raise DemoError(f"--n must be at least 1, got {n}")
    if concurrency < 1:
        raise DemoError(f"--concurrency must be at least 1, got {concurrency}")
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
    summary = DemoSummary()
    with _endpoint(base_url, model, profile, seed, rates or {}) as (url, model_name, llm):
        client = guarded_client(base_url=url, model=model_name, api_key=api_key, timeout=10.0)
        verify = build_verifier(client)

        def one(query: str) -> tuple[GuardedResult, float]:
            started = time.perf_counter()
            result = verify(query)
            return result, time.perf_counter() - started

        begin = time.perf_counter()
        with _progress(progress, n) as advance, ThreadPoolExecutor(concurrency) as pool:
            for future in as_completed([pool.submit(one, q) for q in questions]):
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
    return summary


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
