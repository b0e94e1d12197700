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
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from typing import Any

from qwed_guard import clock
from qwed_guard.audit.chain import event_record, prune_record
from qwed_guard.audit.record import GENESIS, SCHEMAS, versions
from qwed_guard.audit.sinks.base import Row, check_options
from qwed_guard.audit.sinks.files import (
    FileSink,
    FileTrail,
    check_head,
    check_readable,
    fsync_dir,
    line_start,
    make_private_dirs,
    open_side_file,
    refuse,
)
from qwed_guard.errors import AuditError

__all__ = ["JsonlSink", "JsonlTrail", "rotated_files"]


def _looks_like_trail(first: bytes) -> bool:
    """True when `first` (the file's first bytes) starts a trail of ours."""
    import orjson

    newline = first.find(b"\n")
    if newline < 0:
        # Empty: created by a writer killed before its first record; or one torn record.
        return not first or first.startswith(b'{"')
    try:
        record = orjson.loads(first[:newline])
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(record, dict)
        and record.get("v") in SCHEMAS
        and isinstance(record.get("seq"), int)
        and isinstance(record.get("hash"), str)
        and isinstance(record.get("prev_hash"), str)
    )


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


def _head_of(fd: int, end: int, where: str) -> dict[str, Any]:
    """The record on the complete line ending at `end` (end - 1 is its newline)."""
    import orjson

    start = line_start(fd, end - 1)
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


class JsonlSink(FileSink):
    """Append-only JSONL trail with fcntl locking, torn-tail repair, rotation and checkpoints."""

    kind = "jsonl"
    schemes = ("jsonl",)
    options = FileSink.options | {"rotate_bytes", "rotate_seconds", "keep_files", "keep_days"}

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        keep_files: int | None = None,
        keep_days: float | None = None,
        **common: Any,
    ) -> None:
        """`common`: `ChainedSink`'s fsync, batch_size, batch_ms, key, checkpoint_every, anchor."""
        super().__init__(path, **common)
        check_options(
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            keep_files=keep_files,
            keep_days=keep_days,
        )
        self.lock_path = self.path + ".lock"
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.keep_files = keep_files
        self.keep_days = keep_days
        self._reset_handles()

    @classmethod
    def reader(cls, url: str) -> JsonlTrail:
        return JsonlTrail(url)

    def _reset_handles(self) -> None:
        self._fd = -1
        self._lock_fd = -1
        self._ino = (-1, -1)
        self._size = -1
        self._seq = 0
        self._head = GENESIS
        self._born: float | None = None

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
            fsync_dir(os.path.dirname(self.path))
        except FileExistsError:
            # O_NONBLOCK: a FIFO planted at the path must not block the open.
            fd = open_side_file(self.path, flags | os.O_NONBLOCK)
            try:
                os.set_blocking(fd, True)
                if not _looks_like_trail(os.pread(fd, 65536, 0)):
                    raise refuse(self.path, "it holds something else than audit records")
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
            cut = line_start(fd, size)
            dropped = os.pread(fd, size - cut, cut)
            os.ftruncate(fd, cut)
            os.fsync(fd)
            repair = event_record(
                "repair",
                f"repair/{os.getpid()}/{size}",
                clock.wall(),
                dropped_bytes=len(dropped),
                dropped_sha256=hashlib.sha256(dropped).hexdigest(),
                qwed_guard=versions()[1],
            )
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
        first = [self._prune(doomed)] if doomed else []
        if repair is not None:
            first.append(repair)
        sealed = self._seal([*first, *records], self._seq, self._head, checkpoint)
        if not sealed.rows:
            return
        data = b"".join([line for _, line, _ in sealed.rows])
        self._write(data)
        if durable or doomed:
            os.fdatasync(self._fd)
        self._size += len(data)
        self._seq, self._head, self._unsigned = sealed.seq, sealed.head, sealed.unsigned
        if sealed.signed is not None:
            # After the trail is durable, so a crash in between never leaves a dangling claim.
            self._sign(sealed.signed)
        if doomed:
            # Only once the prune record that accounts for them is durable.
            for path in doomed:
                os.unlink(path)
            fsync_dir(os.path.dirname(self.path))

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1


class JsonlTrail(FileTrail):
    """A JSONL trail read back: its rotated files, oldest first, then the active one."""

    def rows(self) -> Iterator[Row]:
        files = [p for _, p in rotated_files(self.path)]
        if os.path.lexists(self.path):
            files.append(self.path)
        for position, name in enumerate(files):
            last_file = position == len(files) - 1
            check_readable(name)
            with open(name, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    complete = line.endswith(b"\n")
                    # Only the trail's very end may be torn.
                    yield (
                        f"{os.path.basename(name)}:{number}",
                        line,
                        complete or not last_file,
                        None,
                    )
