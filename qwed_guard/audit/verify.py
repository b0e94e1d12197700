"""Re-verify a trail: the hash chain, the sequence, and (with the key) the signed checkpoints.

Works on any trail a registered sink can read back (`open_trail`): a JSONL trail (with its
rotated files, oldest first), an SQLite trail or a PostgreSQL trail (its `postgresql://` URL;
checkpoint entries from its `<table>_checkpoints`), streaming, and stops at the first problem,
naming its `seq` and its kind:

- `edited`: a record's content no longer matches its hash, or it does not link to the previous
  record (a changed byte, a record replaced), or a line is not JSON at all, or a stored column
  (SQLite, PostgreSQL) differs from the hashed record;
- `forged`: with the key, a record's `sig` is missing or does not verify (a record added or
  rewritten without the key);
- `missing`: a gap in `seq` (a deleted record), or a trail that begins after seq 1 with no
  prune record accounting for the records before it;
- `reordered`: a record appears out of order;
- `truncated`: the checkpoint file or the anchor attests a record past the end of the trail (a
  cut tail), or an in-trail checkpoint has no checkpoint file entry (the file was cut or
  deleted);
- `bad_checkpoint`: a checkpoint disagrees with the chain (a chain rebuilt after an edit), the
  checkpoint file's entries do not chain, or, with the key, a checkpoint's HMAC does not
  verify, no signed checkpoint exists, or the trail does not begin with a genesis signed with
  the key.

Only a torn *final* line (a crash mid-write) is skipped, and reported as a note.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qwed_guard.audit.chain import Key, entry_ok, mac_ok, sig_ok
from qwed_guard.audit.record import GENESIS, record_hash

__all__ = ["Problem", "VerifyReport", "iter_lines", "read_records", "verify_trail"]


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes, bool]]:
    """(where, line, complete) for every stored record line, oldest first.

    `complete` is False only for a final line without its newline (a torn write).
    """
    from qwed_guard.audit.sinks import open_trail

    for where, line, complete, _ in open_trail(path).rows():
        yield where, line, complete


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
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
    """edited, forged, missing, reordered, truncated or bad_checkpoint."""
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
    unchecked: list[str] = field(default_factory=list)
    """What could not be checked without the key (empty when verified with it)."""
    anchored: bool = False

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
            if self.anchored:
                text += ", anchor agrees"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        if self.unchecked:
            text += "; not checked without the key: " + ", ".join(self.unchecked)
        return text


Claims = dict[int, list[dict[str, Any]]]


def _load_claims(path: str, *, chained: bool) -> tuple[Claims, int, Problem | None]:
    """The entries of a checkpoint (or anchor) file by seq, how many, and a problem if any."""
    from qwed_guard.audit.sinks.files import side_lines

    return _parse_claims(side_lines(path), os.path.basename(path), chained=chained)


def _parse_claims(
    lines: Iterable[bytes], name: str, *, chained: bool = True
) -> tuple[Claims, int, Problem | None]:
    import orjson

    claims: Claims = {}
    count = 0
    prev_mac: str | None = None
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
            return claims, count, Problem("bad_checkpoint", None, detail)
        # Entries chain (`prev` = the previous entry's mac): a removed entry breaks it.
        if chained and "prev" in entry and prev_mac is not None and entry["prev"] != prev_mac:
            detail = f"{name}:{number} does not follow the entry before it (an entry was removed)"
            return claims, count, Problem("bad_checkpoint", seq, detail)
        prev_mac = entry.get("mac") if isinstance(entry.get("mac"), str) else ""
        claims.setdefault(seq, []).append(entry)
        count += 1
    return claims, count, None


def _seq_later(lines: Iterator[tuple[str, bytes, bool, Any]], wanted: int) -> bool:
    import orjson

    for _, line, _complete, _check in lines:
        try:
            if orjson.loads(line).get("seq") == wanted:
                return True
        except (orjson.JSONDecodeError, AttributeError):
            continue
    return False


def verify_trail(
    path: str | os.PathLike[str],
    *,
    key: Key | None = None,
    checkpoint_path: str | None = None,
    anchor: str | None = None,
) -> VerifyReport:
    """Verify the trail at `path` (a path or a sink URL); see the module docstring.

    `anchor` names a second copy of the checkpoint entries kept where a cut trail cannot reach
    it: the trail must reach every seq it attests.
    """
    import orjson

    from qwed_guard.audit.sinks import open_trail

    trail = open_trail(path)
    report = VerifyReport(trail.name, signed=key is not None)
    if checkpoint_path:
        claims, entries, problem = _load_claims(checkpoint_path, chained=True)
        side_name = os.path.basename(checkpoint_path)
    else:
        side_name = trail.checkpoints_name
        claims, entries, problem = _parse_claims(trail.checkpoints(), side_name)
    if problem is not None:
        report.problem = problem
        return report
    anchor_claims: Claims = {}
    if anchor is not None:
        if not os.path.exists(anchor):
            report.problem = Problem("truncated", None, f"the anchor {anchor} does not exist")
            return report
        anchor_claims, _, problem = _load_claims(anchor, chained=False)
        if problem is not None:
            report.problem = problem
            return report
        report.anchored = True
    prev_seq: int | None = None
    prev_hash: str | None = None
    first_link: str | None = None
    signed_seen = 0
    last_signed_seq = 0
    sigs = 0
    keyed: str | None = None  # the key id a genesis names
    prunes: dict[int, tuple[str, int]] = {}  # first_seq -> (first_prev_hash, prune record seq)
    unmatched_checkpoints: list[int] = []
    lines = trail.rows()

    def fail(kind: str, seq: int | None, detail: str) -> VerifyReport:
        report.problem = Problem(kind, seq, detail)
        return report

    for where, line, complete, columns in lines:
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
            first_link = link
            if seq == 1 and link != GENESIS:
                return fail("edited", seq, f"{where}: the first record does not start the chain")
            if seq == 1 and record.get("event") == "genesis":
                keyed = str(record.get("key_id"))
            if (
                key is not None
                and seq == 1
                and (record.get("event") != "genesis" or record.get("key_id") != key.id)
            ):
                return fail(
                    "bad_checkpoint",
                    seq,
                    f"{where}: the trail does not begin with a genesis signed with this key",
                )
        elif seq != expected:
            if seq > expected and not _seq_later(lines, expected):
                gap = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
                return fail("missing", expected, f"record(s) {gap} missing before {where}")
            return fail("reordered", expected, f"{where} holds seq {seq} where {expected} belongs")
        try:
            recomputed = record_hash(record)
        except (TypeError, ValueError, OverflowError) as exc:
            # Values no writer of ours produces (integers past 2**53, ...): not canonical JSON.
            reason = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
            return fail(
                "edited",
                seq,
                f"{where} holds a value no audit record can hold ({type(exc).__name__}"
                + (f": {reason}" if reason else "")
                + ")",
            )
        if recomputed != digest:
            return fail("edited", seq, f"{where}: the content does not match its hash")
        if prev_hash is not None and link != prev_hash:
            return fail("edited", seq, f"{where}: prev_hash does not match seq {prev_seq}")
        if columns is not None:
            column = trail.mismatch(record, columns)
            if column is not None:
                return fail(
                    "edited", seq, f"{where}: its {column} column differs from the hashed record"
                )
        sig = record.get("sig")
        if sig is not None:
            sigs += 1
        if key is not None:
            if sig is None:
                return fail("forged", seq, f"{where} is not signed: it was added without the key")
            if not sig_ok(key, record):
                return fail("forged", seq, f"{where}: its signature does not verify")
        event = record.get("event")
        if event == "checkpoint":
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
            if seq not in claims:
                unmatched_checkpoints.append(seq)
            report.checkpoints += 1
        elif event == "prune":
            first, first_prev = record.get("first_seq"), record.get("first_prev_hash")
            if isinstance(first, int) and isinstance(first_prev, str):
                prunes[first] = (first_prev, seq)
        for entry in claims.pop(seq, ()):
            if entry["hash"] != digest:
                return fail(
                    "bad_checkpoint",
                    seq,
                    f"{where} differs from {side_name}: the chain was rewritten",
                )
            if key is not None:
                if not _entry_signed(key, entry, seq, digest):
                    return fail(
                        "bad_checkpoint", seq, f"{side_name}: an entry's HMAC does not verify"
                    )
                signed_seen += 1
                last_signed_seq = max(last_signed_seq, seq)
        for entry in anchor_claims.pop(seq, ()):
            if entry.get("hash") != digest:
                return fail("bad_checkpoint", seq, f"{where} differs from the anchor")
            if key is not None and not _entry_signed(key, entry, seq, digest):
                return fail("bad_checkpoint", seq, "an anchor entry's HMAC does not verify")
        prev_seq, prev_hash = seq, digest
        report.records += 1
    report.last_seq, report.head = prev_seq, prev_hash
    end = "no records" if prev_seq is None else f"seq {prev_seq}"
    later = [seq for seq in claims if prev_seq is None or seq > prev_seq]
    if later:
        return fail(
            "truncated",
            (prev_seq or 0) + 1,
            f"{side_name} attests seq {max(later)} but the trail ends at {end}",
        )
    past = [seq for seq in anchor_claims if prev_seq is None or seq > prev_seq]
    if past:
        return fail(
            "truncated",
            (prev_seq or 0) + 1,
            f"the anchor attests seq {max(past)} but the trail ends at {end}",
        )
    if unmatched_checkpoints:
        missing = unmatched_checkpoints[0]
        what = "is missing" if not entries else "has no entry for it (it was cut)"
        return fail(
            "truncated",
            missing,
            f"the trail holds a checkpoint at seq {missing} but {side_name} {what}",
        )
    first_seq = report.first_seq
    if first_seq is not None and first_seq != 1:
        pruned = prunes.get(first_seq)
        if pruned is None or pruned[0] != first_link:
            return fail(
                "missing",
                1,
                f"the trail begins at seq {first_seq} and no prune record accounts for "
                f"seq 1-{first_seq - 1} (its oldest records were deleted)",
            )
        report.notes.append(
            f"seq 1-{first_seq - 1} removed by retention (prune record at seq {pruned[1]})"
        )
    if key is not None and prev_seq is not None and prev_seq > last_signed_seq:
        # Each of them is signed; a checkpoint would also attest that none came after them.
        after = f"after seq {last_signed_seq}" if signed_seen else "(no checkpoint yet)"
        report.notes.append(
            f"{prev_seq - last_signed_seq} signed record(s) {after} are not yet covered by a "
            "checkpoint"
        )
    elif keyed is not None or sigs:
        report.unchecked = [
            f"{sigs} record signature{'s' if sigs != 1 else ''}",
            f"the genesis (key id {keyed})" if keyed else "the genesis",
            f"{report.checkpoints} checkpoint HMAC{'s' if report.checkpoints != 1 else ''}",
            f"{entries} {side_name} HMAC{'s' if entries != 1 else ''}",
            "whether records were added or prune records forged (pass --key-env)",
        ]
    return report


def _entry_signed(key: Key, entry: dict[str, Any], seq: int, digest: str) -> bool:
    if "prev" in entry:
        return entry_ok(key, entry)
    # An entry from before entries chained: it signs (seq, hash) alone.
    return entry.get("key_id") == key.id and mac_ok(key, seq, digest, entry.get("mac"))
