"""The PostgreSQL sink (psycopg 3): the same records and hash chain as the JSONL sink, in a table
that every worker process of a fleet appends to.

    @audited(sink="postgresql://audit_writer:${AUDIT_PG_PASSWORD}@db:5432/app", fsync="batch")

Each commit is one transaction: `pg_advisory_xact_lock` (one lock per table), read the head,
seal the records with `qwed_guard.audit.record.seal`, insert them in one statement (and a
checkpoint when due), commit. So writers on any number of hosts extend one continuous chain.
`fsync="always"` commits each append; `"batch"` lets the writer thread group appends into one
transaction; `"none"` commits each append with `synchronous_commit=off`.

The table is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE, and the writer role
needs only INSERT and SELECT (`grant_sql(role)`). Record ids are unique; a record whose id is
already in the table is skipped, so replaying records is idempotent.

When PostgreSQL cannot be reached, records go to a local spool file (JSONL, mode 0600, fsynced
unless `fsync="none"`) and the guarded call goes on: the record is durable on the host even
though the database is not. This is the one place the audit trail does not fail closed. The next
commit after `retry_interval` seconds, `flush()` and `close()` replay the spool first, in order,
skipping ids already stored, so every record lands exactly once. If the spool cannot be written
either, the call raises `AuditError`. Processes on one host share the spool (under a file lock),
so any of them replays it. Spooled records are sealed when they are replayed: their `seq` places
them after whatever other hosts wrote meanwhile.

URL: `postgresql://[user[:password]@]host[:port]/database` with `${VAR}` expanded from the
environment, libpq's own variables (PGPASSWORD, PGUSER, PGSSLMODE, ...) honoured, and options:
`?table=qwed_guard_audit&spool=PATH&retry_interval=5` (`spool=off` fails closed instead); any
other query parameter goes to libpq (`sslmode=require`, `connect_timeout=5`). Passwords are
registered as secrets and never logged; logs show the URL without credentials.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import psycopg

from qwed_guard import clock
from qwed_guard.audit.chain import checkpoint_entry
from qwed_guard.audit.record import GENESIS, canonical
from qwed_guard.audit.sinks.base import FLUSH_TIMEOUT, ChainedSink, Row, Trail
from qwed_guard.audit.sinks.files import append_entry, line_start, make_private_dirs
from qwed_guard.errors import AuditError, bad_parameter
from qwed_guard.outcomes import scrub
from qwed_guard.urls import display_url, expand_path, split_url

__all__ = [
    "DEFAULT_TABLE",
    "PostgresSink",
    "PostgresTrail",
    "display_url",
    "grant_sql",
    "schema_sql",
]

DEFAULT_TABLE = "qwed_guard_audit"
DEFAULT_RETRY_INTERVAL = 5.0
DEFAULT_CONNECT_TIMEOUT = "5"
_OWN_OPTIONS = ("table", "spool", "retry_interval")
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}(\.[a-z_][a-z0-9_]{0,40})?")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
_SEALED_FIELDS = ("seq", "prev_hash", "hash", "sig")  # set when sealed
_REPLAY_CHUNK = 1000
_Connection = psycopg.Connection[tuple[Any, ...]]
# What an unreachable, restarting or shutting-down server raises: spool, do not fail.
_UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)
# Connections of a parent process, kept alive in a forked child so that garbage collection
# never closes a socket the parent still uses.
_inherited: list[Any] = []


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The DDL the sink runs when its table is missing (for an administrator to run instead)."""
    t = _check_table(table)
    base = t.rsplit(".", 1)[-1]
    trigger = f"{t}_append_only"  # the function lives in the table's schema
    return f"""
CREATE TABLE IF NOT EXISTS {t} (
    seq BIGINT PRIMARY KEY,
    record_id TEXT NOT NULL,
    ts TIMESTAMPTZ,
    call_id TEXT,
    event TEXT NOT NULL,
    outcome TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    record JSON NOT NULL,
    CONSTRAINT {base}_record_id_key UNIQUE (record_id)
);
CREATE INDEX IF NOT EXISTS {_index(t, "call")} ON {t} (call_id);
CREATE INDEX IF NOT EXISTS {_index(t, "ts")} ON {t} (ts);
CREATE INDEX IF NOT EXISTS {_index(t, "outcome")} ON {t} (outcome, ts);
CREATE TABLE IF NOT EXISTS {t}_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    entry JSON NOT NULL
);
CREATE OR REPLACE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS append_only ON {t};
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {trigger}();
DROP TRIGGER IF EXISTS append_only_truncate ON {t};
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {trigger}();
DROP TRIGGER IF EXISTS append_only ON {t}_checkpoints;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON {t}_checkpoints
    FOR EACH ROW EXECUTE FUNCTION {trigger}();
"""


def grant_sql(role: str, table: str = DEFAULT_TABLE) -> str:
    """SQL that lets `role` append to and read the trail, and nothing else.

    Run it as the table's owner after the table exists (`schema_sql`, or one run of the sink
    as the owner). The role cannot UPDATE, DELETE or TRUNCATE, and the table's trigger refuses
    those even to its owner.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise bad_parameter("role", f"must be a lowercase SQL identifier, got {role!r}")
    t = _check_table(table)
    schema = t.split(".")[0] if "." in t else "public"
    return (
        f"GRANT USAGE ON SCHEMA {schema} TO {role};\n"
        f"REVOKE ALL ON {t}, {t}_checkpoints FROM {role};\n"
        f"GRANT SELECT, INSERT ON {t}, {t}_checkpoints TO {role};\n"
    )


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
        raise bad_parameter(
            "table", f"must be a lowercase SQL name, optionally schema.name, got {table!r}"
        )
    return table


def _index(table: str, what: str) -> str:
    return f"{table.rsplit('.', 1)[-1]}_{what}_idx"


def _parse_url(url: str) -> tuple[str, dict[str, str], str]:
    """(libpq conninfo URL, our own options, display URL) of a sink URL."""
    parts, own, rest = split_url(url, _OWN_OPTIONS, "sink")
    if not any(name == "connect_timeout" for name, _ in rest):
        rest.append(("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    return conninfo, own, display_url(parts)


def _ts(text: object) -> str | None:
    """The record's `ts` if PostgreSQL can take it as a timestamptz as it is, else None."""
    if isinstance(text, str) and _RFC3339.fullmatch(text):
        return text
    return None


def _advisory_key(table: str) -> int:
    digest = hashlib.sha256(b"qwed-guard.audit.table/1\n" + table.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Duplicates(Exception):
    """An insert skipped records already stored: redo the transaction without them."""


class PostgresSink(ChainedSink):
    """Append-only audit table shared by many processes, with a local spool for outages."""

    kind = "postgresql"
    schemes = ("postgresql", "postgres")
    options = ChainedSink.options | {"table", "spool", "retry_interval"}

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        spool: str | os.PathLike[str] | None = None,
        retry_interval: float | None = None,
        **common: Any,
    ) -> None:
        """`common`: `ChainedSink`'s fsync, batch_size, batch_ms, key, checkpoint_every, anchor."""
        super().__init__(**common)
        if not isinstance(url, str) or urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise bad_parameter("sink", "expected a postgresql:// URL")
        self._conninfo, own, self.url = _parse_url(url)
        self.table = _check_table(table or own.get("table") or DEFAULT_TABLE)
        if retry_interval is None:
            try:
                retry_interval = float(own.get("retry_interval", DEFAULT_RETRY_INTERVAL))
            except ValueError:
                raise bad_parameter(
                    "retry_interval", f"must be a number, got {own['retry_interval']!r}"
                ) from None
        if (
            isinstance(retry_interval, bool)
            or not isinstance(retry_interval, (int, float))
            or not 0 <= retry_interval <= 86400
        ):
            raise bad_parameter(
                "retry_interval", f"must be between 0 and 86400 seconds, got {retry_interval!r}"
            )
        self.retry_interval = float(retry_interval)
        chosen = os.fspath(spool) if spool is not None else own.get("spool")
        if chosen in ("off", "none", ""):
            self.spool_path: str | None = None
        elif chosen:
            self.spool_path = expand_path(chosen)
        else:
            self.spool_path = self._default_spool()
        self._lock_key = _advisory_key(self.table)
        self._conn: _Connection | None = None
        self._down_until = 0.0
        self._degraded = False
        self._insert_sql = (
            f"INSERT INTO {self.table} "
            "(seq, record_id, ts, call_id, event, outcome, prev_hash, hash, record) "
            # Binary arrays: no per-element quoting on the client, one statement per batch.
            "SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[]::timestamptz[], "
            "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[]::json[]) "
            "ON CONFLICT (record_id) DO NOTHING"
        )

    def _default_spool(self) -> str:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
        digest = hashlib.sha256(f"{self.url}\n{self.table}".encode()).hexdigest()[:12]
        name = f"{self.table}-{digest}.jsonl"
        return expand_path(os.path.join(base, "qwed_guard", "audit-spool", name))

    def describe(self) -> str:
        return f"{self.url}?table={self.table}"

    @classmethod
    def reader(cls, url: str) -> PostgresTrail:
        return PostgresTrail(url)

    @property
    def degraded(self) -> bool:
        """True while PostgreSQL is unreachable and records go to the spool."""
        return self._degraded

    def _after_fork(self) -> None:
        if self._conn is not None:
            _inherited.append(self._conn)  # the parent's: never close it from here
        self._conn = None
        self._down_until = 0.0
        super()._after_fork()

    # --- connection -------------------------------------------------------------------------
    def _connect(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            if self.fsync == "none":
                conn.execute("SET synchronous_commit TO off")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _ensure_schema(self, conn: _Connection) -> None:
        t = self.table
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (t, t + "_checkpoints"),
        ).fetchone()
        if row is not None and row[0]:
            return  # a role that may only insert and select never runs DDL
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            conn.execute(schema_sql(t).encode())

    def create_schema(self) -> None:
        """Connect and create the table, its indexes and trigger if missing (run it as the
        owner before granting a writer role; the sink also does it on first use)."""
        with self._write_lock:
            try:
                self._connect()
            except psycopg.Error as exc:
                self._drop_connection()
                raise AuditError(f"{self.describe()}: {_text(exc)}") from exc

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                conn.close()

    # --- commit -----------------------------------------------------------------------------
    def _commit(
        self, records: list[dict[str, Any]], durable: bool, *, checkpoint: bool = False
    ) -> None:
        if self._down_until and clock.monotonic() < self._down_until:
            self._spool(records, durable)
            return
        try:
            if self._spool_waiting():
                self._replay()
            if records or checkpoint:
                self._store(records, checkpoint, dedupe=False)
        except _UNREACHABLE as exc:
            self._unreachable(exc)
            self._spool(records, durable)
            return
        except psycopg.Error as exc:
            self._drop_connection()
            raise AuditError(
                f"cannot write the audit trail {self.describe()}: {_text(exc)}"
            ) from exc
        self._recovered()

    def _store(self, records: list[dict[str, Any]], checkpoint: bool, *, dedupe: bool) -> None:
        conn = self._connect()
        try:
            self._unsigned = self._transaction(conn, records, checkpoint, dedupe)
        except _Duplicates:
            try:
                self._unsigned = self._transaction(conn, records, checkpoint, True)
            except _Duplicates:  # only a writer ignoring the advisory lock gets here
                raise AuditError(f"{self.describe()}: concurrent insert outside the lock") from None

    def _transaction(
        self,
        conn: _Connection,
        records: list[dict[str, Any]],
        checkpoint: bool,
        dedupe: bool,
    ) -> int:
        """One locked transaction; returns how many records this writer has not signed."""
        t = self.table
        with conn.transaction(), conn.cursor() as cur:
            # Its own statement: under READ COMMITTED the head read below then sees every
            # commit made before the lock was granted.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            cur.execute(f"SELECT seq, hash FROM {t} ORDER BY seq DESC LIMIT 1")
            head_row = cur.fetchone()
            if dedupe and records:
                ids = [_record_id(r) for r in records]
                cur.execute(f"SELECT record_id FROM {t} WHERE record_id = ANY(%s)", (ids,))
                stored = {row[0] for row in cur.fetchall()}
                if stored:
                    records = [r for r in records if _record_id(r) not in stored]
            start, head = (int(head_row[0]), str(head_row[1])) if head_row else (0, GENESIS)
            sealed = self._seal(records, start, head, checkpoint)
            rows = [_row(record, prev, line) for record, line, prev in sealed.rows]
            entry = None
            if sealed.signed is not None and self.key is not None:
                cur.execute(f"SELECT entry->>'mac' FROM {t}_checkpoints ORDER BY seq DESC LIMIT 1")
                last = cur.fetchone()
                entry = checkpoint_entry(self.key, *sealed.signed, (last and last[0]) or "")
            if rows:
                columns = list(zip(*rows, strict=True))
                cur.execute(self._insert_sql, [list(c) for c in columns])
                if cur.rowcount != len(rows):
                    raise _Duplicates
            if entry is not None:
                # In the same transaction as the trail: never a claim without its record.
                cur.execute(
                    f"INSERT INTO {t}_checkpoints (seq, hash, key_id, entry) "
                    "VALUES (%s, %s, %s, %s::json)",
                    (entry["seq"], entry["hash"], entry["key_id"], orjson.dumps(entry).decode()),
                )
                if self.anchor is not None:  # under the advisory lock: entries in trail order
                    append_entry(self.anchor, orjson.dumps(entry) + b"\n", self.fsync != "none")
        return sealed.unsigned

    def _unreachable(self, exc: BaseException) -> None:
        self._drop_connection()
        self._down_until = clock.monotonic() + self.retry_interval
        if self.spool_path is None:
            raise AuditError(
                f"cannot write the audit trail {self.describe()}: {_text(exc)} (no spool)"
            ) from exc
        if not self._degraded:
            self._degraded = True
            from loguru import logger

            logger.warning(
                "qwed_guard audit: PostgreSQL at {} unreachable ({}); spooling records to {} "
                "until it returns (retried every {:g} s)",
                self.url,
                _text(exc),
                self.spool_path,
                self.retry_interval,
            )

    def _recovered(self) -> None:
        self._down_until = 0.0
        if self._degraded:
            self._degraded = False
            from loguru import logger

            logger.info("qwed_guard audit: PostgreSQL at {} reachable again", self.url)

    # --- the spool --------------------------------------------------------------------------
    def _spool_waiting(self) -> bool:
        if self.spool_path is None:
            return False
        try:
            return os.stat(self.spool_path).st_size > 0
        except OSError:  # none yet (or unreachable, which writing it will report)
            return False

    def _open_spool(self) -> int:
        assert self.spool_path is not None
        make_private_dirs(os.path.dirname(self.spool_path))
        fd = os.open(self.spool_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _spool(self, records: list[dict[str, Any]], durable: bool) -> None:
        """Keep `records` in the spool file; raise AuditError if even that fails."""
        if not records:
            return
        if self.spool_path is None:
            raise AuditError(f"cannot write the audit trail {self.describe()}: unreachable")
        lines = []
        for record in records:
            body = {k: v for k, v in record.items() if k not in _SEALED_FIELDS}
            lines.append(canonical(body) + b"\n")
        data = b"".join(lines)
        try:
            fd = self._open_spool()
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A write torn by a crash: it was never acknowledged, so cut it off.
                    good = line_start(fd, size)
                    os.ftruncate(fd, good)
                view = memoryview(data)
                written = 0
                while written < len(data):
                    written += os.write(fd, view[written:])
                if durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit trail {self.describe()} (unreachable) nor its spool "
                f"{self.spool_path}: {exc}"
            ) from exc

    def _replay(self) -> int:
        """Store the spooled records, oldest first, skipping any already stored; empty it."""
        try:
            fd = self._open_spool()
        except OSError as exc:
            raise AuditError(f"cannot read the audit spool {self.spool_path}: {exc}") from exc
        replayed = 0
        try:
            size = os.fstat(fd).st_size
            if not size:
                return 0
            end = line_start(fd, size)
            pending: list[dict[str, Any]] = []
            for line in os.pread(fd, end, 0).splitlines():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # not written by this sink
                if isinstance(record, dict):
                    pending.append(record)
            for start in range(0, len(pending), _REPLAY_CHUNK):
                chunk = pending[start : start + _REPLAY_CHUNK]
                self._store(chunk, False, dedupe=True)
                replayed += len(chunk)
            # Stored: now the spool may go. A crash before this line replays the same ids
            # again, and the dedupe skips them.
            os.ftruncate(fd, 0)
            if self.fsync != "none":
                os.fsync(fd)
        finally:
            os.close(fd)
        if replayed:
            from loguru import logger

            logger.info(
                "qwed_guard audit: {} spooled record(s) replayed into {}",
                replayed,
                self.describe(),
            )
        return replayed

    def replay_spool(self) -> int:
        """Replay the spool now (raises AuditError if PostgreSQL is still unreachable)."""
        with self._write_lock:
            if not self._spool_waiting():
                return 0
            try:
                count = self._replay()
            except _UNREACHABLE as exc:
                self._drop_connection()
                raise AuditError(f"{self.describe()} unreachable: {_text(exc)}") from exc
            except psycopg.Error as exc:
                self._drop_connection()
                raise AuditError(f"{self.describe()}: {_text(exc)}") from exc
            self._recovered()
            return count

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Return once every record appended so far is stored, or durable in the spool; a
        waiting spool is replayed if PostgreSQL answers."""
        super().flush(timeout)
        if self._spool_waiting() and clock.monotonic() >= self._down_until:
            with contextlib.suppress(AuditError):  # still down: the records stay spooled
                self.replay_spool()

    def _finish(self) -> None:
        try:
            if self._spool_waiting():
                with contextlib.suppress(AuditError):
                    self._commit([], True)
                if self._spool_waiting():
                    from loguru import logger

                    logger.warning(
                        "qwed_guard audit: {} left records in the spool {}; the next writer "
                        "replays them",
                        self.describe(),
                        self.spool_path,
                    )
        finally:
            if self._degraded:
                self._unsigned = 0  # no closing checkpoint while PostgreSQL is away
            super()._finish()

    def _release(self) -> None:
        self._drop_connection()


def _record_id(record: dict[str, Any]) -> str:
    given = record.get("id")
    if isinstance(given, str) and given:
        return given
    # A record without an id (not one @audited writes) is identified by its content.
    body = {k: v for k, v in record.items() if k not in _SEALED_FIELDS}
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def _row(record: dict[str, Any], prev: str, line: bytes) -> tuple[Any, ...]:
    outcome = record.get("outcome")
    call_id = record.get("call_id")
    return (
        record["seq"],
        _record_id(record),
        _ts(record.get("ts")),
        call_id if isinstance(call_id, str) else None,
        str(record.get("event") or ""),
        outcome if isinstance(outcome, str) else None,
        prev,
        record["hash"],
        line[:-1].decode("utf-8"),
    )


def _text(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {str(exc).strip()}")


ROW_COLUMNS = ("record_id", "ts", "call_id", "event", "outcome", "prev_hash", "hash")


class PostgresTrail(Trail):
    """A PostgreSQL trail read back: its rows in seq order (streamed), each column checked
    against the record it repeats, and the entries of `<table>_checkpoints`."""

    checkpoints_name = "the checkpoints table"
    errors = (OSError, ValueError, psycopg.Error)

    def __init__(self, url: str) -> None:
        self.conninfo, own, shown = _parse_url(url)
        self.table = _check_table(own.get("table") or DEFAULT_TABLE)
        self.name = f"{shown}?table={self.table}"

    def rows(self) -> Iterator[Row]:
        with (
            psycopg.connect(self.conninfo) as conn,
            conn.cursor(name="qwed_guard_audit_read") as cur,
        ):
            cur.itersize = 2000
            cur.execute(
                f"SELECT seq, {', '.join(ROW_COLUMNS)}, record::text FROM {self.table} ORDER BY seq"
            )
            for row in cur:
                columns = dict(zip(ROW_COLUMNS, row[1:-1], strict=True))
                yield f"row seq={row[0]}", row[-1].encode("utf-8") + b"\n", True, columns

    def checkpoints(self) -> Iterator[bytes]:
        with psycopg.connect(self.conninfo) as conn:
            side = self.table + "_checkpoints"
            if conn.execute("SELECT to_regclass(%s)", (side,)).fetchone() == (None,):
                return
            for (text,) in conn.execute(f"SELECT entry::text FROM {side} ORDER BY seq"):
                yield text.encode("utf-8") + b"\n"

    def mismatch(self, record: dict[str, Any], columns: dict[str, Any]) -> str | None:
        outcome, call_id = record.get("outcome"), record.get("call_id")
        expected: dict[str, Any] = {
            "record_id": _record_id(record),
            "call_id": call_id if isinstance(call_id, str) else None,
            "event": str(record.get("event") or ""),
            "outcome": outcome if isinstance(outcome, str) else None,
            "prev_hash": record.get("prev_hash"),
            "hash": record.get("hash"),
        }
        for name, value in expected.items():
            if columns.get(name) != value:
                return name
        stored, text = columns.get("ts"), _ts(record.get("ts"))
        if (stored is None) != (text is None):
            return "ts"
        if stored is not None and text is not None:
            when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if abs((stored - when).total_seconds()) > 1e-6:
                return "ts"
        return None
