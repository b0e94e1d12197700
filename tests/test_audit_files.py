"""The writer touches only trails of its own: one lock per real file, no symlink followed, no
foreign file appended to or cut, no keyless record added to a signed trail."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard.audit import JsonlSink, verify_trail
from qwed_guard.audit.chain import Key
from qwed_guard.audit.sinks.sqlite import SqliteSink
from qwed_guard.audit.verify import read_records
from qwed_guard.errors import AuditError

KEY = Key(b"file-safety-key-0123456789abcdef", "FILE_KEY")
RECORD = {"v": 1, "event": "attempt", "id": "x"}

WRITER = textwrap.dedent(
    """
    import sys
    from qwed_guard.audit import JsonlSink

    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sink = JsonlSink(path, fsync="none")
    for n in range(count):
        sink.append([{"v": 1, "event": "attempt", "id": f"{name}/{n}"}])
    sink.close()
    """
)


def test_two_processes_through_a_symlinked_directory_share_one_chain(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    names = {"a": real / "audit.jsonl", "b": tmp_path / "link" / "audit.jsonl"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "400"])
        for name, path in names.items()
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = list(read_records(str(real / "audit.jsonl")))
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, 801))  # no duplicate, no gap, no repair record
    assert sorted(r["id"][0] for r in records).count("a") == 400
    assert verify_trail(str(names["b"])).ok
    assert not (tmp_path / "link" / "audit.jsonl.lock").is_symlink()


def test_a_symlinked_trail_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b"")
    (tmp_path / "audit.jsonl").symlink_to(target)
    sink = JsonlSink(tmp_path / "audit.jsonl", fsync="none")
    with pytest.raises(AuditError, match="is a symbolic link"):
        sink.append([dict(RECORD)])
    assert target.read_bytes() == b""


@pytest.mark.parametrize("side", [".lock", ".checkpoints"])
def test_planted_side_file_symlinks_are_refused(tmp_path: Path, side: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    path = tmp_path / "audit.jsonl"
    Path(str(path) + side).symlink_to(victim)
    sink = JsonlSink(path, fsync="none", key=KEY, checkpoint_every=1)
    with pytest.raises(AuditError, match="symbolic link"):
        sink.append([dict(RECORD)])
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "missing-target").exists()


def test_a_dangling_lock_symlink_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    Path(str(path) + ".lock").symlink_to(tmp_path / "created-by-the-writer")
    with pytest.raises(AuditError, match="symbolic link"):
        JsonlSink(path, fsync="none").append([dict(RECORD)])
    assert not (tmp_path / "created-by-the-writer").exists()


def test_a_planted_anchor_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / "anchor").symlink_to(victim)
    sink = JsonlSink(
        tmp_path / "audit.jsonl",
        fsync="none",
        key=KEY,
        checkpoint_every=1,
        anchor=tmp_path / "anchor",
    )
    with pytest.raises(AuditError, match="symbolic link"):
        sink.append([dict(RECORD)])
    assert victim.read_bytes() == b"precious\n"


@pytest.mark.parametrize(
    "content",
    [
        b"2026-01-01 12:00:00 INFO started\n2026-01-01 12:00:01 INFO half a li",
        b'{"level": "info", "msg": "a JSON log, not a trail"}\n',
        b"\x00\x01binary",
    ],
    ids=["text-log-with-torn-tail", "json-log", "binary"],
)
def test_a_file_that_is_not_a_trail_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(content)
    with pytest.raises(AuditError, match="holds something else than audit records"):
        JsonlSink(path, fsync="none").append([dict(RECORD)])
    assert path.read_bytes() == content


def test_an_empty_trail_left_by_a_writer_killed_before_its_first_record_is_extended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    with JsonlSink(path, fsync="none") as sink:
        sink.append([dict(RECORD)])
    assert orjson.loads(path.read_bytes())["seq"] == 1
    assert verify_trail(str(path)).ok


def test_a_hard_linked_trail_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    JsonlSink(path, fsync="none").append([dict(RECORD)])
    os.link(path, tmp_path / "other-name.jsonl")
    with pytest.raises(AuditError, match="2 hard links"):
        JsonlSink(tmp_path / "other-name.jsonl", fsync="none").append([dict(RECORD)])


def test_a_fifo_at_the_trail_path_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path)
    with pytest.raises(AuditError, match="not a regular file"):
        JsonlSink(path, fsync="none").append([dict(RECORD)])


def test_signed_and_unsigned_writers_do_not_mix(tmp_path: Path) -> None:
    signed = tmp_path / "signed.jsonl"
    JsonlSink(signed, fsync="none", key=KEY).append([dict(RECORD)])
    before = signed.read_bytes()
    with pytest.raises(AuditError, match="a writer without key_env would add unsigned records"):
        JsonlSink(signed, fsync="none").append([dict(RECORD)])
    other = Key(b"another-key-0123456789abcdefgh", "OTHER")
    with pytest.raises(AuditError, match="signed with another key"):
        JsonlSink(signed, fsync="none", key=other).append([dict(RECORD)])
    assert signed.read_bytes() == before
    plain = tmp_path / "plain.jsonl"
    JsonlSink(plain, fsync="none").append([dict(RECORD)])
    with pytest.raises(AuditError, match="is not signed: a writer with key_env cannot extend it"):
        JsonlSink(plain, fsync="none", key=KEY).append([dict(RECORD)])
    first = orjson.loads(before.splitlines()[0])
    assert first["event"] == "genesis" and first["key_id"] == KEY.id and first["sig"]


def test_sqlite_refuses_foreign_databases_and_symlinks(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = other.read_bytes()
    with pytest.raises(AuditError, match="holds other tables"):
        SqliteSink(other, fsync="none").append([dict(RECORD)])
    assert other.read_bytes() == before
    text = tmp_path / "notes.db"
    text.write_bytes(b"just some notes\n")
    with pytest.raises(AuditError, match="not an SQLite database"):
        SqliteSink(text, fsync="none").append([dict(RECORD)])
    assert text.read_bytes() == b"just some notes\n"
    (tmp_path / "link.db").symlink_to(other)
    with pytest.raises(AuditError, match="symbolic link"):
        SqliteSink(tmp_path / "link.db", fsync="none").append([dict(RECORD)])


def test_retention_writes_its_prune_record_before_removing_files(
    tmp_path: Path, fake_clock: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync="none", key=KEY, rotate_bytes=1200, keep_files=1)
    for n in range(40):
        sink.append([{**RECORD, "id": str(n), "pad": "p" * 80}])
    sink.close()
    report = verify_trail(str(path), key=KEY)
    assert report.ok and report.first_seq is not None and report.first_seq > 1, report.summary()
    assert "removed by retention" in report.summary()
    prunes = [r for r in read_records(str(path)) if r["event"] == "prune"]
    assert prunes and prunes[-1]["first_seq"] == report.first_seq


def test_a_keyed_writer_killed_before_its_first_checkpoint_leaves_a_trail_that_verifies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(
        """
        import os, sys
        from qwed_guard.audit import JsonlSink
        from qwed_guard.audit.chain import Key

        sink = JsonlSink(sys.argv[1], key=Key(sys.argv[2].encode()), checkpoint_every=1000)
        for n in range(3):
            sink.append([{"v": 1, "event": "attempt", "id": str(n)}])
        os._exit(9)  # killed: no closing checkpoint, no cleanup
        """
    )
    secret = KEY.secret.decode()
    done = subprocess.run([sys.executable, "-c", script, str(path), secret], timeout=60)
    assert done.returncode == 9
    report = verify_trail(str(path), key=KEY)
    assert report.ok and report.checkpoints == 0, report.summary()
    assert report.records == 4  # the genesis and three signed records
    assert "4 signed record(s) (no checkpoint yet) are not yet covered" in report.summary()
