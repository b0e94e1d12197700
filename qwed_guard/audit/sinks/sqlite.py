"""The SQLite sink (stdlib `sqlite3`): the same records and chain as the JSONL sink, in a table.

Each commit is one `BEGIN IMMEDIATE` transaction that reads the head, inserts the sealed records
(and a checkpoint when due) and commits, so several processes extend one chain. The database
runs in WAL mode; `fsync="always"`/`"batch"` use `synchronous=FULL`, `"none"` uses `OFF`.
Checkpoint entries also go to `<database>.checkpoints`, outside the database.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import orjson

from qwed_guard import clock
from qwed_guard.audit.chain import Key, checkpoint_entry, checkpoint_record
from qwed_guard.audit.record import GENESIS, seal
from qwed_guard.audit.sinks.base import ChainedSink, FsyncMode
from qwed_guard.audit.sinks.jsonl import make_private_dirs
from qwed_guard.errors import AuditError

if TYPE_CHECKING:
    import sqlite3

__all__ = ["SqliteSink", "read_sqlite_lines"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    call_id TEXT,
    event TEXT NOT NULL,
    outcome TEXT,
    hash TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_call ON audit_records (call_id);
"""


def read_sqlite_lines(path: str) -> list[bytes]:
    """Every stored record line of an SQLite trail, in seq order."""
    import sqlite3

    uri = "file:" + os.path.abspath(path) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        rows = conn.execute("SELECT record FROM audit_records ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [row[0].encode("utf-8") + b"\n" for row in rows]


class SqliteSink(ChainedSink):
    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "always",
        batch_size: int = 256,
        batch_ms: float = 50.0,
        key: Key | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        super().__init__(
            fsync=fsync,
            batch_size=batch_size,
            batch_ms=batch_ms,
            key=key,
            checkpoint_every=checkpoint_every,
        )
        self.path = os.path.abspath(os.fspath(path))
        self.checkpoint_path = self.path + ".checkpoints"
        self._conn: sqlite3.Connection | None = None
        self._unsigned = 0

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def _after_fork(self) -> None:
        self._conn = None  # never use a connection across fork
        self._unsigned = 0
        super()._after_fork()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            import sqlite3

            make_private_dirs(os.path.dirname(self.path))
            # Created here first so it is 0600; SQLite gives its -wal/-shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'OFF' if self.fsync == 'none' else 'FULL'}")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _commit(
        self, records: list[dict[str, Any]], durable: bool, *, checkpoint: bool = False
    ) -> None:
        import sqlite3

        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                entry, unsigned = self._insert(conn, records, checkpoint)
                conn.execute("COMMIT")
                self._unsigned = unsigned
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            raise AuditError(f"cannot write the audit trail {self.path}: {exc}") from exc
        if entry is not None:
            self._write_checkpoint_entry(entry)

    def _insert(
        self, conn: sqlite3.Connection, records: list[dict[str, Any]], checkpoint: bool
    ) -> tuple[dict[str, Any] | None, int]:
        row = conn.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
        head_row = row.fetchone()
        start, head = (head_row[0], head_row[1]) if head_row else (0, GENESIS)
        seq = start
        rows: list[tuple[Any, ...]] = []
        for record in records:
            seq += 1
            line, head = seal(record, seq, head)
            rows.append(self._row(record, line))
        key = self.key
        every = self.checkpoint_every
        unsigned = self._unsigned + len(records)
        entry = None
        if key is not None and (
            (checkpoint and unsigned) or (records and seq // every > start // every)
        ):
            wall = clock.wall()
            cp = checkpoint_record(key, seq, head, wall)
            line, head = seal(cp, seq + 1, head)
            seq += 1
            rows.append(self._row(cp, line))
            entry = checkpoint_entry(key, seq, head, wall)
            unsigned = 0
        conn.executemany("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return entry, unsigned

    @staticmethod
    def _row(record: dict[str, Any], line: bytes) -> tuple[Any, ...]:
        return (
            record["seq"],
            record.get("ts") or "",
            record.get("call_id"),
            record.get("event") or "",
            record.get("outcome"),
            record["hash"],
            line[:-1].decode("utf-8"),
        )

    def _write_checkpoint_entry(self, entry: dict[str, Any]) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.checkpoint_path, flags, 0o600)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            if self.fsync != "none":
                os.fsync(fd)
        finally:
            os.close(fd)

    def _finish(self) -> None:
        try:
            if self.key is not None and self._unsigned:
                self._commit([], True, checkpoint=True)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
