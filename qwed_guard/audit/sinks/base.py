"""The Sink protocol, and the base every chained sink shares: fsync modes and group commit."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from qwed_guard import hooks as _hooks
from qwed_guard.audit.chain import Key
from qwed_guard.errors import AuditError, bad_parameter

__all__ = ["FLUSH_TIMEOUT", "FSYNC_MODES", "ChainedSink", "FsyncMode", "Sink", "check_options"]

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


_LIMITS: dict[str, tuple[type, float, float, bool]] = {
    # name: (type, least, most, whether the least itself is allowed)
    "batch_size": (int, 1, MAX_BATCH_SIZE, True),
    "batch_ms": (float, 0, MAX_BATCH_MS, False),
    "checkpoint_every": (int, 1, MAX_CHECKPOINT_EVERY, True),
    "rotate_bytes": (int, 1, 2**50, True),
    "rotate_seconds": (float, 0, 10 * 366 * 86400.0, False),
    "keep_files": (int, 1, 1_000_000, True),
    "keep_days": (float, 0, 100 * 366.0, False),
}


def check_options(**options: Any) -> None:
    """Refuse a numeric audit option outside its bounds, naming it (None means unset)."""
    for name, value in options.items():
        if value is None and name.startswith(("rotate", "keep")):
            continue
        kind, least, most, inclusive = _LIMITS[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            wanted = "an int" if kind is int else "a number"
            raise bad_parameter(name, f"must be {wanted}, got {value!r}", wrong_type=True)
        low_ok = value >= least if inclusive else value > least
        if not math.isfinite(value) or not low_ok or value > most:
            low = f">= {least:g}" if inclusive else f"> {least:g}"
            raise bad_parameter(name, f"must be {low} and <= {most:g}, got {value!r}")


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


class ChainedSink:
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

    def __init__(
        self,
        *,
        fsync: FsyncMode = "always",
        batch_size: int = 256,
        batch_ms: float = 50.0,
        key: Key | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise bad_parameter("fsync", f"must be one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        check_options(batch_size=batch_size, batch_ms=batch_ms, checkpoint_every=checkpoint_every)
        self.fsync: FsyncMode = fsync
        self.batch_size = batch_size
        self.batch_ms = float(batch_ms)
        self.key = key
        self.checkpoint_every = checkpoint_every
        self._write_lock = threading.Lock()
        self._init_batch_state()
        _live.add(self)

    def _init_batch_state(self) -> None:
        # `append` takes the bare lock (C-level) and only notifies through the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: list[dict[str, Any]] = []
        self._inflight = 0
        self._flushes = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    # --- what subclasses provide -------------------------------------------------------
    def _commit(self, records: list[dict[str, Any]], durable: bool) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Write the closing checkpoint and release storage (called once, by close)."""

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's writer thread, queue and open handles."""
        self._write_lock = threading.Lock()
        self._init_batch_state()

    # --- the Sink protocol ----------------------------------------------------------------
    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if self.fsync != "batch":
            with self._write_lock:
                if self._closed:
                    raise AuditError(f"{self.describe()}: the sink is closed")
                started = time.perf_counter()
                self._commit(list(records), self.fsync == "always")
            if _hooks.listeners:
                _committed(self, records, started)
            return
        with self._lock:
            if self._error is not None:
                raise AuditError(f"{self.describe()}: {self._error}") from self._error
            if self._closing:
                raise AuditError(f"{self.describe()}: the sink is closed")
            if self._thread is None:
                self._start_writer()
            pending = self._pending
            before = len(pending)
            pending.extend(records)
            # Wake the writer when the queue starts, and once when it makes a full batch: not
            # on every append past that (the writer may not have run yet to take it).
            if not before or before < self.batch_size <= len(pending):
                self._cond.notify_all()

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
        # Group commit waits in real time: under a test's fake clock it must still flush.
        while True:
            with cond:
                while not self._pending and not self._closing:
                    cond.wait()
                if not self._pending:
                    return
                deadline = time.monotonic() + self.batch_ms / 1000.0
                flushes = self._flushes
                while (
                    len(self._pending) < self.batch_size
                    and not self._closing
                    and self._flushes == flushes
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
                batch, self._pending = self._pending, []
                self._inflight = len(batch)
            try:
                with self._write_lock:
                    started, appended = time.perf_counter(), len(batch)
                    self._commit(batch, True)
            except BaseException as exc:  # kept, and raised to the next caller: fail closed
                with cond:
                    self._fail_pending(exc)
                return
            if _hooks.listeners:  # the sink may have put a genesis or repair record first
                _committed(self, batch[len(batch) - appended :], started)
            with cond:
                self._inflight = 0
                cond.notify_all()

    def __enter__(self) -> ChainedSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
