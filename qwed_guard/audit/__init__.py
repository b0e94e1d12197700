"""The audit trail: `@audited`, its sinks, and verification.

    from qwed_guard import audited, fallback, retry

    @audited(sink="jsonl:audit.jsonl", key_env="QWED_GUARD_AUDIT_KEY")
    @fallback(value=None)
    @retry(max_tries=3)
    def check(query: str): ...

Then `qwed-guard audit verify audit.jsonl --key-env QWED_GUARD_AUDIT_KEY`.
"""

from __future__ import annotations

from qwed_guard.audit.chain import Key
from qwed_guard.audit.layer import AuditLayer, audited
from qwed_guard.audit.record import FIELDS, SCHEMA, canonical
from qwed_guard.audit.sinks import (
    ChainedSink,
    JsonlSink,
    LoguruMirror,
    MemorySink,
    Sink,
    sink_from_url,
)
from qwed_guard.audit.verify import Problem, VerifyReport, read_records, verify_trail

__all__ = [
    "FIELDS",
    "SCHEMA",
    "AuditLayer",
    "ChainedSink",
    "JsonlSink",
    "Key",
    "LoguruMirror",
    "MemorySink",
    "Problem",
    "Sink",
    "VerifyReport",
    "audited",
    "canonical",
    "read_records",
    "sink_from_url",
    "verify_trail",
]
