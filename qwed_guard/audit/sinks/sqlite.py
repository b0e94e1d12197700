"""The SQLite sink (stdlib `sqlite3`): the same records and chain as the JSONL sink, in a table.

Each commit is one `BEGIN IMMEDIATE` transaction that reads the head, inserts the sealed records
(and a checkpoint when due) and commits, so several processes extend one chain. The database
runs in WAL mode; `fsync="always"`/`"batch"` use `synchronous=FULL`, `"none"` uses `OFF`.
Checkpoint entries also go to `<database>.checkpoints`, outside the database (and to the
anchor file, if one is named). The columns beside `record` repeat fields of the hashed record,
and the verifier checks each against it.

The database must be a regular file, not a symlink, and either new, empty, or an audit trail
(a database holding other tables is refused untouched).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from qwed_guard import clock
from qwed_guard.audit.chain import Key, checkpoint_record, genesis_record
from qwed_guard.audit.record import GENESIS, seal
from qwed_guard.audit.sinks.base import ChainedSink, FsyncMode
from qwed_guard.audit.sinks.jsonl import (
    check_head,
    make_private_dirs,
    open_side_file,
    real_path,
    write_entry,
)
from qwed_guard.errors import AuditError, bad_parameter

if TYPE_CHECKING:
    import sqlite3

__all__ = ["COLUMNS", "SqliteSink", "iter_sqlite_rows", "read_sqlite_lines"]

COLUMNS = ("seq", "ts", "call_id", "event", "outcome", "hash")
"""The columns beside `record`, in table order: each must equal the record's own field."""

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


def iter_sqlite_rows(path: str) -> Iterator[tuple[Any, ...]]:
    """Every row of an SQLite trail (`COLUMNS` then `record`), in seq order, streamed.

    Raises `ValueError` with one clear line for a file that is not an SQLite audit trail."""
    import sqlite3

    uri = "file:" + os.path.abspath(path) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: cannot open the SQLite database ({exc})") from None
    try:
        try:
            cur = conn.execute(
                f"SELECT {', '.join(COLUMNS)}, record FROM audit_records ORDER BY seq"
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: not an SQLite audit trail ({exc})") from None
        while True:
            try:
                rows = cur.fetchmany(1000)
            except sqlite3.DatabaseError as exc:
                raise ValueError(f"{path}: the database is damaged ({exc})") from None
            if not rows:
                return
            yield from rows
    finally:
        conn.close()


def row_mismatch(record: dict[str, Any], columns: dict[str, Any]) -> str | None:
    """The first stored column that disagrees with the hashed record, if any."""
    expected = {
        "seq": record.get("seq"),
        "ts": record.get("ts") or "",
        "call_id": record.get("call_id"),
        "event": record.get("event") or "",
        "outcome": record.get("outcome"),
        "hash": record.get("hash"),
    }
    for name in COLUMNS:
        if columns.get(name) != expected[name]:
            return name
    return None


def read_sqlite_lines(path: str) -> Iterator[bytes]:
    """Every stored record line of an SQLite trail, in seq order."""
    for row in iter_sqlite_rows(path):
        text = row[-1]
        yield (text if isinstance(text, str) else str(text)).encode("utf-8", "replace") + b"\n"


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
        anchor: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            fsync=fsync,
            batch_size=batch_size,
            batch_ms=batch_ms,
            key=key,
            checkpoint_every=checkpoint_every,
        )
        if anchor is not None and not isinstance(anchor, (str, os.PathLike)):
            raise bad_parameter("anchor", "must be a file path", wrong_type=True)
        self.path = real_path(path)
        self.checkpoint_path = self.path + ".checkpoints"
        self.anchor = real_path(anchor) if anchor is not None else None
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
            fd = open_side_file(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
            try:
                head = os.pread(fd, 16, 0)
            finally:
                os.close(fd)
            if head and head != b"SQLite format 3\x00":
                raise AuditError(
                    f"refusing to use {self.path} as an audit trail file: it is not an SQLite "
                    "database"
                )
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            try:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if tables and "audit_records" not in tables:
                    raise AuditError(
                        f"refusing to use {self.path} as an audit trail file: the database "
                        f"holds other tables ({', '.join(sorted(tables)[:3])})"
                    )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'OFF' if self.fsync == 'none' else 'FULL'}")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
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
                signed, unsigned = self._insert(conn, records, checkpoint)
                if signed is not None and self.key is not None:
                    # Under the database's write lock, so entries chain in the trail's order.
                    write_entry(self.checkpoint_path, self.anchor, self.key, *signed, self.fsync)
                conn.execute("COMMIT")
                self._unsigned = unsigned
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            raise AuditError(f"cannot write the audit trail {self.path}: {exc}") from exc

    def _insert(
        self, conn: sqlite3.Connection, records: list[dict[str, Any]], checkpoint: bool
    ) -> tuple[tuple[int, str, float] | None, int]:
        row = conn.execute("SELECT seq, hash, record FROM audit_records ORDER BY seq DESC LIMIT 1")
        head_row = row.fetchone()
        key = self.key
        if head_row:
            start, head = head_row[0], head_row[1]
            check_head(orjson.loads(head_row[2]), key, self.path)
        else:
            start, head = 0, GENESIS
            if key is not None and records:
                records = [genesis_record(key, clock.wall()), *records]
        seq = start
        rows: list[tuple[Any, ...]] = []
        for record in records:
            seq += 1
            line, head = seal(record, seq, head, key)
            rows.append(self._row(record, line))
        every = self.checkpoint_every
        unsigned = self._unsigned + len(records)
        signed = None
        if key is not None and (
            (checkpoint and unsigned) or (records and seq // every > start // every)
        ):
            wall = clock.wall()
            cp = checkpoint_record(key, seq, head, wall)
            line, head = seal(cp, seq + 1, head, key)
            seq += 1
            rows.append(self._row(cp, line))
            signed = (seq, head, wall)
            unsigned = 0
        conn.executemany("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return signed, unsigned

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

    def _finish(self) -> None:
        try:
            if self.key is not None and self._unsigned:
                self._commit([], True, checkpoint=True)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
