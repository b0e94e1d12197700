"""`audit verify` catches every kind of tampering; `audit show` and `audit stats` read trails."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard import AuditError, fallback, retry
from qwed_guard.audit import JsonlSink, audited, verify_trail
from qwed_guard.audit.chain import Key, mac
from qwed_guard.audit.cli import main
from qwed_guard.audit.record import GENESIS, seal

KEY_ENV = "QWED_GUARD_TEST_AUDIT_KEY"
KEY = "test-audit-key-0123456789abcdef"


@dataclass
class Result:
    verified: bool
    value: Any = None
    confidence: float = 0.0
    error: str | None = None


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> Key:
    monkeypatch.setenv(KEY_ENV, KEY)
    return Key(KEY.encode(), KEY_ENV)


def write_trail(path: Path, sink_url: str, calls: int = 6) -> None:
    """A trail of real calls: some verified, some retried, some falling back."""
    replies = iter([Result(False, error="Error code: 503"), Result(True, 42, 1.0)] * calls)
    sink = JsonlSink(path, key=Key(KEY.encode()), checkpoint_every=5, fsync="none")

    @audited(sink=sink)
    @fallback(value=0)
    @retry(max_tries=2, jitter=None)
    def ask(query: str) -> Result:
        return next(replies)

    for i in range(calls):
        ask(f"What is {i} + {i}?")
    sink.close()
    assert sink_url  # the URL form is exercised in test_cli_verify_on_url_trail


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["audit", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def trail(tmp_path: Path, key: Key, fake_clock: Any) -> Path:
    path = tmp_path / "audit.jsonl"
    write_trail(path, f"jsonl:{path}")
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_trail_verifies(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "verify", str(trail), "--key-env", KEY_ENV)
    records = len(lines_of(trail))
    assert code == 0, out
    assert out.count("\n") == 1 and out.startswith("OK audit.jsonl")
    assert f"{records} records, seq 1-{records}" in out and "verified with the key" in out
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 0 and "HMACs not checked" in out


def test_flipped_byte_is_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail)
    target = lines[6]
    seq = orjson.loads(target)["seq"]
    index = target.index(b"What is") + len(b"What is ")
    flipped = bytearray(target)
    flipped[index] ^= 0x01
    lines[6] = bytes(flipped)
    trail.write_bytes(b"".join(lines))
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1
    assert f"seq {seq} edited" in out


def test_flipped_byte_anywhere_is_detected(trail: Path) -> None:
    original = trail.read_bytes()
    for offset in range(0, len(original) - 1, 97):
        if original[offset : offset + 1] == b"\n":
            continue
        damaged = bytearray(original)
        damaged[offset] ^= 0x04
        trail.write_bytes(bytes(damaged))
        report = verify_trail(str(trail))
        assert not report.ok, offset
    trail.write_bytes(original)


def test_deleted_line_is_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail)
    del lines[4]
    trail.write_bytes(b"".join(lines))
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1 and "seq 5 missing" in out


def test_swapped_lines_are_detected(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail)
    lines[2], lines[3] = lines[3], lines[2]
    trail.write_bytes(b"".join(lines))
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1 and "seq 3 reordered" in out


def test_cut_tail_is_detected_by_the_checkpoint_file(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail)
    last = len(lines)
    trail.write_bytes(b"".join(lines[:-3]))  # still a valid chain on its own
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1
    assert f"seq {last - 2} truncated" in out and f"attests seq {last}" in out


def rebuild(path: Path, edit_seq: int, *, fix_checkpoints: bool) -> None:
    """Edit one record and recompute every hash after it, as a forger without the key can."""
    records = [orjson.loads(line) for line in lines_of(path)]
    head, old_to_new = GENESIS, {}
    out = []
    for record in records:
        record.pop("hash")
        if record["seq"] == edit_seq:
            record["query"] = "What is 1 + 1?"
        if fix_checkpoints and record.get("event") == "checkpoint":
            record["covers_hash"] = old_to_new[record["covers_seq"]]
        line, head = seal(record, record["seq"], head)
        old_to_new[record["seq"]] = head
        out.append(line)
    path.write_bytes(b"".join(out))
    if fix_checkpoints:
        cp = Path(str(path) + ".checkpoints")
        entries = [json.loads(line) for line in cp.read_text().splitlines()]
        for entry in entries:
            entry["hash"] = old_to_new[entry["seq"]]  # the MAC cannot be recomputed
        cp.write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_rebuilt_chain_is_caught_by_checkpoints(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rebuild(trail, 3, fix_checkpoints=False)
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1 and "bad_checkpoint" in out


def test_rebuilt_chain_and_checkpoints_are_caught_by_the_key(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rebuild(trail, 3, fix_checkpoints=True)
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 0  # consistent on its own: only the key can tell
    code, out = run_cli(capsys, "verify", str(trail), "--key-env", KEY_ENV)
    # A forger without the key cannot sign the rebuilt records.
    assert code == 1 and "seq 1 forged" in out and "not signed" in out


def test_removing_every_checkpoint_is_caught_by_the_key(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [orjson.loads(line) for line in lines_of(trail)]
    head, out, seq = GENESIS, [], 0
    for record in records:
        if record["event"] == "checkpoint":
            continue
        seq += 1
        record.pop("hash")
        line, head = seal(record, seq, head)
        out.append(line)
    trail.write_bytes(b"".join(out))
    os.unlink(str(trail) + ".checkpoints")
    code, out_text = run_cli(capsys, "verify", str(trail), "--key-env", KEY_ENV)
    # Rewritten without the key, the records lose their signatures.
    assert code == 1 and "seq 1 forged" in out_text


def test_wrong_key_and_missing_key(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_KEY", "another-key-0123456789abcdef")
    code, out = run_cli(capsys, "verify", str(trail), "--key-env", "OTHER_KEY")
    assert code == 1 and "bad_checkpoint" in out
    monkeypatch.delenv("UNSET_KEY", raising=False)
    code, out = run_cli(capsys, "verify", str(trail), "--key-env", "UNSET_KEY")
    assert code == 2 and "UNSET_KEY is not set" in out
    code, out = run_cli(capsys, "verify", str(trail.parent / "nope.jsonl"))
    assert code == 2 and "no such file" in out


def test_checkpoint_macs_sign_seq_and_hash(key: Key) -> None:
    assert mac(key, 5, "a" * 64) != mac(key, 6, "a" * 64)
    assert mac(key, 5, "a" * 64) != mac(key, 5, "b" * 64)
    assert KEY not in repr(key)


def test_torn_final_line_is_skipped_but_a_bad_middle_line_is_not(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    intact = trail.read_bytes()
    trail.write_bytes(intact + b'{"v":1,"seq":')
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 0 and "torn final line skipped" in out
    lines = intact.splitlines(keepends=True)
    lines[3] = b'{"v":1,"seq":\n'
    trail.write_bytes(b"".join(lines))
    code, out = run_cli(capsys, "verify", str(trail))
    assert code == 1 and "seq 4 edited" in out and "not valid JSON" in out


def test_sqlite_trail_verifies_and_detects_edits(
    tmp_path: Path, key: Key, capsys: pytest.CaptureFixture[str], fake_clock: Any
) -> None:
    import sqlite3

    path = tmp_path / "audit.db"

    @audited(sink=f"sqlite:{path}", key_env=KEY_ENV, checkpoint_every=4)
    @retry(max_tries=2, jitter=None)
    def ask(query: str) -> Result:
        return Result(True, 7, 1.0)

    for i in range(5):
        ask(f"q{i}")
    ask.find_layer("audited").close()  # type: ignore[attr-defined]
    code, out = run_cli(capsys, "verify", str(path), "--key-env", KEY_ENV)
    assert code == 0 and "verified with the key" in out, out
    conn = sqlite3.connect(path)
    (seq,) = conn.execute(
        "SELECT seq FROM audit_records WHERE event = 'call' AND record LIKE '%\"q2\"%'"
    ).fetchone()
    conn.execute(f"UPDATE audit_records SET record = replace(record, 'q2', 'q9') WHERE seq = {seq}")
    conn.commit()
    conn.close()
    code, out = run_cli(capsys, "verify", str(path))
    assert code == 1 and f"seq {seq} edited" in out


def test_show_filters_and_stats(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "show", str(trail))
    assert code == 0 and "What is 0 + 0?" in out and "checkpoint" in out
    records = [orjson.loads(line) for line in lines_of(trail)]
    call_id = next(r["call_id"] for r in records if r["event"] == "call")
    code, out = run_cli(capsys, "show", str(trail), "--call", call_id, "--event", "attempt")
    assert code == 0 and "2 records" in out
    code, out = run_cli(capsys, "show", str(trail), "--outcome", "verified", "--event", "call")
    assert code == 0 and "6 records" in out
    code, out = run_cli(capsys, "show", str(trail), "--since", "2100-01-01")
    assert code == 0 and "0 records" in out
    code, out = run_cli(capsys, "show", str(trail), "--since", "2025-12-31T23:00:00Z")
    # Every stored record, and each call's answered attempt (inline in it) as a row of its own.
    inline = sum(1 for r in records if r["event"] == "call" and r["answered"] is not None)
    assert inline == 6
    assert code == 0 and f"{len(records) + inline} records" in out
    code, out = run_cli(capsys, "stats", str(trail))
    assert code == 0
    assert "6 calls, 12 attempts" in out
    assert "attempts per call: mean 2.00 (2: 6)" in out
    assert "call duration: p50 1000.0 ms, p95 1000.0 ms" in out  # one 1 s backoff each
    assert "transient" in out and "verified" in out


def test_a_v1_trail_continued_by_the_v2_writer_verifies(
    tmp_path: Path, key: Key, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qwed_guard.audit.chain as chain

    path = tmp_path / "audit.jsonl"
    # What the v1 writer wrote for a call verified at once: an attempt record, then the call's.
    common = {
        "v": 1,
        "ts": "2026-01-01T00:00:00.000000Z",
        "call_id": "old-1",
        "function": "app.ask",
        "query": "What is 1 + 1?",
        "context": {},
        "policy": None,
        "qwed": None,
        "qwed_guard": "0.1.0",
        "attempt": 1,
        "outcome": "verified",
        "verified": True,
        "value": "2",
        "confidence": "1.0",
        "error": None,
    }
    attempt = {**common, "id": "old-1/a1", "event": "attempt", "status": None}
    attempt.update(duration_us=5, wait_us=0)
    call = {**common, "id": "old-1/call", "event": "call", "duration_us": 9, "source": "verified"}
    call.update(reason=None, exception=None, events=[])
    with monkeypatch.context() as patched:
        patched.setattr(chain, "SCHEMA", 1)  # its genesis too
        with JsonlSink(path, key=Key(KEY.encode()), fsync="none") as old:
            old.append([attempt, call])
    v1 = [orjson.loads(line) for line in lines_of(path)]
    assert [r["event"] for r in v1] == ["genesis", "attempt", "call", "checkpoint"]
    assert {r["v"] for r in v1} == {1}

    write_trail(path, f"jsonl:{path}", calls=2)  # the v2 writer goes on after the v1 records
    records = [orjson.loads(line) for line in lines_of(path)]
    assert records[: len(v1)] == v1
    added = records[len(v1) :]
    assert {r["v"] for r in added} == {2}
    assert [r["event"] for r in added if r["event"] != "checkpoint"] == ["attempt", "call"] * 2
    assert all(r["answered"]["outcome"] == "verified" for r in added if r["event"] == "call")
    report = verify_trail(str(path), key=key)
    assert report.ok and report.records == len(records), report.summary()
    code, out = run_cli(capsys, "verify", str(path), "--key-env", KEY_ENV)
    assert code == 0 and out.startswith("OK audit.jsonl") and "verified with the key" in out
    code, out = run_cli(capsys, "stats", str(path))
    # v1: 1 call, 1 attempt record; v2: 2 calls, each a failed attempt + one inline.
    assert code == 0 and "3 calls, 5 attempts" in out
    code, out = run_cli(capsys, "show", str(path), "--event", "attempt")
    assert code == 0 and "5 records" in out
    # A trail whose first record has a schema this writer does not know is not extended.
    other = tmp_path / "future.jsonl"
    first = {**orjson.loads(lines_of(path)[0]), "v": 3}
    other.write_bytes(orjson.dumps(first) + b"\n")
    with pytest.raises(AuditError):
        JsonlSink(other, fsync="none").append([{"v": 2, "event": "attempt", "id": "x"}])
