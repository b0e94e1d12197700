"""The JSONL trail under crashes, several writer processes, a full disk, and other people."""

from __future__ import annotations

import os
import random
import resource
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard import AuditError, fallback, retry
from qwed_guard.audit import JsonlSink, audited, read_records, verify_trail
from qwed_guard.audit.chain import Key
from qwed_guard.audit.record import rfc3339
from qwed_guard.audit.sinks import sink_from_url
from tests.trails import attempts_of


@dataclass
class Result:
    verified: bool
    value: Any = None
    confidence: float = 0.0
    error: str | None = None


def in_child(body: Callable[[], int]) -> int:
    """Run `body` in a forked child (already-imported modules, no interpreter start-up)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_sigkill_at_random_moments_loses_no_returned_call(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rng = random.Random(5)
    torn_seen = returned_total = 0
    for run in range(50):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                sink = JsonlSink(path, fsync="always")
                replies = iter(
                    [Result(False, error="Error code: 503"), Result(True, 1, 1.0)] * 10**6
                )

                @audited(sink=sink)
                @fallback(value=0)
                @retry(max_tries=2, base=0, jitter=None)
                def ask(query: str) -> Result:
                    return next(replies)  # noqa: B023 - this child's own

                for i in range(10**6):
                    ask(f"run{run}-q{i}")
                    os.write(write_end, f"run{run}-q{i}\n".encode())  # returned: must be on disk
            finally:
                os._exit(0)
        os.close(write_end)
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        returned = set()
        with os.fdopen(read_end, "rb") as pipe:
            returned = {line.decode().strip() for line in pipe.read().splitlines()}
        returned_total += len(returned)
        raw = path.read_bytes() if path.exists() else b""
        torn = raw and not raw.endswith(b"\n")
        torn_seen += bool(torn)
        complete = raw.splitlines()[:-1] if torn else raw.splitlines()
        records = [orjson.loads(line) for line in complete]  # at most the last line is torn
        queries: dict[Any, list[dict[str, Any]]] = {}
        for record in records:
            queries.setdefault(record.get("query"), []).append(record)
        for query in returned:
            mine = queries.get(query, [])
            # The failed attempt, then the call record with the verified attempt inline.
            assert [r["event"] for r in mine] == ["attempt", "call"], (run, query)
            assert [a["outcome"] for a in attempts_of(mine)] == ["transient", "verified"]
        # Reopening repairs the torn line (and says so) and the chain still verifies.
        with JsonlSink(path, fsync="always") as sink:
            sink.append([{"v": 1, "event": "marker", "id": f"marker/{run}"}])
        after = path.read_bytes()
        assert after.endswith(b"\n")
        if torn:
            assert b'"event":"repair"' in after.splitlines()[-2]
        report = verify_trail(str(path))
        assert report.ok, report.summary()
    assert sum(1 for r in read_records(str(path)) if r["event"] == "marker") == 50
    assert returned_total > 10  # the kills landed mid-stream, not all before the first call
    print(f"{returned_total} returned calls checked, {torn_seen} torn tails repaired")


def test_four_processes_append_one_continuous_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "audit.jsonl"

    def writer(index: int) -> Callable[[], int]:
        def body() -> int:
            mode = "batch" if index == 0 else "none"
            sink = JsonlSink(path, fsync=mode, batch_size=64, batch_ms=5)
            for n in range(2000):
                sink.append([{"v": 1, "event": "attempt", "id": f"w{index}/{n}", "n": n}])
            sink.close()
            return 0

        return body

    pids = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = writer(index)()
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    records = list(read_records(str(path)))
    assert len(records) == 8000
    assert [r["seq"] for r in records] == list(range(1, 8001))
    assert len({r["id"] for r in records}) == 8000
    for index in range(4):  # each writer's own records stay in its order
        mine = [r["n"] for r in records if r["id"].startswith(f"w{index}/")]
        assert mine == list(range(2000))
    report = verify_trail(str(path))
    assert report.ok and report.records == 8000, report.summary()


def test_files_are_private_under_a_permissive_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERM_KEY", "permission-test-key-0123456789")
    old = os.umask(0)
    try:
        path = tmp_path / "a" / "b" / "audit.jsonl"
        sink = JsonlSink(path, key=Key(b"permission-test-key-0123456789"), checkpoint_every=1)
        sink.append([{"v": 1, "event": "attempt", "id": "x"}])
        sink.close()
        db = tmp_path / "c" / "audit.db"
        sqlite_sink = sink_from_url(f"sqlite:{db}", fsync="always")
        sqlite_sink.append([{"v": 1, "event": "attempt", "id": "y"}])
        sqlite_sink.close()
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "c"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    created = [path, Path(f"{path}.lock"), Path(f"{path}.checkpoints"), db]
    created += [p for p in db.parent.iterdir() if p.name.startswith("audit.db-")]
    for file in created:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_canary_secrets_never_reach_the_file(tmp_path: Path, fake_clock: Any) -> None:
    path = tmp_path / "audit.jsonl"
    canaries = ["sk-proj-CANARYabcdef123456", "Bearer CANARYtoken.xyz", "https://bob:CANARYpw@h/x"]

    @audited(sink=f"jsonl:{path}", context={"auth": canaries[1]})
    @fallback(value=0)
    @retry(max_tries=2, jitter=None)
    def ask(query: str) -> Result:
        return Result(False, error=f"LLM call failed: Error code: 401 - bad key {canaries[0]}")

    ask(f"use {canaries[2]} and {canaries[0]}")
    text = path.read_text()
    assert "CANARY" not in text
    assert '"outcome":"permanent"' in text


def test_disk_full_makes_the_call_raise_audit_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    def body() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        answered = 0

        @audited(sink=f"jsonl:{path}")
        def ask(query: str) -> Result:
            return Result(True, 1, 1.0)

        try:
            for i in range(1000):
                ask(f"question {i} " + "x" * 200)
                answered += 1
        except AuditError as exc:
            ok = "File too large" in str(exc) and answered > 0
            return 0 if ok else 3
        return 4

    assert in_child(body) == 0
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data) <= 4096  # no partial record left behind
    assert verify_trail(str(path)).ok


def test_batch_mode_group_commits_and_fails_closed_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync="batch", batch_size=50, batch_ms=20)
    for n in range(120):
        sink.append([{"v": 1, "event": "attempt", "id": str(n)}])
    sink.flush()
    assert len(path.read_bytes().splitlines()) == 120
    os.chmod(tmp_path, 0o700)
    sink._fd, saved = os.open(os.devnull, os.O_RDONLY), sink._fd  # writes now fail
    sink._size = os.fstat(saved).st_size
    sink._ino = (os.fstat(saved).st_dev, os.fstat(saved).st_ino)
    try:
        sink.append([{"v": 1, "event": "attempt", "id": "lost"}])
        with pytest.raises(AuditError):
            sink.flush()
        with pytest.raises(AuditError):
            sink.append([{"v": 1, "event": "attempt", "id": "refused"}])
    finally:
        os.close(sink._fd)
        sink._fd = saved
    assert verify_trail(str(path)).ok


def test_rotation_carries_the_chain_and_retention_spares_the_active_file(
    tmp_path: Path, fake_clock: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync="none", rotate_bytes=2000, keep_files=2)
    for n in range(60):
        sink.append([{"v": 1, "event": "attempt", "id": str(n), "pad": "p" * 100}])
    sink.close()
    rotated = sorted(p.name for p in tmp_path.glob("audit.*.jsonl"))
    assert len(rotated) == 2 and path.exists()
    report = verify_trail(str(path))
    records = list(read_records(str(path)))
    prunes = [r for r in records if r["event"] == "prune"]
    # Each removal is announced by a prune record written before the files go.
    assert prunes and all(r["files"] for r in prunes)
    assert report.ok and report.last_seq == records[-1]["seq"], report.summary()
    attempts = [r for r in records if r["event"] == "attempt"]
    assert attempts[-1]["id"] == "59" and len(attempts) < 60  # the newest kept, the oldest gone
    assert "removed by retention (prune record at seq" in report.summary()
    assert records[0]["seq"] > 1

    timed = tmp_path / "timed.jsonl"
    sink = JsonlSink(timed, fsync="none", rotate_seconds=3600)
    sink.append([{"v": 1, "event": "attempt", "id": "a", "ts": rfc3339(fake_clock.wall())}])
    fake_clock.advance(1800)
    sink.append([{"v": 1, "event": "attempt", "id": "b", "ts": rfc3339(fake_clock.wall())}])
    assert not list(tmp_path.glob("timed.*.jsonl"))
    fake_clock.advance(1801)
    sink.append([{"v": 1, "event": "attempt", "id": "c", "ts": rfc3339(fake_clock.wall())}])
    sink.close()
    assert len(list(tmp_path.glob("timed.*.jsonl"))) == 1
    assert [r["seq"] for r in read_records(str(timed))] == [1, 2, 3]
    assert [r["id"] for r in read_records(str(timed))] == ["a", "b", "c"]
    assert verify_trail(str(timed)).ok


def test_same_url_shares_one_writer_and_bad_urls_are_named() -> None:
    from qwed_guard.errors import ParameterError

    assert sink_from_url("jsonl:/tmp/x-qwed-audit.jsonl") is sink_from_url(
        "jsonl:/tmp/x-qwed-audit.jsonl"
    )
    with pytest.raises(ParameterError, match="sink: unsupported sink URL"):
        sink_from_url("ftp://x")
    with pytest.raises(ParameterError, match="fsync: must be one of"):
        audited(sink="jsonl:/tmp/x.jsonl", fsync="sometimes")  # type: ignore[call-overload]
    with pytest.raises(ParameterError, match="rotate_bytes"):
        sink_from_url("sqlite:/tmp/x.db", rotate_bytes=10)


def test_through_guarded_client_and_the_simulator(tmp_path: Path, fake_clock: Any) -> None:
    from qwed_guard import guarded_client
    from qwed_guard.sim import SimulatedLLM, sample_questions

    question = sample_questions(1, seed=3)[0]
    path = tmp_path / "audit.jsonl"
    with SimulatedLLM(profile="healthy", seed=1, script=[503]) as llm:
        client = guarded_client(base_url=llm.base_url, model=llm.model)

        @audited(sink=f"jsonl:{path}")
        @fallback(value=None)
        @retry(max_tries=3, jitter=None)
        def ask(query: str) -> Any:
            return client.verify_math(query)

        result = ask(question.text)
    assert result.source == "verified" and result.verified is True
    records = list(read_records(str(path)))
    assert [(r["event"], r["outcome"]) for r in records] == [
        ("attempt", "transient"),
        ("call", "verified"),
    ]
    answered = records[1]["answered"]
    assert answered["outcome"] == "verified" and answered["attempt"] == 2
    assert records[0]["status"] == 503 and answered["wait_us"] == 1_000_000
    assert records[-1]["query"] == question.text
    assert verify_trail(str(path)).ok


def test_torn_tail_is_repaired_on_open_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path, fsync="always") as sink:
        sink.append([{"v": 1, "event": "attempt", "id": str(n)} for n in range(3)])
    torn = b'{"v":1,"event":"attempt","id":"half-writ'
    with open(path, "ab") as handle:  # what a power cut mid-write leaves
        handle.write(torn)
    assert "torn final line skipped" in verify_trail(str(path)).summary()
    with JsonlSink(path, fsync="always") as sink:
        sink.append([{"v": 1, "event": "attempt", "id": "after"}])
    records = list(read_records(str(path)))
    assert [r["event"] for r in records] == ["attempt"] * 3 + ["repair", "attempt"]
    assert records[3]["dropped_bytes"] == len(torn)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert verify_trail(str(path)).ok and torn not in path.read_bytes()


def test_a_flush_asked_for_during_a_commit_does_not_wait_another_batch_window() -> None:
    import threading

    from qwed_guard.audit.sinks.base import ChainedSink

    committing, release = threading.Event(), threading.Event()
    commits: list[int] = []

    class Slow(ChainedSink):
        def _commit(self, records: list[dict[str, Any]], durable: bool) -> None:
            committing.set()
            assert release.wait(5)
            commits.append(len(records))

    # A 30 s window: a flush that waited for it would time out below.
    sink = Slow(fsync="batch", batch_ms=30_000, batch_size=10_000)
    sink.append([{"n": 1}])
    assert committing.wait(5)  # the first batch is being committed
    sink.append([{"n": 2}])  # queued behind it
    done = threading.Event()
    flusher = threading.Thread(target=lambda: (sink.flush(timeout=10), done.set()))
    flusher.start()
    release.set()
    started = time.monotonic()
    assert done.wait(5), "flush waited for a batch window after the commit it asked during"
    assert time.monotonic() - started < 5
    flusher.join()
    assert commits == [1, 1]
    sink.close()


def test_a_writer_that_falls_behind_slows_the_callers_instead_of_growing_its_queue() -> None:
    import threading

    from qwed_guard.audit.sinks.base import ChainedSink

    release = threading.Event()
    committed: list[int] = []

    class Stuck(ChainedSink):
        def _commit(self, records: list[dict[str, Any]], durable: bool) -> None:
            assert release.wait(5)
            committed.append(len(records))

    sink = Stuck(fsync="batch", batch_ms=1, batch_size=8)
    limit = sink._high_water
    done = threading.Event()

    def produce() -> None:
        for n in range(3 * limit):
            sink.append([{"n": n}])
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    # The writer is stuck on its first batch: the producer fills the queue, then waits.
    deadline = time.monotonic() + 5
    while len(sink._pending) < limit and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(sink._pending) == limit
    assert not done.wait(0.05), "append went on past the queue's bound"
    release.set()
    assert done.wait(10)
    producer.join()
    sink.flush()
    assert sum(committed) == 3 * limit  # nothing lost
    sink.close()
