"""The in-memory sink: the same records and chain, kept in a list (tests, benchmarks)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from qwed_guard.audit.record import GENESIS, seal
from qwed_guard.audit.sinks.base import RecordBuilder, built

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps records in memory. Sealing (seq, hashes) is deferred until they are read, so
    appending costs a list extend; the chain is the same as a file sink would write."""

    kind = "memory"
    builds_records = True
    schemes = ("memory",)
    options: ClassVar[None] = None
    """It takes no options: nothing to batch, fsync or rotate."""

    @classmethod
    def from_url(cls, url: str) -> MemorySink:
        return cls()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any] | RecordBuilder] = []
        self._sealed: list[dict[str, Any]] = []
        self._lines: list[bytes] = []
        self._head = GENESIS

    def append(self, records: Sequence[dict[str, Any] | RecordBuilder]) -> None:
        with self._lock:
            self._pending.extend(records)

    def flush(self) -> None:
        with self._lock:
            self._seal()

    def close(self) -> None:
        self.flush()

    def describe(self) -> str:
        return "memory:"

    def _seal(self) -> None:
        seq = len(self._sealed)
        head = self._head
        for record in built(self._pending):
            seq += 1
            line, head = seal(record, seq, head)
            self._sealed.append(record)
            self._lines.append(line)
        self._pending.clear()
        self._head = head

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record so far, sealed, oldest first."""
        with self._lock:
            self._seal()
            return list(self._sealed)

    def lines(self) -> list[bytes]:
        """Every record as the JSONL line a file sink would have written."""
        with self._lock:
            self._seal()
            return list(self._lines)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._sealed.clear()
            self._lines.clear()
            self._head = GENESIS

    def __len__(self) -> int:
        with self._lock:
            return len(self._sealed) + len(self._pending)
