"""What file trails share (JSONL, SQLite, a spool, an anchor): files opened with `O_NOFOLLOW`
and refused unless regular with one link, side files of JSON lines, and `FileSink`, the base of
a sink whose trail is one file with its `<trail>.checkpoints` beside it."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from qwed_guard.audit.chain import Key, checkpoint_entry, sig_ok
from qwed_guard.audit.sinks.base import ChainedSink, Trail
from qwed_guard.errors import AuditError
from qwed_guard.urls import real_path, split_scheme

__all__ = [
    "FileSink",
    "FileTrail",
    "append_entry",
    "check_head",
    "check_readable",
    "make_private_dirs",
    "open_side_file",
]

_CHUNK = 8192
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def refuse(path: str, why: str) -> AuditError:
    return AuditError(f"refusing to use {path} as an audit trail file: {why}")


def open_side_file(path: str, flags: int, mode: int = 0o600) -> int:
    """Open a trail's file without following a symlink; refuse anything but a regular file
    with one link."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse(path, "it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(path, "it is not a regular file")
        if st.st_nlink > 1:
            raise refuse(path, f"it has {st.st_nlink} hard links")
    except BaseException:
        os.close(fd)
        raise
    return fd


def line_start(fd: int, end: int) -> int:
    """Offset just after the last newline before `end` (0 if none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        chunk = os.pread(fd, pos - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        pos = start
    return 0


def append_entry(path: str, entry_line: bytes, durable: bool) -> None:
    """Append one JSON line to a side file (checkpoints, anchor), cutting a torn last line."""
    fd = open_side_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, line_start(fd, size))  # a crash while signing left half a line
        os.write(fd, entry_line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def last_entry_mac(path: str) -> str:
    """The `mac` of a side file's last complete entry ("" when there is none)."""
    import orjson

    try:
        fd = open_side_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    try:
        end = line_start(fd, os.fstat(fd).st_size)  # just after the last newline
        if end == 0:
            return ""
        start = line_start(fd, end - 1)
        try:
            found = orjson.loads(os.pread(fd, end - start, start)).get("mac")
        except (orjson.JSONDecodeError, AttributeError):
            return ""
        return found if isinstance(found, str) else ""
    finally:
        os.close(fd)


def check_head(record: dict[str, Any], key: Key | None, where: str) -> None:
    """Refuse to extend a signed trail without its key, or an unsigned one with a key."""
    sig = record.get("sig")
    if key is None:
        if sig is not None:
            raise AuditError(
                f"{where} is signed (key id {record.get('key_id') or 'in its genesis'}): "
                "a writer without key_env would add unsigned records to it"
            )
        return
    if sig is None:
        raise AuditError(
            f"{where} is not signed: a writer with key_env cannot extend it (start a new trail)"
        )
    if not sig_ok(key, record):
        raise AuditError(f"{where} is signed with another key than ${key.env or 'key_env'}")


def make_private_dirs(directory: str) -> None:
    """Create `directory` and any missing parents with mode 0700."""
    missing: list[str] = []
    current = directory
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # exact, whatever the umask


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_readable(path: str) -> None:
    """Raise `ValueError` (one clear line) for a path that is not a file a trail can be in:
    a FIFO, a device, a directory. Reading those would hang or never end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a device or socket"
        )
        raise ValueError(f"{path} is {kind}, not an audit trail file")


def side_lines(path: str) -> Iterator[bytes]:
    """The lines of a side file (checkpoints, anchor); none when it does not exist."""
    if os.path.lexists(path):
        check_readable(path)
        with open(path, "rb") as handle:
            yield from handle


class FileSink(ChainedSink):
    """A chained sink whose trail is the file `path` (opened from `scheme:PATH`), with its
    checkpoint entries in `<path>.checkpoints` and, if named, the anchor file."""

    def __init__(self, path: str | os.PathLike[str], **common: Any) -> None:
        super().__init__(**common)
        self.path = real_path(path)
        self.checkpoint_path = self.path + ".checkpoints"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileSink:
        return cls(split_scheme(url)[1], **options)

    @classmethod
    def location(cls, url: str) -> str:
        return real_path(split_scheme(url)[1])

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"

    def _sign(self, signed: tuple[int, str, float]) -> None:
        """Attest the checkpoint at `signed` in the checkpoint file (chained to its last entry)
        and in the anchor file, if any. Called under the trail's lock."""
        import orjson

        assert self.key is not None
        prev = last_entry_mac(self.checkpoint_path)
        line = orjson.dumps(checkpoint_entry(self.key, *signed, prev)) + b"\n"
        for path in (self.checkpoint_path, self.anchor):
            if path is not None:
                append_entry(path, line, self.fsync != "none")


class FileTrail(Trail):
    """A file trail read back: `rows` comes from the sink's format."""

    def __init__(self, url: str) -> None:
        self.path = self.name = os.path.abspath(split_scheme(url)[1])
        self.side = self.path + ".checkpoints"
        self.checkpoints_name = os.path.basename(self.side)

    def checkpoints(self) -> Iterator[bytes]:
        return side_lines(self.side)

    def unreadable(self, missing_ok: bool = False) -> str | None:
        if not os.path.exists(self.path):
            return (
                None
                if missing_ok and not os.path.lexists(self.path)
                else f"{self.path}: no such file"
            )
        try:
            check_readable(self.path)
        except ValueError as exc:
            return str(exc)
        return None
