"""The JSONL sink: one record a line, one hash chain, safe for several writer processes.

Every commit holds an exclusive `fcntl.flock` on `<trail>.lock` while it reads the chain's head,
appends and fsyncs, so processes sharing a file extend one continuous chain. On each commit a
torn last line (left by a crash mid-write) is cut back to the last newline and a `repair` record
says how many bytes were dropped. Rotation renames the active file to
`<stem>.<last seq, 12 digits><suffix>` and carries the chain into a new active file; when
retention then removes old files, a `prune` record written first says which records went.

The trail and its side files (`.lock`, `.checkpoints`, the anchor) are opened with
`O_NOFOLLOW` under the trail's real directory, so one file has one lock whatever name reaches
it; a file that is not a trail of ours (or is a symlink, hard-linked, a FIFO or a device) is
refused and left untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import os
import re
import stat
from typing import Any

from qwed_guard import clock
from qwed_guard.audit.chain import (
    Key,
    checkpoint_entry,
    checkpoint_record,
    genesis_record,
    prune_record,
    sig_ok,
)
from qwed_guard.audit.record import GENESIS, SCHEMA, rfc3339, seal, versions
from qwed_guard.audit.sinks.base import ChainedSink, FsyncMode, check_options
from qwed_guard.errors import AuditError, bad_parameter

__all__ = [
    "JsonlSink",
    "append_entry",
    "check_head",
    "make_private_dirs",
    "open_side_file",
    "real_path",
    "rotated_files",
]

_CHUNK = 8192
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def real_path(path: str | os.PathLike[str]) -> str:
    """`path` under its directory's real path: one name for one file, whatever symlinked
    directory reached it. The file name itself is kept (and opened with O_NOFOLLOW)."""
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    directory, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(directory), name)


def _refuse(path: str, why: str) -> AuditError:
    return AuditError(f"refusing to use {path} as an audit trail file: {why}")


def open_side_file(path: str, flags: int, mode: int = 0o600) -> int:
    """Open a trail's file without following a symlink; refuse anything but a regular file
    with one link."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file")
        if st.st_nlink > 1:
            raise _refuse(path, f"it has {st.st_nlink} hard links")
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_entry(path: str, entry_line: bytes, durable: bool) -> None:
    """Append one JSON line to a side file (checkpoints, anchor), cutting a torn last line."""
    fd = open_side_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, _line_start(fd, size))  # a crash while signing left half a line
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
        size = os.fstat(fd).st_size
        end = _line_start(fd, size)  # just after the last newline
        if end == 0:
            return ""
        start = _line_start(fd, end - 1)
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


def _looks_like_trail(first: bytes) -> bool:
    """True when `first` (the file's first bytes) starts a trail of ours."""
    import orjson

    newline = first.find(b"\n")
    if newline < 0:
        # Empty: a crash between creating the file and its first write. Else one torn record,
        # left by a crash on the first write.
        return not first or first.startswith(b'{"')
    try:
        record = orjson.loads(first[:newline])
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(record, dict)
        and record.get("v") == SCHEMA
        and isinstance(record.get("seq"), int)
        and isinstance(record.get("hash"), str)
        and isinstance(record.get("prev_hash"), str)
    )


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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_name(path: str) -> tuple[str, str, str]:
    directory, name = os.path.split(path)
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return directory, name, ""
    return directory, stem, "." + suffix


def rotated_files(path: str) -> list[tuple[int, str]]:
    """The rotated files of the trail with active file `path`: (last seq, path), oldest first."""
    directory, stem, suffix = _split_name(os.path.abspath(path))
    pattern = re.compile(re.escape(stem) + r"\.(\d{12,})" + re.escape(suffix) + "$")
    found: list[tuple[int, str]] = []
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    found.sort()
    return found


def _line_start(fd: int, end: int) -> int:
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


def _head_of(fd: int, end: int, where: str) -> dict[str, Any]:
    """The record on the complete line ending at `end` (end - 1 is its newline)."""
    import orjson

    start = _line_start(fd, end - 1)
    line = os.pread(fd, end - start, start)
    try:
        record = orjson.loads(line)
        seq, digest = record["seq"], record["hash"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise AuditError(
            f"{where}: the last record is unreadable ({exc}); check it with "
            "`qwed-guard audit verify` before writing more"
        ) from exc
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise AuditError(f"{where}: the last record has no valid seq/hash")
    return record  # type: ignore[no-any-return]


def _parse_ts(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()


class JsonlSink(ChainedSink):
    """Append-only JSONL trail with fcntl locking, torn-tail repair, rotation and checkpoints."""

    kind = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "always",
        batch_size: int = 256,
        batch_ms: float = 50.0,
        key: Key | None = None,
        checkpoint_every: int = 1000,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        keep_files: int | None = None,
        keep_days: float | None = None,
        anchor: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            fsync=fsync,
            batch_size=batch_size,
            batch_ms=batch_ms,
            key=key,
            checkpoint_every=checkpoint_every,
        )
        check_options(
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            keep_files=keep_files,
            keep_days=keep_days,
        )
        if anchor is not None and not isinstance(anchor, (str, os.PathLike)):
            raise bad_parameter("anchor", "must be a file path", wrong_type=True)
        self.path = real_path(path)
        self.lock_path = self.path + ".lock"
        self.checkpoint_path = self.path + ".checkpoints"
        self.anchor = real_path(anchor) if anchor is not None else None
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.keep_files = keep_files
        self.keep_days = keep_days
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._fd = -1
        self._lock_fd = -1
        self._ino = (-1, -1)
        self._size = -1
        self._seq = 0
        self._head = GENESIS
        self._born: float | None = None
        self._unsigned = 0  # records this writer appended since its last checkpoint

    def describe(self) -> str:
        return f"jsonl:{self.path}"

    def _after_fork(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's lock lives on its own descriptor
        self._reset_handles()
        super()._after_fork()

    # --- storage --------------------------------------------------------------------------
    def _open_lock(self) -> None:
        if self._lock_fd < 0:
            make_private_dirs(os.path.dirname(self.path))
            self._lock_fd = open_side_file(self.lock_path, os.O_RDWR | os.O_CREAT)

    def _open_active(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        flags = os.O_RDWR | os.O_APPEND
        try:
            fd = open_side_file(self.path, flags | os.O_CREAT | os.O_EXCL)
            _fsync_dir(os.path.dirname(self.path))
        except FileExistsError:
            # O_NONBLOCK: a FIFO planted at the path must not block the open.
            fd = open_side_file(self.path, flags | os.O_NONBLOCK)
            try:
                os.set_blocking(fd, True)
                if not _looks_like_trail(os.pread(fd, 65536, 0)):
                    raise _refuse(self.path, "it holds something else than audit records")
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        st = os.fstat(fd)
        self._ino = (st.st_dev, st.st_ino)
        self._size = -1
        self._born = None

    def _sync_head(self) -> dict[str, Any] | None:
        """Bring the cached head up to date; repair a torn tail. Returns a repair record."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ino
        except FileNotFoundError:
            same = False
        if self._fd < 0 or not same:
            self._open_active()
            size = os.fstat(self._fd).st_size
        else:
            size = st.st_size
        if size == self._size:
            return None
        return self._read_head(size)

    def _read_head(self, size: int) -> dict[str, Any] | None:
        fd = self._fd
        repair: dict[str, Any] | None = None
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            cut = _line_start(fd, size)
            dropped = os.pread(fd, size - cut, cut)
            os.ftruncate(fd, cut)
            os.fsync(fd)
            repair = {
                "v": SCHEMA,
                "id": f"repair/{os.getpid()}/{size}",
                "ts": rfc3339(clock.wall()),
                "event": "repair",
                "dropped_bytes": len(dropped),
                "dropped_sha256": hashlib.sha256(dropped).hexdigest(),
                "qwed_guard": versions()[1],
            }
            size = cut
        head = self._head_of_rotated() if size == 0 else _head_of(fd, size, self.path)
        if head is None:
            self._seq, self._head = 0, GENESIS
        else:
            check_head(head, self.key, self.path)
            self._seq, self._head = head["seq"], head["hash"]
        self._size = size
        return repair

    def _head_of_rotated(self) -> dict[str, Any] | None:
        rotated = rotated_files(self.path)
        if not rotated:
            return None
        fd = open_side_file(rotated[-1][1], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            return _head_of(fd, size, rotated[-1][1]) if size else None
        finally:
            os.close(fd)

    def _born_at(self) -> float:
        if self._born is None:
            import orjson

            start = os.pread(self._fd, 4096, 0)
            first = start[: start.find(b"\n")] if b"\n" in start else start
            born: float | None = None
            try:
                born = _parse_ts(orjson.loads(first).get("ts"))
            except (orjson.JSONDecodeError, AttributeError):
                born = None
            self._born = born if born is not None else os.fstat(self._fd).st_mtime
        return self._born

    def _rotation_due(self) -> bool:
        if self._size <= 0:
            return False
        if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
            return True
        return (
            self.rotate_seconds is not None
            and clock.wall() - self._born_at() >= self.rotate_seconds
        )

    def _rotate(self) -> list[str]:
        """Rotate; return the rotated files retention removes once a prune record says so."""
        directory, stem, suffix = _split_name(self.path)
        target = os.path.join(directory, f"{stem}.{self._seq:012d}{suffix}")
        os.rename(self.path, target)
        self._open_active()
        self._size = 0
        return self._doomed()

    def _prune(self, doomed: list[str]) -> dict[str, Any]:
        """The record that accounts for the files retention is about to remove."""
        kept = [path for _, path in rotated_files(self.path) if path not in doomed]
        first_seq, first_prev = self._seq + 1, self._head  # the prune record's own place
        if kept:
            fd = open_side_file(kept[0], os.O_RDONLY)
            try:
                start = os.pread(fd, 65536, 0)
            finally:
                os.close(fd)
            import orjson

            first = orjson.loads(start[: start.index(b"\n")])
            first_seq, first_prev = first["seq"], first["prev_hash"]
        names = [os.path.basename(path) for path in doomed]
        return prune_record(first_seq, first_prev, names, clock.wall())

    def _doomed(self) -> list[str]:
        rotated = rotated_files(self.path)  # never includes the active file
        doomed: list[str] = []
        if self.keep_files is not None and len(rotated) > self.keep_files:
            doomed.extend(path for _, path in rotated[: len(rotated) - int(self.keep_files)])
        if self.keep_days is not None:
            limit = clock.wall() - self.keep_days * 86400.0
            for _, path in rotated:
                if path not in doomed and os.stat(path).st_mtime < limit:
                    doomed.append(path)
        return doomed

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:
                try:  # leave no partial line behind
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._size = -1
            raise

    def _write_checkpoint_entry(self, key: Key, seq: int, digest: str, wall: float) -> None:
        write_entry(self.checkpoint_path, self.anchor, key, seq, digest, wall, self.fsync)

    def _commit(
        self, records: list[dict[str, Any]], durable: bool, *, checkpoint: bool = False
    ) -> None:
        try:
            self._open_lock()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise AuditError(f"cannot open the audit trail {self.path}: {exc}") from exc
        try:
            self._commit_locked(records, durable, checkpoint)
        except AuditError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            self._size = -1  # re-read the head next time
            raise AuditError(f"cannot write the audit trail {self.path}: {exc}") from exc
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit_locked(
        self, records: list[dict[str, Any]], durable: bool, checkpoint: bool
    ) -> None:
        repair = self._sync_head()
        doomed = self._rotate() if self._rotation_due() else []
        key = self.key
        first: list[dict[str, Any]] = []
        if doomed:
            first.append(self._prune(doomed))
        if key is not None and self._seq == 0 and (records or repair):
            first.append(genesis_record(key, clock.wall()))
        if repair is not None:
            first.append(repair)
        if first:
            records[:0] = first
        seq, head = self._seq, self._head
        lines: list[bytes] = []
        for record in records:
            seq += 1
            line, head = seal(record, seq, head, key)
            lines.append(line)
        signed: tuple[int, str, float] | None = None
        every = self.checkpoint_every
        unsigned = self._unsigned + len(records)
        if key is not None and (
            (checkpoint and unsigned) or (records and seq // every > self._seq // every)
        ):
            wall = clock.wall()
            line, cp_hash = seal(checkpoint_record(key, seq, head, wall), seq + 1, head, key)
            seq, head = seq + 1, cp_hash
            lines.append(line)
            signed = (seq, head, wall)
            unsigned = 0
        if not lines:
            return
        data = b"".join(lines)
        self._write(data)
        if durable or doomed:
            os.fdatasync(self._fd)
        self._size += len(data)
        self._seq, self._head = seq, head
        self._unsigned = unsigned
        if signed is not None and key is not None:
            # After the trail is durable, so a crash in between never leaves a dangling claim.
            self._write_checkpoint_entry(key, *signed)
        if doomed:
            # Only once the prune record that accounts for them is durable.
            for path in doomed:
                os.unlink(path)
            _fsync_dir(os.path.dirname(self.path))

    def _finish(self) -> None:
        try:
            if self.key is not None and self._unsigned:
                self._commit([], self.fsync != "none", checkpoint=True)
        finally:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._lock_fd = -1


def write_entry(
    checkpoint_path: str,
    anchor: str | None,
    key: Key,
    seq: int,
    digest: str,
    wall: float,
    fsync: FsyncMode,
) -> None:
    """Sign the record at `seq` in the checkpoint file (chained to its last entry) and in the
    anchor file, if any. Called under the trail's lock."""
    import orjson

    entry = checkpoint_entry(key, seq, digest, wall, last_entry_mac(checkpoint_path))
    line = orjson.dumps(entry) + b"\n"
    append_entry(checkpoint_path, line, fsync != "none")
    if anchor is not None:
        append_entry(anchor, line, fsync != "none")
