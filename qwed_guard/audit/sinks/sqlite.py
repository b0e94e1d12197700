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

from qwed_guard.audit.record import GENESIS
from qwed_guard.audit.sinks.base import Row
from qwed_guard.audit.sinks.files import (
    FileSink,
    FileTrail,
    check_head,
    make_private_dirs,
    open_side_file,
)
from qwed_guard.errors import AuditError

if TYPE_CHECKING:
    import sqlite3

__all__ = ["COLUMNS", "SqliteSink", "SqliteTrail", "iter_sqlite_rows"]

COLUMNS = ("seq", "ts", "call_id", "event", "outcome", "hash")
"""The columns beside `record`, in table order: each must equal the record's own field."""
MAGIC = b"SQLite format 3\x00"

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


class SqliteSink(FileSink):
    kind = "sqlite"
    schemes = ("sqlite",)

    def __init__(self, path: str | os.PathLike[str], **common: Any) -> None:
        """`common`: `ChainedSink`'s fsync, batch_size, batch_ms, key, checkpoint_every, anchor."""
        super().__init__(path, **common)
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def reader(cls, url: str) -> SqliteTrail:
        return SqliteTrail(url)

    def _after_fork(self) -> None:
        self._conn = None  # never use a connection across fork
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
            if head and head != MAGIC:
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
                row = conn.execute(
                    "SELECT seq, hash, record FROM audit_records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                start, head = (row[0], row[1]) if row else (0, GENESIS)
                if row:
                    check_head(orjson.loads(row[2]), self.key, self.path)
                sealed = self._seal(records, start, head, checkpoint)
                conn.executemany(
                    "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            record["seq"],
                            record.get("ts") or "",
                            record.get("call_id"),
                            record.get("event") or "",
                            record.get("outcome"),
                            record["hash"],
                            line[:-1].decode("utf-8"),
                        )
                        for record, line, _ in sealed.rows
                    ],
                )
                if sealed.signed is not None:
                    # Under the database's write lock, so entries chain in the trail's order.
                    self._sign(sealed.signed)
                conn.execute("COMMIT")
                self._unsigned = sealed.unsigned
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, ValueError, TypeError) as exc:
            raise AuditError(f"cannot write the audit trail {self.path}: {exc}") from exc

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteTrail(FileTrail):
    """An SQLite trail read back: its rows in seq order, each column checked against the
    record it repeats."""

    def rows(self) -> Iterator[Row]:
        for index, row in enumerate(iter_sqlite_rows(self.path), 1):
            text = row[-1] if isinstance(row[-1], str) else str(row[-1])
            columns = dict(zip(COLUMNS, row[:-1], strict=True))
            where = f"{os.path.basename(self.path)} row {index}"
            yield where, text.encode("utf-8", "replace") + b"\n", True, columns

    def mismatch(self, record: dict[str, Any], columns: dict[str, Any]) -> str | None:
        expected = {
            "seq": record.get("seq"),
            "ts": record.get("ts") or "",
            "call_id": record.get("call_id"),
            "event": record.get("event") or "",
            "outcome": record.get("outcome"),
            "hash": record.get("hash"),
        }
        return next((name for name in COLUMNS if columns.get(name) != expected[name]), None)
