"""Audit sinks, chosen by URL: `"jsonl:PATH"`, `"sqlite:PATH"`, `"postgresql://..."`,
`"memory:"`, `"loguru:LEVEL"`, a `Sink` object, or a list of those (each keeps its own copy).

A URL's scheme picks a row of the sink registry, `scheme -> "package.module:Class"`, imported
only when a URL of that scheme is opened; `register_sink` adds a row. A bare path is a JSONL
trail (an SQLite one if it ends in .db, .sqlite or .sqlite3; when read back, if it holds an
SQLite database).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from typing import Any

from qwed_guard.audit.chain import Key
from qwed_guard.audit.sinks.base import FSYNC_MODES, ChainedSink, FsyncMode, Sink, Trail
from qwed_guard.audit.sinks.jsonl import JsonlSink
from qwed_guard.audit.sinks.memory import MemorySink
from qwed_guard.audit.sinks.mirror import FanOut, LoguruMirror
from qwed_guard.errors import bad_parameter
from qwed_guard.registry import Registry, import_object
from qwed_guard.urls import split_scheme

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
    "Trail",
    "close_all",
    "is_postgres_url",
    "open_trail",
    "register_sink",
    "sink_from_url",
]

SINKS = Registry(
    "sink",
    "sink scheme",
    {
        "jsonl": "qwed_guard.audit.sinks.jsonl:JsonlSink",
        "sqlite": "qwed_guard.audit.sinks.sqlite:SqliteSink",
        "postgresql": "qwed_guard.audit.sinks.postgres:PostgresSink",
        "postgres": "qwed_guard.audit.sinks.postgres:PostgresSink",
        "memory": "qwed_guard.audit.sinks.memory:MemorySink",
        "loguru": "qwed_guard.audit.sinks.mirror:LoguruMirror",
    },
)
_TUNING = ("fsync", "batch_size", "batch_ms", "checkpoint_every")
"""Options a sink that does not take them ignores: they say how to write, not what to keep."""
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_open: dict[tuple[Any, ...], ChainedSink] = {}
_open_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name in ("SqliteSink", "PostgresSink"):  # imported on use: sqlite3 and psycopg cost
        module = "sqlite" if name == "SqliteSink" else "postgres"
        return import_object(f"qwed_guard.audit.sinks.{module}:{name}", "sink")
    raise AttributeError(name)


def is_postgres_url(spec: object) -> bool:
    """True for a `postgresql://` or `postgres://` URL."""
    return isinstance(spec, str) and split_scheme(spec)[0] in ("postgresql", "postgres")


def register_sink(scheme: str, target: str | type) -> None:
    """Open `scheme:...` URLs with `target`: `"package.module:Class"` (imported when a URL of
    that scheme is first opened) or the class. See "Adding a sink" in the audit guide."""
    SINKS.register(scheme, target)


def _resolve(spec: str, reading: bool) -> tuple[Any, str]:
    """The sink class for `spec` and `spec` as `scheme:rest`."""
    scheme, rest = split_scheme(spec)
    if not scheme:
        if reading:
            from qwed_guard.audit.sinks.files import check_readable
            from qwed_guard.audit.sinks.sqlite import MAGIC

            check_readable(spec)  # before sniffing: a FIFO would block the read
            try:
                with open(spec, "rb") as handle:
                    sqlite = handle.read(16) == MAGIC
            except OSError:
                sqlite = False
        else:
            sqlite = spec.endswith(_SQLITE_SUFFIXES)
        scheme = "sqlite" if sqlite else "jsonl"
    elif scheme not in SINKS and not (reading and os.path.lexists(spec)):
        raise bad_parameter(
            "sink",
            f"unsupported sink URL {spec!r} (supported schemes: {', '.join(SINKS.names())})",
        )
    elif scheme not in SINKS:
        scheme, rest = "jsonl", spec  # a file whose name has a colon
    return SINKS.load(scheme), f"{scheme}:{rest}"


def open_trail(spec: str | os.PathLike[str]) -> Trail:
    """The stored trail at `spec` (a URL, or a path), to read back: `audit verify`, `show`."""
    spec = os.fspath(spec)
    cls, url = _resolve(spec, reading=True)
    reader = getattr(cls, "reader", None)
    if reader is None:
        raise bad_parameter("sink", f"{spec!r}: this sink keeps nothing to read back")
    trail: Trail = reader(url)
    return trail


def close_all() -> None:
    """Flush and close every file sink opened from a URL (runs at interpreter exit)."""
    with _open_lock:
        sinks = list(_open.values())
        _open.clear()
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
    """A sink from plain data. Chained sinks opened from the same URL with the same options are
    shared within the process (one writer, one queue); across processes the storage's lock
    keeps one chain. `options` go to the sink class's `from_url` when it takes them (its
    `options`); a set option it does not take is refused, unless it only tunes writing."""
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
    cls, url = _resolve(spec, reading=False)
    taken: frozenset[str] | None = getattr(cls, "options", None)
    given = {"fsync": fsync, "key": key, **options}
    if taken is None:  # a mirror: it keeps no chain, so no option applies
        return cls.from_url(url)  # type: ignore[no-any-return]
    for name, value in given.items():
        if value is not None and name not in taken and name not in _TUNING:
            raise bad_parameter(
                name,
                f"{url.partition(':')[0]}: sinks do not take it (they take "
                f"{', '.join(sorted(taken))})",
            )
    given = {k: v for k, v in given.items() if v is not None and k in taken}
    if not issubclass(cls, ChainedSink):
        return cls.from_url(url, **given)  # type: ignore[no-any-return]
    ident = (
        cls,
        cls.location(url),
        tuple(sorted((k, v.id if isinstance(v, Key) else v) for k, v in given.items())),
    )
    with _open_lock:
        sink = _open.get(ident)
        if sink is None or sink._closed:
            sink = _open[ident] = cls.from_url(url, **given)
    return sink
