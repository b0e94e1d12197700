"""The PostgreSQL audit sink against a live server: same records and chain as JSONL, many writer
processes, an insert/select-only role, and a server that dies mid-run (private servers, started
by tests/services.py)."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard import AuditError, VerificationFailed, fallback, retry
from qwed_guard.audit import JsonlSink, audited, read_records, verify_trail
from qwed_guard.audit.chain import Key
from qwed_guard.audit.cli import main as audit_cli
from qwed_guard.audit.sinks import FsyncMode, sink_from_url
from tests.services import PostgresServer, free_port
from tests.trails import attempts_of

psycopg = pytest.importorskip("psycopg", reason="psycopg (extra 'fleet') is not installed")

from qwed_guard.audit.sinks.postgres import PostgresSink, grant_sql  # noqa: E402


@dataclass
class Result:
    verified: bool
    value: Any = None
    confidence: float = 0.0
    error: str | None = None


OK = Result(True, 1102.5, 1.0)
OUTAGE = Result(False, error="LLM call failed: Error code: 503 - Service Unavailable")
BAD_KEY = Result(False, error="LLM call failed: Error code: 401 - Incorrect API key sk-abcd1234")
PATHS: dict[str, tuple[tuple[Result, ...], bool]] = {
    "verified_first_try": ((OK,), True),
    "retried_then_verified": ((OUTAGE, OUTAGE, OK), True),
    "fallback": ((OUTAGE, OUTAGE, OUTAGE), True),
    "raised": ((OUTAGE, BAD_KEY), False),
}


def with_options(url: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def drop(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_checkpoints")
        conn.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    """A table of this test's own in the live server, dropped afterwards."""
    name = f"audit_test_{uuid.uuid4().hex[:10]}"
    yield name
    drop(postgres_url, name)


def rows(url: str, table: str, what: str = "record_id") -> list[Any]:
    with psycopg.connect(url.split("?")[0]) as conn:
        return [r[0] for r in conn.execute(f"SELECT {what} FROM {table} ORDER BY seq")]


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what differs between two runs: times, ids and the hashes over them."""
    skip = {"ts", "id", "call_id", "hash", "prev_hash"}
    out = {k: v for k, v in record.items() if k not in skip}
    out["events"] = [{k: v for k, v in e.items() if k != "ts"} for e in record.get("events", [])]
    return out


def run_paths(sink: Any) -> None:
    for replies, use_fallback in PATHS.values():
        queue = list(replies)

        def ask(query: str) -> Result:
            return queue.pop(0)  # noqa: B023 - this path's own replies

        fn: Any = retry(max_tries=3, jitter=None)(ask)
        if use_fallback:
            fn = fallback(value=100.0)(fn)
        fn = audited(sink=sink)(fn)
        with contextlib.suppress(VerificationFailed):  # the path that raises
            fn("What is 5% of 22050?")
    sink.close()


def test_every_outcome_path_writes_the_records_jsonl_writes(
    postgres_url: str, table: str, tmp_path: Path, fake_clock: Any
) -> None:
    jsonl = tmp_path / "audit.jsonl"
    run_paths(JsonlSink(jsonl))
    url = with_options(postgres_url, table=table, spool=str(tmp_path / "spool.jsonl"))
    run_paths(PostgresSink(url))
    expected = list(read_records(str(jsonl)))
    stored = list(read_records(url))
    # 4 calls; attempts 1 + 3 + 3 + 2, the two verified ones inline in their call records
    assert len(stored) == 11
    assert len(attempts_of(stored)) == 9 and sum(1 for r in stored if r.get("answered")) == 2
    assert [comparable(r) for r in stored] == [comparable(r) for r in expected]
    assert [r["seq"] for r in stored] == list(range(1, 12))
    # The indexed columns carry the record's own values.
    assert rows(url, table, "outcome") == [r["outcome"] for r in stored]
    assert rows(url, table, "call_id") == [r["call_id"] for r in stored]
    utc = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    assert rows(url, table, utc) == [r["ts"] for r in stored]
    report = verify_trail(url)
    assert report.ok and report.records == 11, report.summary()
    assert "qwed_guard:" not in report.summary()  # no credentials in what is shown


def test_four_processes_extend_one_chain(
    postgres_url: str, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = with_options(postgres_url, table=table, spool=str(tmp_path / "spool.jsonl"))
    # No table yet: the four writers race to create it (under the advisory lock).
    pids = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mode: FsyncMode = "batch" if index % 2 else "always"
                sink = sink_from_url(url, fsync=mode, batch_size=64, batch_ms=5)
                for n in range(500):
                    sink.append([{"v": 1, "event": "attempt", "id": f"w{index}/{n}", "n": n}])
                sink.close()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    records = list(read_records(url))
    assert len(records) == 2000
    assert [r["seq"] for r in records] == list(range(1, 2001))
    assert len({r["id"] for r in records}) == 2000
    for index in range(4):  # each writer's records keep its order
        assert [r["n"] for r in records if r["id"].startswith(f"w{index}/")] == list(range(500))
    assert audit_cli(["audit", "verify", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "2000 records, seq 1-2000" in out


def test_replay_is_idempotent_by_record_id(postgres_url: str, table: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    url = with_options(postgres_url, table=table, spool=str(spool))
    sink = PostgresSink(url)
    sink.append([{"v": 1, "event": "attempt", "id": "r1"}])
    # As if a commit had landed but its acknowledgement was lost: r1 is spooled as well.
    spool.write_bytes(
        b'{"event":"attempt","id":"r1","v":1}\n{"event":"attempt","id":"r2","v":1}\n{"ev'
    )
    assert sink.replay_spool() == 2  # the torn last line was never acknowledged: ignored
    sink.append([{"v": 1, "event": "attempt", "id": "r3"}])
    sink.close()
    assert rows(url, table) == ["r1", "r2", "r3"]
    assert spool.stat().st_size == 0
    assert verify_trail(url).ok


def test_signed_checkpoints_and_tampering_are_checked(
    postgres_url: str,
    table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AUDIT_KEY", "k" * 32)
    url = with_options(postgres_url, table=table, spool=str(tmp_path / "spool.jsonl"))
    sink = PostgresSink(url, key=Key(b"k" * 32, "AUDIT_KEY"), checkpoint_every=5)
    for n in range(12):
        sink.append([{"v": 1, "event": "attempt", "id": f"r{n}"}])
    sink.close()
    events = [r["event"] for r in read_records(url)]
    assert events.count("checkpoint") == 3  # after seq 5 and 10, and on close
    assert len(rows(postgres_url, f"{table}_checkpoints", "seq")) == 3
    assert audit_cli(["audit", "verify", url, "--key-env", "AUDIT_KEY"]) == 0
    assert "verified with the key" in capsys.readouterr().out
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the owner, on purpose
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER append_only")
        conn.execute(
            # seq 1 is the signed genesis: r2 is at seq 4.
            f"UPDATE {table} SET record = replace(record::text, '\"r2\"', '\"rX\"')::json "
            "WHERE seq = 4"
        )
    assert audit_cli(["audit", "verify", url]) == 1
    assert "seq 4 edited" in capsys.readouterr().out


def test_a_role_that_may_only_insert_and_select(
    postgres_url: str, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner_url = with_options(postgres_url, table=table)
    PostgresSink(owner_url).create_schema()  # the owner creates the table
    role, password = f"audit_writer_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(grant_sql(role, table).encode())
        monkeypatch.setenv("AUDIT_WRITER_PASSWORD", password)
        host = postgres_url.split("@", 1)[1]
        role_url = f"postgresql://{role}:${{AUDIT_WRITER_PASSWORD}}@{host}?table={table}"
        sink = PostgresSink(with_options(role_url, spool=str(tmp_path / "spool.jsonl")))
        assert password not in sink.describe()
        sink.append([{"v": 1, "event": "attempt", "id": f"r{i}"} for i in range(3)])
        sink.close()
        assert verify_trail(role_url).records == 3  # it may read
        conninfo = f"postgresql://{role}:{password}@{host}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in (
                f"UPDATE {table} SET outcome = 'verified'",
                f"DELETE FROM {table}",
                f"TRUNCATE {table}",
                f"DELETE FROM {table}_checkpoints",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        # Even the owner meets the append-only trigger.
        with (
            psycopg.connect(postgres_url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(f"DELETE FROM {table}")
        assert rows(postgres_url, table) == ["r0", "r1", "r2"]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_unreachable_server_spools_and_never_logs_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loguru import logger

    messages: list[str] = []
    handler = logger.add(messages.append, level="INFO", format="{message}")
    monkeypatch.setenv("PGPASS_FOR_TEST", "s3cret-pw-for-the-audit")
    url = f"postgresql://writer:${{PGPASS_FOR_TEST}}@127.0.0.1:{free_port()}/db"
    spool = tmp_path / "state" / "spool.jsonl"
    try:
        sink = PostgresSink(with_options(url, spool=str(spool)), retry_interval=60)

        @audited(sink=sink)
        def ask(query: str) -> Result:
            return OK

        assert ask("What is 2 + 2?") is OK  # the call goes on: its records are in the spool
        assert sink.degraded
        spooled = [orjson.loads(line) for line in spool.read_bytes().splitlines()]
        assert [r["event"] for r in spooled] == ["call"]  # its verified attempt inline
        assert spooled[0]["answered"]["outcome"] == "verified"
        assert all("seq" not in r and "hash" not in r for r in spooled)
        assert stat.S_IMODE(spool.stat().st_mode) == 0o600
        assert stat.S_IMODE(spool.parent.stat().st_mode) == 0o700
        sink.close()
    finally:
        logger.remove(handler)
    text = "".join(messages)
    assert "unreachable" in text and "spool" in text
    assert "s3cret-pw-for-the-audit" not in text


def test_no_spool_or_an_unwritable_spool_fails_closed(tmp_path: Path) -> None:
    url = f"postgresql://writer@127.0.0.1:{free_port()}/db"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for spool in ("off", str(blocker / "spool.jsonl")):
        sink = PostgresSink(with_options(url, spool=spool))
        with pytest.raises(AuditError, match="cannot write the audit trail"):
            sink.append([{"v": 1, "event": "attempt", "id": "r1"}])


def test_server_killed_and_restarted_mid_run_loses_and_duplicates_nothing(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.jsonl"
    url = with_options(postgres_server.url, spool=str(spool), retry_interval="0")
    sink = PostgresSink(url, fsync="always")
    other = PostgresSink(url, fsync="batch", batch_size=16, batch_ms=2)  # a second writer

    @audited(sink=sink)
    def ask(query: str) -> Result:
        return OK

    def burst(start: int, stop: int, each: Callable[[int], None]) -> None:
        for n in range(start, stop):
            each(n)
            other.append([{"v": 1, "event": "attempt", "id": f"other/{n}"}])

    def call(n: int) -> None:
        assert ask(f"q{n}") is OK

    burst(0, 100, call)
    other.flush()
    postgres_server.crash()
    burst(100, 200, call)  # no call fails: their records are durable in the spool
    other.flush()
    assert sink.degraded and spool.stat().st_size > 0
    postgres_server.start()
    burst(200, 300, call)  # the first commit replays the spool, then writes on
    sink.close()
    other.close()
    assert spool.stat().st_size == 0
    ids = rows(postgres_server.url, "qwed_guard_audit")
    assert len(ids) == len(set(ids)) == 300 + 300  # one record per verified call
    calls = [r for r in read_records(url) if r.get("event") == "call"]
    assert [r["query"] for r in calls] == [f"q{n}" for n in range(300)]  # in order
    assert all(r["answered"]["outcome"] == "verified" for r in calls)
    others = [i for i in ids if i.startswith("other/")]
    assert others == [f"other/{n}" for n in range(300)]
    report = verify_trail(url)
    assert report.ok and report.records == 600, report.summary()


def test_every_postgres_column_is_checked_and_a_cut_head_is_caught(
    postgres_url: str,
    table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AUDIT_KEY", "k" * 32)
    url = with_options(postgres_url, table=table, spool=str(tmp_path / "spool.jsonl"))
    anchor = tmp_path / "anchor"
    sink = PostgresSink(url, key=Key(b"k" * 32, "AUDIT_KEY"), checkpoint_every=5, anchor=anchor)
    for n in range(8):
        sink.append([{"v": 1, "event": "call", "id": f"r{n}", "outcome": "transient"}])
    sink.close()
    verify = ["audit", "verify", url, "--key-env", "AUDIT_KEY", "--anchor", str(anchor)]
    assert audit_cli(verify) == 0, capsys.readouterr().out
    assert "anchor agrees" in capsys.readouterr().out
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the owner, on purpose
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER append_only")
        conn.execute(f"UPDATE {table} SET outcome = 'verified' WHERE seq = 3")
    assert audit_cli(verify) == 1
    assert "seq 3 edited" in (out := capsys.readouterr().out) and "outcome column" in out
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET outcome = 'transient' WHERE seq = 3")
        conn.execute(f"DELETE FROM {table} WHERE seq <= 2")
    assert audit_cli(verify) == 1
    assert "seq 1 missing" in capsys.readouterr().out
