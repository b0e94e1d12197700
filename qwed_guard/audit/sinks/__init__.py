"""Audit sinks, chosen by URL: `"jsonl:PATH"`, `"sqlite:PATH"`, `"postgresql://..."`,
`"memory:"`, `"loguru:LEVEL"`, a `Sink` object, or a list of those (each keeps its own copy)."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from typing import Any

from qwed_guard.audit.chain import Key
from qwed_guard.audit.sinks.base import FSYNC_MODES, ChainedSink, FsyncMode, Sink
from qwed_guard.audit.sinks.jsonl import JsonlSink
from qwed_guard.audit.sinks.memory import MemorySink
from qwed_guard.audit.sinks.mirror import FanOut, LoguruMirror
from qwed_guard.errors import bad_parameter

__all__ = [
    "FSYNC_MODES",
    "ChainedSink",
    "FanOut",
    "FsyncMode",
    "JsonlSink",
    "LoguruMirror",
    "MemorySink",
    "PostgresSink",
    "Sink",
    "SqliteSink",
    "close_all",
    "is_postgres_url",
    "sink_from_url",
]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_registry: dict[tuple[Any, ...], ChainedSink] = {}
_registry_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name == "SqliteSink":  # imported on use: sqlite3 is not free to import
        from qwed_guard.audit.sinks.sqlite import SqliteSink

        return SqliteSink
    if name == "PostgresSink":  # imported on use: psycopg is an optional dependency
        from qwed_guard.audit.sinks.postgres import PostgresSink

        return PostgresSink
    raise AttributeError(name)


def is_postgres_url(spec: object) -> bool:
    """True for a `postgresql://` or `postgres://` URL."""
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def close_all() -> None:
    """Flush and close every file sink opened from a URL (runs at interpreter exit)."""
    with _registry_lock:
        sinks = list(_registry.values())
        _registry.clear()
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:  # at exit there is no caller left to fail closed to
            from loguru import logger

            from qwed_guard.redact import scrub

            logger.error(
                "qwed_guard audit: closing {} failed: {}", sink.describe(), scrub(str(exc))
            )


atexit.register(close_all)


def sink_from_url(
    spec: str | Sink | Sequence[str | Sink] | None,
    *,
    fsync: FsyncMode = "always",
    key: Key | None = None,
    **options: Any,
) -> Sink:
    """A sink from plain data. File sinks opened from the same URL with the same options are
    shared within the process (one writer, one queue); across processes the file lock keeps
    one chain. `options` are the file sinks' keyword arguments (batch_size, rotate_bytes, ...)."""
    if spec is None:
        spec = "jsonl:audit.jsonl"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise bad_parameter("sink", "an empty list of sinks records nothing")
        return FanOut([sink_from_url(s, fsync=fsync, key=key, **options) for s in spec])
    if not isinstance(spec, str):
        if all(callable(getattr(spec, name, None)) for name in ("append", "flush", "close")):
            return spec  # type: ignore[return-value]
        raise bad_parameter(
            "sink", f"expected a URL or a Sink, got {type(spec).__name__}", wrong_type=True
        )
    if is_postgres_url(spec):
        return _postgres_sink(spec, fsync=fsync, key=key, **options)
    scheme, sep, rest = spec.partition(":")
    if not sep or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        scheme, rest = ("sqlite" if spec.endswith(_SQLITE_SUFFIXES) else "jsonl"), spec
    if options.get("anchor") is None:
        options.pop("anchor", None)
    if scheme == "memory":
        return MemorySink()
    if scheme == "loguru":
        return LoguruMirror(rest or "INFO")
    if scheme not in ("jsonl", "sqlite"):
        raise bad_parameter(
            "sink",
            f"unsupported sink URL {spec!r} (supported: 'jsonl:PATH', 'sqlite:PATH', "
            "'postgresql://...', 'memory:', 'loguru:LEVEL')",
        )
    if not rest:
        raise bad_parameter("sink", f"{spec!r} names no file")
    if scheme == "sqlite":
        bad = sorted(
            k for k, v in options.items() if v is not None and k.startswith(("rot", "kee"))
        )
        if bad:
            raise bad_parameter(bad[0], "rotation and retention apply to JSONL trails only")
        options = {k: v for k, v in options.items() if not k.startswith(("rot", "kee"))}
    path = os.path.abspath(os.path.expanduser(rest))
    ident = (scheme, path, fsync, key.id if key else None, tuple(sorted(options.items())))
    with _registry_lock:
        sink = _registry.get(ident)
        if sink is None or sink._closed:
            if scheme == "jsonl":
                sink = JsonlSink(path, fsync=fsync, key=key, **options)
            else:
                from qwed_guard.audit.sinks.sqlite import SqliteSink

                sink = SqliteSink(path, fsync=fsync, key=key, **options)
            _registry[ident] = sink
    return sink


def _postgres_sink(url: str, *, fsync: FsyncMode, key: Key | None, **options: Any) -> Sink:
    if options.get("anchor") is None:
        options.pop("anchor", None)
    bad = sorted(k for k, v in options.items() if v is not None and k.startswith(("rot", "kee")))
    if bad:
        raise bad_parameter(bad[0], "rotation and retention apply to JSONL trails only")
    options = {k: v for k, v in options.items() if not k.startswith(("rot", "kee"))}
    ident = ("postgresql", url, fsync, key.id if key else None, tuple(sorted(options.items())))
    with _registry_lock:
        sink = _registry.get(ident)
        if sink is None or sink._closed:
            try:
                from qwed_guard.audit.sinks.postgres import PostgresSink
            except ImportError as exc:
                raise bad_parameter(
                    "sink",
                    f"a postgresql:// sink needs psycopg ({exc}): pip install 'qwed-guard[fleet]'",
                ) from None
            sink = PostgresSink(url, fsync=fsync, key=key, **options)
            _registry[ident] = sink
    return sink
