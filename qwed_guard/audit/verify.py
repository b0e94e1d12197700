"""Re-verify a trail: the hash chain, the sequence, and (with the key) the signed checkpoints.

Works on a JSONL trail (with its rotated files, oldest first), an SQLite trail or a PostgreSQL
trail (its `postgresql://` URL; checkpoint entries from its `<table>_checkpoints`), streaming, and
stops at the first problem, naming its `seq` and its kind:

- `edited`: a record's content no longer matches its hash, or it does not link to the previous
  record (a changed byte, a record replaced), or a line is not JSON at all;
- `missing`: a gap in `seq` (a deleted record);
- `reordered`: a record appears out of order;
- `truncated`: the checkpoint file attests a record past the end of the trail (a cut tail);
- `bad_checkpoint`: a checkpoint disagrees with the chain (a chain rebuilt after an edit), or,
  with the key, a checkpoint's HMAC does not verify or no signed checkpoint exists.

Only a torn *final* line (a crash mid-write) is skipped, and reported as a note.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qwed_guard.audit.chain import Key, mac_ok
from qwed_guard.audit.record import GENESIS, record_hash

__all__ = ["Problem", "VerifyReport", "iter_lines", "read_records", "verify_trail"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def trail_files(path: str) -> list[str]:
    """The files of a JSONL trail, oldest first: rotated files, then the active one."""
    from qwed_guard.audit.sinks.jsonl import rotated_files

    files = [p for _, p in rotated_files(path)]
    if os.path.exists(path) or not files:
        files.append(path)
    return files


def iter_lines(path: str) -> Iterator[tuple[str, bytes, bool]]:
    """(where, line, complete) for every stored record line, oldest first.

    `complete` is False only for a final line without its newline (a torn write).
    """
    from qwed_guard.audit.sinks import is_postgres_url

    if is_postgres_url(path):
        from qwed_guard.audit.sinks.postgres import iter_postgres_lines

        for seq, line in iter_postgres_lines(path):
            yield f"row seq={seq}", line, True
        return
    path = os.path.abspath(path)
    if is_sqlite(path):
        from qwed_guard.audit.sinks.sqlite import read_sqlite_lines

        for index, line in enumerate(read_sqlite_lines(path), 1):
            yield f"{os.path.basename(path)} row {index}", line, True
        return
    files = trail_files(path)
    for position, name in enumerate(files):
        last_file = position == len(files) - 1
        with open(name, "rb") as handle:
            for number, line in enumerate(handle, 1):
                complete = line.endswith(b"\n")
                where = f"{os.path.basename(name)}:{number}"
                if not complete and not last_file:
                    yield where, line, True  # only the trail's very end may be torn
                else:
                    yield where, line, complete


def read_records(path: str) -> Iterator[dict[str, Any]]:
    """Every parseable record of a trail, oldest first (skips a torn final line)."""
    import orjson

    for _, line, complete in iter_lines(path):
        if not complete:
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


@dataclass
class Problem:
    kind: str
    """edited, missing, reordered, truncated or bad_checkpoint."""
    seq: int | None
    detail: str


@dataclass
class VerifyReport:
    path: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    checkpoints: int = 0
    signed: bool = False
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        name = self.path if "://" in self.path else os.path.basename(self.path)
        if self.problem is not None:
            where = f"seq {self.problem.seq}" if self.problem.seq is not None else "trail"
            return f"TAMPERED {name}: {where} {self.problem.kind}: {self.problem.detail}"
        if not self.records:
            text = f"OK {name}: empty trail"
        else:
            text = (
                f"OK {name}: {self.records} records, seq {self.first_seq}-{self.last_seq}, "
                f"head {(self.head or '')[:12]}"
            )
            text += f", {self.checkpoints} checkpoint{'s' if self.checkpoints != 1 else ''}"
            text += " verified with the key" if self.signed else " (HMACs not checked: no key)"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


def _load_claims(path: str) -> tuple[dict[int, list[dict[str, Any]]], Problem | None]:
    if not os.path.exists(path):
        return {}, None
    with open(path, "rb") as handle:
        return _parse_claims(handle, os.path.basename(path))


def _parse_claims(
    lines: Iterable[bytes], name: str
) -> tuple[dict[int, list[dict[str, Any]]], Problem | None]:
    import orjson

    claims: dict[int, list[dict[str, Any]]] = {}
    for number, line in enumerate(lines, 1):
        if not line.endswith(b"\n"):
            break  # torn by a crash while signing
        try:
            entry = orjson.loads(line)
            seq = entry["seq"]
            if not isinstance(seq, int) or not isinstance(entry["hash"], str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            detail = f"{name}:{number} is not a checkpoint entry"
            return claims, Problem("bad_checkpoint", None, detail)
        claims.setdefault(seq, []).append(entry)
    return claims, None


def _seq_later(lines: Iterator[tuple[str, bytes, bool]], wanted: int) -> bool:
    import orjson

    for _, line, _complete in lines:
        try:
            if orjson.loads(line).get("seq") == wanted:
                return True
        except (orjson.JSONDecodeError, AttributeError):
            continue
    return False


def verify_trail(
    path: str, *, key: Key | None = None, checkpoint_path: str | None = None
) -> VerifyReport:
    """Verify the trail at `path` (JSONL, SQLite or a PostgreSQL URL); see the module docstring."""
    import orjson

    from qwed_guard.audit.sinks import is_postgres_url

    if is_postgres_url(path):
        from qwed_guard.audit.sinks.postgres import iter_postgres_checkpoints, trail_name

        report = VerifyReport(trail_name(path), signed=key is not None)
        if checkpoint_path:
            claims, problem = _load_claims(checkpoint_path)
        else:
            claims, problem = _parse_claims(iter_postgres_checkpoints(path), "checkpoints table")
    else:
        path = os.path.abspath(path)
        report = VerifyReport(path, signed=key is not None)
        claims, problem = _load_claims(checkpoint_path or path + ".checkpoints")
    if problem is not None:
        report.problem = problem
        return report
    prev_seq: int | None = None
    prev_hash: str | None = None
    signed_seen = 0
    last_signed_seq = 0
    lines = iter_lines(path)

    def fail(kind: str, seq: int | None, detail: str) -> VerifyReport:
        report.problem = Problem(kind, seq, detail)
        return report

    for where, line, complete in lines:
        expected = None if prev_seq is None else prev_seq + 1
        if not complete:
            report.notes.append(f"torn final line skipped ({len(line)} bytes at {where})")
            break
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return fail("edited", expected, f"{where} is not valid JSON")
        if not isinstance(record, dict):
            return fail("edited", expected, f"{where} is not a JSON object")
        seq, digest, link = record.get("seq"), record.get("hash"), record.get("prev_hash")
        if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(link, str):
            return fail("edited", expected, f"{where} lacks seq, hash or prev_hash")
        if expected is None:
            report.first_seq = seq
            if seq == 1 and link != GENESIS:
                return fail("edited", seq, f"{where}: the first record does not start the chain")
            if seq != 1:
                report.notes.append(f"trail begins at seq {seq} (earlier files removed)")
        elif seq != expected:
            if seq > expected and not _seq_later(lines, expected):
                gap = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
                return fail("missing", expected, f"record(s) {gap} missing before {where}")
            return fail("reordered", expected, f"{where} holds seq {seq} where {expected} belongs")
        if record_hash(record) != digest:
            return fail("edited", seq, f"{where}: the content does not match its hash")
        if prev_hash is not None and link != prev_hash:
            return fail("edited", seq, f"{where}: prev_hash does not match seq {prev_seq}")
        if record.get("event") == "checkpoint":
            covers_seq, covers_hash = record.get("covers_seq"), record.get("covers_hash")
            if prev_seq is not None and (covers_seq != prev_seq or covers_hash != prev_hash):
                return fail(
                    "bad_checkpoint", seq, f"{where}: the checkpoint does not match the chain"
                )
            if key is not None:
                if record.get("key_id") != key.id:
                    return fail(
                        "bad_checkpoint",
                        seq,
                        f"{where}: signed with key id {record.get('key_id')}, not {key.id}",
                    )
                if not isinstance(covers_seq, int) or not isinstance(covers_hash, str):
                    return fail("bad_checkpoint", seq, f"{where}: malformed checkpoint")
                if not mac_ok(key, covers_seq, covers_hash, record.get("mac")):
                    return fail("bad_checkpoint", seq, f"{where}: the HMAC does not verify")
                signed_seen += 1
                last_signed_seq = seq
            report.checkpoints += 1
        for entry in claims.pop(seq, ()):
            if entry["hash"] != digest:
                return fail(
                    "bad_checkpoint",
                    seq,
                    f"{where} differs from the checkpoint file: the chain was rewritten",
                )
            if key is not None:
                if entry.get("key_id") != key.id or not mac_ok(key, seq, digest, entry.get("mac")):
                    return fail(
                        "bad_checkpoint", seq, "a checkpoint file entry's HMAC does not verify"
                    )
                signed_seen += 1
                last_signed_seq = max(last_signed_seq, seq)
        prev_seq, prev_hash = seq, digest
        report.records += 1
    report.last_seq, report.head = prev_seq, prev_hash
    later = [seq for seq in claims if prev_seq is None or seq > prev_seq]
    if later:
        end = "no records" if prev_seq is None else f"seq {prev_seq}"
        return fail(
            "truncated",
            (prev_seq or 0) + 1,
            f"the checkpoint file attests seq {max(later)} but the trail ends at {end}",
        )
    if key is not None:
        if not signed_seen and report.records:
            return fail("bad_checkpoint", None, "no checkpoint signed with this key was found")
        if prev_seq is not None and prev_seq > last_signed_seq and signed_seen:
            report.notes.append(
                f"{prev_seq - last_signed_seq} record(s) after seq {last_signed_seq} "
                "are not yet covered by a signed checkpoint"
            )
    return report
