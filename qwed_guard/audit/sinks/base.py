"""The Sink protocol, and the base every chained sink shares: fsync modes, group commit, and the
one routine that seals records into a chain and signs checkpoints (`ChainedSink._seal`)."""

from __future__ import annotations

import abc
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from qwed_guard import clock
from qwed_guard import hooks as _hooks
from qwed_guard.audit.chain import Key, checkpoint_record, genesis_record
from qwed_guard.audit.record import seal
from qwed_guard.errors import AuditError, bad_parameter
from qwed_guard.urls import real_path

__all__ = [
    "FLUSH_TIMEOUT",
    "FSYNC_MODES",
    "BuildingSink",
    "ChainedSink",
    "FsyncMode",
    "RecordBuilder",
    "Row",
    "Sealed",
    "Sink",
    "Trail",
    "built",
    "check_options",
]

FsyncMode = Literal["always", "batch", "none"]
MAX_BATCH_SIZE = 1_000_000
MAX_BATCH_MS = 60_000.0
"""A group commit waits at most a minute: beyond that a crash loses too much to call it durable."""
MAX_CHECKPOINT_EVERY = 10**9
FLUSH_TIMEOUT = 60.0
"""Seconds `flush()` waits for the writer thread before it fails closed."""
FSYNC_MODES: tuple[FsyncMode, ...] = ("always", "batch", "none")


@runtime_checkable
class Sink(Protocol):
    """Where audit records go.

    `append` receives records as plain dicts of JSON data (no `seq`, `prev_hash` or `hash` yet):
    a chained sink gives them their place in its chain (`qwed_guard.audit.record.seal`) and
    stores them, and raises on failure, so the guarded call can fail closed. `flush` returns once
    every appended record is durable (as durable as the sink's mode makes it).
    """

    def append(self, records: Sequence[dict[str, Any]]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


RecordBuilder = Callable[[], dict[str, Any]]
"""A record not built yet: what a call captured, and the function that makes the record."""


@runtime_checkable
class BuildingSink(Protocol):
    """A sink that also takes record builders (`builds_records = True`) and calls them where it
    seals the records (its writer thread, in batch mode), off the caller's path."""

    builds_records: bool

    def append(self, records: Sequence[dict[str, Any] | RecordBuilder]) -> None: ...


def built(records: Sequence[dict[str, Any] | RecordBuilder]) -> list[dict[str, Any]]:
    """The records, with every builder called."""
    return [record if isinstance(record, dict) else record() for record in records]


Row = tuple[str, bytes, bool, dict[str, Any] | None]
"""(where, line, complete, the stored columns beside the record or None), as a trail reads."""


class Trail(abc.ABC):
    """A stored trail read back by `audit verify`, `show` and `stats`: what a sink class's
    `reader(url)` returns."""

    name = ""
    """How reports name the trail: its path, or a URL without credentials."""
    checkpoints_name = "the checkpoint file"
    errors: tuple[type[Exception], ...] = (OSError, ValueError)
    """What reading it may raise that deserves a message, not a traceback."""

    @abc.abstractmethod
    def rows(self) -> Iterator[Row]:
        """Every stored record line, oldest first; `complete` is False only for a final line
        without its newline (a torn write)."""

    def checkpoints(self) -> Iterable[bytes]:
        """The checkpoint entries kept outside the trail, as JSON lines."""
        return ()

    def mismatch(self, record: dict[str, Any], columns: dict[str, Any]) -> str | None:
        """The first stored column that disagrees with the hashed record, if any."""
        return None

    def unreadable(self, missing_ok: bool = False) -> str | None:
        """Why the trail cannot be read (checked before reading), or None."""
        return None


@dataclass
class Sealed:
    """Records sealed after a chain's head, ready for one commit."""

    rows: list[tuple[dict[str, Any], bytes, str]]
    """(record, its JSON line, the hash before it), in chain order."""
    seq: int
    head: str
    signed: tuple[int, str, float] | None
    """(seq, hash, time) of the checkpoint to attest outside the trail, if one was added."""
    unsigned: int
    """Records this writer has appended since its last checkpoint, once these are stored."""


def check_options(**options: Any) -> None:
    """Refuse audit options `@audited` would refuse, naming each (None means unset)."""
    from qwed_guard.audit.layer import AuditOptions
    from qwed_guard.options import check

    check(AuditOptions, options)


def _committed(sink: ChainedSink, records: Sequence[dict[str, Any]], started: float) -> None:
    """Tell the process listeners (metrics) that `records` were committed."""
    events = tuple(str(record.get("event")) for record in records)
    duration = time.perf_counter() - started
    _hooks.emit(_hooks.AuditCommitted(sink.kind, sink.fsync, events, duration))


_live: weakref.WeakSet[ChainedSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(_live):
        sink._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ChainedSink(abc.ABC):
    """A sink that seals records into one hash chain under a storage-level lock.

    Subclasses implement `_commit(records, durable)`: lock the storage, read its head, seal and
    store the records (plus a checkpoint when due), make them durable if asked, unlock.

    - `fsync="always"`: `append` commits and fsyncs before it returns.
    - `fsync="batch"`: `append` queues; a writer thread commits and fsyncs a group every
      `batch_size` records or `batch_ms` milliseconds, whichever comes first. A crash loses at most
      the records appended in the last `batch_ms` ms (or the last `batch_size`). A failed commit
      is raised by the next `append` or `flush`.
    - `fsync="none"`: `append` writes before it returns; the OS decides when it reaches the disk
      (a process crash loses nothing, a power cut may).
    """

    kind = "chained"
    builds_records = True
    schemes: ClassVar[tuple[str, ...]] = ()
    """The URL schemes a registry row opens this class for (`register_sink`)."""
    options: ClassVar[frozenset[str]] = frozenset(
        ("fsync", "key", "batch_size", "batch_ms", "checkpoint_every", "anchor")
    )
    """The options `sink_from_url` may pass to `from_url`."""

    def __init__(
        self,
        *,
        fsync: FsyncMode = "always",
        batch_size: int = 256,
        batch_ms: float = 50.0,
        key: Key | None = None,
        checkpoint_every: int = 1000,
        anchor: str | os.PathLike[str] | None = None,
    ) -> None:
        check_options(
            fsync=fsync, batch_size=batch_size, batch_ms=batch_ms, checkpoint_every=checkpoint_every
        )
        if anchor is not None and not isinstance(anchor, (str, os.PathLike)):
            raise bad_parameter("anchor", "must be a file path", wrong_type=True)
        self.fsync: FsyncMode = fsync
        self.batch_size = batch_size
        self.batch_ms = float(batch_ms)
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.anchor = real_path(anchor) if anchor is not None else None
        self._unsigned = 0  # records this writer appended since its last checkpoint
        self._write_lock = threading.Lock()
        self._init_batch_state()
        _live.add(self)

    # --- what a registry asks of a sink class ---------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> ChainedSink:
        """The sink for `url` (`scheme:rest`) with the options it takes."""
        return cls(url, **options)  # type: ignore[call-arg, arg-type]

    @classmethod
    def location(cls, url: str) -> str:
        """What names the trail at `url`: sinks opened for one location share one writer."""
        return url

    @classmethod
    def reader(cls, url: str) -> Trail:
        """The trail at `url`, to read back (`audit verify`)."""
        raise bad_parameter("sink", f"{url!r}: a {cls.kind} trail cannot be read back")

    # --- the one seal-and-checkpoint routine ----------------------------------------------
    def _seal(
        self, records: list[dict[str, Any]], seq: int, head: str, checkpoint: bool = False
    ) -> Sealed:
        """Seal `records` after the chain's head (`seq`, `head`): a keyed trail starts with a
        genesis, and a checkpoint follows every `checkpoint_every` records (or at once when
        `checkpoint` asks and some records are unsigned)."""
        key, start = self.key, seq
        if key is not None and seq == 0 and records:
            records = [genesis_record(key, clock.wall()), *records]
        rows: list[tuple[dict[str, Any], bytes, str]] = []
        for record in records:
            seq += 1
            prev = head
            line, head = seal(record, seq, head, key)
            rows.append((record, line, prev))
        every = self.checkpoint_every
        unsigned = self._unsigned + len(records)
        signed = None
        if key is not None and (
            (checkpoint and unsigned) or (records and seq // every > start // every)
        ):
            wall = clock.wall()
            cp = checkpoint_record(key, seq, head, wall)
            prev = head
            line, head = seal(cp, seq + 1, head, key)
            seq += 1
            rows.append((cp, line, prev))
            signed, unsigned = (seq, head, wall), 0
        return Sealed(rows, seq, head, signed, unsigned)

    def _init_batch_state(self) -> None:
        # `append` takes the bare lock (C-level) and only notifies through the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: list[dict[str, Any] | RecordBuilder] = []
        self._high_water = max(4 * self.batch_size, 1024)
        """Records queued at most: beyond it `append` waits for the writer."""
        self._inflight = 0
        self._flushes = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    # --- what subclasses provide -------------------------------------------------------
    @abc.abstractmethod
    def _commit(
        self, records: list[dict[str, Any]], durable: bool, *, checkpoint: bool = False
    ) -> None:
        """Lock the storage, read its head, store `self._seal(...)`'s rows, unlock."""

    def _release(self) -> None:  # noqa: B027 - optional: a sink holding no handles has none
        """Close the storage's handles (called once, by close)."""

    def _finish(self) -> None:
        """Write the closing checkpoint and release storage (called once, by close)."""
        try:
            if self.key is not None and self._unsigned:
                self._commit([], self.fsync != "none", checkpoint=True)
        finally:
            self._release()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's writer thread, queue and open handles."""
        self._unsigned = 0
        self._write_lock = threading.Lock()
        self._init_batch_state()

    # --- the Sink protocol ----------------------------------------------------------------
    def append(self, records: Sequence[dict[str, Any] | RecordBuilder]) -> None:
        if self.fsync != "batch":
            with self._write_lock:
                if self._closed:
                    raise AuditError(f"{self.describe()}: the sink is closed")
                started = time.perf_counter()
                ready = built(records)
                appended = len(ready)
                self._commit(ready, self.fsync == "always")
            if _hooks.listeners:  # the sink may have put a genesis or repair record first
                _committed(self, ready[len(ready) - appended :], started)
            return
        with self._lock:
            if self._error is not None:
                raise AuditError(f"{self.describe()}: {self._error}") from self._error
            if self._closing:
                raise AuditError(f"{self.describe()}: the sink is closed")
            if self._thread is None:
                self._start_writer()
            if len(self._pending) >= self._high_water:
                self._wait_for_room()
            pending = self._pending
            before = len(pending)
            pending.extend(records)
            # Wake the writer when the queue starts, and once when it makes a full batch: not
            # on every append past that (the writer may not have run yet to take it).
            if not before or before < self.batch_size <= len(pending):
                self._cond.notify_all()

    def _wait_for_room(self) -> None:
        """Back-pressure, with the condition held: a writer that cannot keep up slows the
        callers down rather than letting its queue (and the process's memory) grow."""
        cond = self._cond
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while len(self._pending) >= self._high_water:
            if self._error is not None:
                raise AuditError(f"{self.describe()}: {self._error}") from self._error
            if self._closing:
                raise AuditError(f"{self.describe()}: the sink is closed")
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._fail_pending(AuditError("the writer thread ended unexpectedly"))
                raise AuditError(f"{self.describe()}: the writer thread ended unexpectedly")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AuditError(
                    f"{self.describe()}: the writer fell {len(self._pending)} records behind "
                    f"for {FLUSH_TIMEOUT:g} s"
                )
            cond.notify_all()  # a full queue is a batch: the writer need not wait its window
            cond.wait(min(remaining, 0.5))

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Return once every queued record is committed; raise `AuditError` if the writer
        failed, died, or did not finish within `timeout` seconds."""
        if self.fsync != "batch":
            return
        deadline = time.monotonic() + max(0.0, min(float(timeout), 86400.0))
        cond = self._cond
        with cond:
            self._flushes += 1
            cond.notify_all()
            while (self._pending or self._inflight) and self._error is None:
                thread = self._thread
                if thread is None:
                    self._start_writer()
                elif not thread.is_alive():
                    self._fail_pending(AuditError("the writer thread ended unexpectedly"))
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waiting = len(self._pending) + self._inflight
                    raise AuditError(
                        f"{self.describe()}: flush timed out after {timeout:g} s with "
                        f"{waiting} record(s) not yet written"
                    )
                cond.wait(min(remaining, 0.5))
            if self._error is not None:
                raise AuditError(f"{self.describe()}: {self._error}") from self._error

    def _fail_pending(self, exc: BaseException) -> None:
        """Fail closed: keep `exc` for every caller and drop what can no longer be written.
        Called with the condition held."""
        self._error = exc
        self._inflight = 0
        self._pending.clear()
        self._cond.notify_all()

    def close(self) -> None:
        if self._closed:
            return
        error: BaseException | None = None
        try:
            self.flush()
        except AuditError as exc:
            error = exc
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._write_lock:
            if not self._closed:
                self._closed = True
                self._finish()
        if error is not None:
            raise error

    def describe(self) -> str:
        return self.kind

    # --- group commit ---------------------------------------------------------------------
    def _start_writer(self) -> None:
        self._thread = threading.Thread(
            target=self._writer, name=f"qwed-guard-audit-{self.kind}", daemon=True
        )
        self._thread.start()

    def _writer(self) -> None:
        try:
            self._write_batches()
        except BaseException as exc:  # whatever failed, the callers must hear of it
            with self._cond:
                self._fail_pending(exc)

    def _write_batches(self) -> None:
        cond = self._cond
        # The flush requests a commit has served: one asked for while a commit runs is served
        # by the next commit at once, not after another batch window (nor one made before
        # this thread ran: the first batch does not wait).
        served = -1
        # Group commit waits in real time: under a test's fake clock it must still flush.
        while True:
            with cond:
                while not self._pending and not self._closing:
                    cond.wait()
                if not self._pending:
                    return
                deadline = time.monotonic() + self.batch_ms / 1000.0
                while (
                    len(self._pending) < self.batch_size
                    and not self._closing
                    and self._flushes == served
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
                served = self._flushes
                batch, self._pending = self._pending, []
                self._inflight = len(batch)
                cond.notify_all()  # callers waiting for room in the queue
            try:
                with self._write_lock:
                    started, appended = time.perf_counter(), len(batch)
                    records = built(batch)
                    self._commit(records, True)
            except BaseException as exc:  # kept, and raised to the next caller: fail closed
                with cond:
                    self._fail_pending(exc)
                return
            if _hooks.listeners:  # the sink may have put a genesis or repair record first
                _committed(self, records[len(records) - appended :], started)
            with cond:
                self._inflight = 0
                cond.notify_all()

    def __enter__(self) -> ChainedSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
