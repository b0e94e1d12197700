"""Mirrors: copies of audit records for people and dashboards, not part of any chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from qwed_guard.errors import AuditError

__all__ = ["FanOut", "LoguruMirror"]


class LoguruMirror:
    """Logs a one-line summary of every audit record through loguru (`bind(audit=record)`).

    Operational visibility only: loguru does no fsync and may drop records, so it is never the
    trail itself. Use it next to a chained sink: `sink=["jsonl:audit.jsonl", "loguru:INFO"]`.
    """

    kind = "loguru"
    schemes = ("loguru",)
    options: ClassVar[None] = None
    """It takes no options: a mirror keeps no chain."""

    @classmethod
    def from_url(cls, url: str) -> LoguruMirror:
        return cls(url.partition(":")[2] or "INFO")

    def __init__(self, level: str = "INFO") -> None:
        self.level = level or "INFO"

    def describe(self) -> str:
        return f"loguru:{self.level}"

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        from loguru import logger

        log = logger.opt(depth=0)
        for record in records:
            log.bind(audit=dict(record)).log(
                self.level,
                "audit {} {} {} attempt={} outcome={}",
                record.get("event"),
                record.get("call_id"),
                record.get("function"),
                record.get("attempt"),
                record.get("outcome"),
            )

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class FanOut:
    """Several sinks as one: each gets its own copy of every record (and keeps its own chain)."""

    kind = "fanout"

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = list(sinks)

    def describe(self) -> str:
        names = []
        for sink in self.sinks:
            describe = getattr(sink, "describe", None)
            names.append(describe() if callable(describe) else type(sink).__name__)
        return " + ".join(names)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        failure: Exception | None = None
        last = len(self.sinks) - 1
        for index, sink in enumerate(self.sinks):
            batch = records if index == last else [dict(r) for r in records]
            try:
                sink.append(batch)
            except Exception as exc:  # still feed the others, then fail closed
                failure = failure or exc
        if failure is not None:
            if isinstance(failure, AuditError):
                raise failure
            raise AuditError(str(failure)) from failure

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
