"""SIGKILL a process mid-run: its audit trail still verifies, and no completed call is lost.

Two processes are killed: `qwed-guard demo` writing its trail, and a small program running
the production policy against the flaky simulator that prints the id of each call it has
completed. Afterwards `qwed-guard audit verify` passes, before and after the next writer
repairs a torn tail, and every call the program reported complete has its call record and
every attempt record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from qwed_guard.audit import JsonlSink, read_records
from tests.trails import attempts_of

KILL_AFTER = 25  # completed calls: the kill lands in the middle of the run
DEMO_KILL_AFTER = 10  # the demo waits 1 s and 2 s between tries: fewer, to stay quick
DEADLINE = 60.0  # seconds to wait for a child before the test gives up

PROGRAM = textwrap.dedent(
    """
    import sys
    from qwed_guard import Policy, audit_context, guarded_client
    from qwed_guard.sim import SimulatedLLM, sample_questions

    trail = sys.argv[1]
    questions = [q.text for q in sample_questions(50, 3)]
    with SimulatedLLM(profile="flaky", seed=3, retry_after=0.01) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model, timeout=5.0)
        policy = Policy.preset(
            "production",
            fallback_value=None,
            audited={"sink": "jsonl:" + trail, "fsync": "always"},
            alert_on_failures={"notify": []},
            retry={"base": 0.01},
            circuit_breaker={"recovery_timeout": 0.2},
        )

        @policy
        def verify(query):
            return client.verify_math(query)

        for index in range(10**6):
            with audit_context(kill_call=index):
                verify(questions[index % len(questions)])
            print(index, flush=True)
    """
)


def audit_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwed_guard.cli", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def child_env() -> dict[str, str]:
    return {**os.environ, "QWED_QUIET": "1"}


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not ready():
        assert proc.poll() is None, "the child ended before the kill"
        assert time.monotonic() < deadline, "the child never got going"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL


def test_killed_program_loses_no_completed_call(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    script = tmp_path / "run.py"
    script.write_text(PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(trail)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    completed: list[int] = []

    def enough() -> bool:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip():
            completed.append(int(line))
        return len(completed) >= KILL_AFTER

    kill_when(proc, enough)
    # Lines still in the pipe were printed before the kill: those calls completed too.
    completed += [int(line) for line in proc.stdout.read().split()]

    checked = audit_verify(trail)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK ")

    records = list(read_records(str(trail)))
    calls = {r["context"]["kill_call"]: r for r in records if r["event"] == "call"}
    attempts: dict[str, list[int]] = {}
    for attempt in attempts_of(records):  # the failed ones, and each answered one inline
        attempts.setdefault(attempt["call_id"], []).append(attempt["attempt"])
    for index in completed:
        call = calls.get(index)
        assert call is not None, f"completed call {index} has no call record"
        numbers = sorted(attempts.get(call["call_id"], []))
        assert numbers == list(range(1, call["attempt"] + 1)), (index, numbers)
    # The run was killed mid-stream, after calls that retried and fell back.
    assert len(completed) >= KILL_AFTER
    assert any(r["attempt"] > 1 for r in calls.values())
    assert any(r["source"] == "fallback" for r in calls.values())

    # A crash mid-write leaves a torn final line: verify skips it and says so; the next
    # writer cuts it off, records the repair, and the chain verifies whole.
    torn = b'{"v":1,"event":"attempt","call_id":"cut-sho'
    with open(trail, "ab") as handle:
        handle.write(torn)
    checked = audit_verify(trail)
    assert checked.returncode == 0 and "torn final line skipped" in checked.stdout
    with JsonlSink(str(trail), fsync="always") as sink:
        sink.append([{"v": 1, "event": "marker", "id": "after-the-crash"}])
    checked = audit_verify(trail)
    assert checked.returncode == 0 and "torn" not in checked.stdout, checked.stdout
    tail = list(read_records(str(trail)))[-2:]
    assert [r["event"] for r in tail] == ["repair", "marker"]
    assert tail[0]["dropped_bytes"] == len(torn)


def test_killed_demo_leaves_a_trail_that_verifies(tmp_path: Path) -> None:
    trail = tmp_path / "demo.audit.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwed_guard.cli",
            "demo",
            "--n",
            "400",
            "--concurrency",
            "16",
            "--audit",
            str(trail),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )

    def mid_run() -> bool:
        return trail.exists() and trail.read_bytes().count(b'"event":"call"') >= DEMO_KILL_AFTER

    kill_when(proc, mid_run)
    checked = audit_verify(trail)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    records = list(read_records(str(trail)))
    assert sum(r["event"] == "call" for r in records) >= DEMO_KILL_AFTER
    # Another demo run appends to the same trail (repairing a torn tail if the kill left one).
    with JsonlSink(str(trail), fsync="always") as sink:
        sink.append([{"v": 1, "event": "marker", "id": "next-run"}])
    checked = audit_verify(trail)
    assert checked.returncode == 0 and "torn" not in checked.stdout, checked.stdout
