"""The tamper suite: each attack on a keyed trail, and the exact verdict `audit verify` gives
with the key and without it (exit code and problem kind). docs/security.md's "Attacks on the trail"
table lists the same attacks (test_readme_lists_every_attack holds them together).

Every trail here is written by the real sinks with a key, `checkpoint_every=5` and an anchor
file in another directory (what the README recommends); verify passes `--anchor` unless the
attack says the auditor does not have it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from qwed_guard.audit import JsonlSink
from qwed_guard.audit.chain import Key
from qwed_guard.audit.cli import main
from qwed_guard.audit.record import GENESIS, canonical, chain_hash, seal
from qwed_guard.audit.sinks.sqlite import SqliteSink

KEY_ENV = "QWED_GUARD_ATTACK_KEY"
KEY = "attack-suite-key-0123456789abcdef"
OTHER_ENV = "QWED_GUARD_ATTACK_OTHER_KEY"


@dataclass
class Trail:
    path: Path
    anchor: Path
    kind: str  # "jsonl", "sqlite" or "rotated"

    @property
    def checkpoints(self) -> Path:
        return Path(str(self.path) + ".checkpoints")

    def lines(self) -> list[bytes]:
        return self.path.read_bytes().splitlines(keepends=True)

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines()]

    def write(self, lines: list[bytes]) -> None:
        self.path.write_bytes(b"".join(lines))

    def checkpoint_lines(self) -> list[int]:
        """Indexes of the in-trail checkpoint records."""
        return [i for i, r in enumerate(self.records()) if r["event"] == "checkpoint"]


def record(n: int) -> dict[str, Any]:
    return {
        "v": 1,
        "id": f"call{n}/call",
        "call_id": f"call{n}",
        "event": "call",
        "outcome": "verified" if n % 3 else "transient",
        "query": f"What is {n} + {n}?",
        "verified": n % 3 != 0,
        "value": str(2 * n),
    }


def build(tmp_path: Path, kind: str) -> Trail:
    (tmp_path / "elsewhere").mkdir()
    anchor = tmp_path / "elsewhere" / "audit.anchor"
    key = Key(KEY.encode(), KEY_ENV)
    sink: JsonlSink | SqliteSink
    if kind == "sqlite":
        path = tmp_path / "audit.db"
        sink = SqliteSink(path, key=key, checkpoint_every=5, fsync="none", anchor=anchor)
    elif kind == "rotated":
        path = tmp_path / "audit.jsonl"
        sink = JsonlSink(
            path, key=key, checkpoint_every=5, fsync="none", anchor=anchor, rotate_bytes=1500
        )
    else:
        path = tmp_path / "audit.jsonl"
        sink = JsonlSink(path, key=key, checkpoint_every=5, fsync="none", anchor=anchor)
    for n in range(1, 18):
        sink.append([record(n)])
    sink.close()
    return Trail(path, anchor, kind)


def reseal(records: list[dict[str, Any]], *, sign: Key | None = None) -> list[bytes]:
    """Recompute every hash, as a forger can; without the key no `sig` survives."""
    head, out, new_hash = GENESIS, [], {}
    for item in records:
        body = {k: v for k, v in item.items() if k not in ("hash", "sig")}
        if body["event"] == "checkpoint":  # a thorough forger repoints checkpoints too
            body["covers_hash"] = new_hash[body["covers_seq"]]
        line, head = seal(body, body["seq"], head, sign)
        new_hash[body["seq"]] = head
        out.append(line)
    return out


def append_forged(trail: Trail, *, fake_sig: bool) -> None:
    last = trail.records()[-1]
    forged = record(99)
    if not fake_sig:
        line, _ = seal(forged, last["seq"] + 1, last["hash"])
    else:  # a well-formed record whose sig the forger made up (the hash covers it)
        forged.update(seq=last["seq"] + 1, prev_hash=last["hash"])
        forged["sig"] = "5" * 64
        forged["hash"] = chain_hash(
            last["hash"],
            canonical(record(99) | {"seq": forged["seq"], "prev_hash": forged["prev_hash"]}),
            forged["sig"],
        )
        line = orjson.dumps(forged) + b"\n"
    with trail.path.open("ab") as handle:
        handle.write(line)


# -- the attacks -----------------------------------------------------------------------------


def flip_byte(t: Trail) -> None:
    data = bytearray(t.path.read_bytes())
    data[data.index(b"What is 4")] ^= 0x01
    t.path.write_bytes(bytes(data))


def delete_middle_record(t: Trail) -> None:
    lines = t.lines()
    del lines[7]
    t.write(lines)


def swap_records(t: Trail) -> None:
    lines = t.lines()
    lines[3], lines[4] = lines[4], lines[3]
    t.write(lines)


def duplicate_record(t: Trail) -> None:
    lines = t.lines()
    lines.insert(5, lines[4])
    t.write(lines)


def cut_tail(t: Trail) -> None:
    t.write(t.lines()[:-2])


def cut_to_checkpoint_and_checkpoints(t: Trail) -> None:
    keep = t.checkpoint_lines()[-2]
    records = t.records()
    t.write(t.lines()[: keep + 1])
    kept_seq = records[keep]["seq"]
    entries = [
        e for e in t.checkpoints.read_text().splitlines() if json.loads(e)["seq"] <= kept_seq
    ]
    t.checkpoints.write_text("".join(e + "\n" for e in entries))


def cut_to_checkpoint_delete_checkpoints(t: Trail) -> None:
    keep = t.checkpoint_lines()[-2]
    t.write(t.lines()[: keep + 1])
    t.checkpoints.unlink()


def delete_checkpoint_file(t: Trail) -> None:
    t.checkpoints.unlink()


def remove_checkpoint_entry(t: Trail) -> None:
    entries = t.checkpoints.read_text().splitlines(keepends=True)
    del entries[1]
    t.checkpoints.write_text("".join(entries))


def edit_checkpoint_entry(t: Trail) -> None:
    entries = [json.loads(e) for e in t.checkpoints.read_text().splitlines()]
    entries[0]["hash"] = "f" * 64
    t.checkpoints.write_text("".join(json.dumps(e) + "\n" for e in entries))


def append_unsigned_record(t: Trail) -> None:
    append_forged(t, fake_sig=False)


def append_record_with_made_up_sig(t: Trail) -> None:
    append_forged(t, fake_sig=True)


def rewrite_chain(t: Trail) -> None:
    records = t.records()
    records[6]["value"] = "1000000"
    new = reseal(records)
    t.write(new)
    hashes = {orjson.loads(line)["seq"]: orjson.loads(line)["hash"] for line in new}
    entries = [json.loads(e) for e in t.checkpoints.read_text().splitlines()]
    for entry in entries:
        entry["hash"] = hashes[entry["seq"]]
    t.checkpoints.write_text("".join(json.dumps(e) + "\n" for e in entries))


def rewrite_chain_and_anchor(t: Trail) -> None:
    rewrite_chain(t)
    t.anchor.write_bytes(t.checkpoints.read_bytes())


def delete_oldest_records(t: Trail) -> None:
    t.write(t.lines()[3:])


def delete_oldest_with_forged_prune(t: Trail) -> None:
    records = t.records()
    kept = records[3:]
    last = records[-1]
    prune = {
        "v": 1,
        "id": f"prune/{kept[0]['seq']}",
        "event": "prune",
        "first_seq": kept[0]["seq"],
        "first_prev_hash": kept[0]["prev_hash"],
        "files": ["audit.000000000003.jsonl"],
    }
    line, _ = seal(prune, last["seq"] + 1, last["hash"])
    t.write([*t.lines()[3:], line])


def strip_a_signature(t: Trail) -> None:
    lines = t.lines()
    item = orjson.loads(lines[5])
    del item["sig"]
    lines[5] = orjson.dumps(item) + b"\n"
    t.write(lines)


def empty_the_trail(t: Trail) -> None:
    t.path.write_bytes(b"")


def delete_the_trail(t: Trail) -> None:
    t.path.unlink()


def torn_final_line(t: Trail) -> None:
    # What a crash mid-write leaves: not an attack, the control case.
    with t.path.open("ab") as handle:
        handle.write(b'{"v":1,"event":"call","id":"half')


def garbage_line(t: Trail) -> None:
    with t.path.open("ab") as handle:
        handle.write(b"not json at all\n")


def huge_integer(t: Trail) -> None:
    lines = t.lines()
    lines[4] = lines[4].replace(b'"v":1,', b'"n":9007199254740993,"v":1,', 1)
    t.write(lines)


def non_ascii_field(t: Trail) -> None:
    lines = t.lines()
    lines[4] = lines[4].replace(b'"v":1,', '"ключ":"значение","v":1,'.encode(), 1)
    t.write(lines)


def wrong_key(t: Trail) -> None:
    """Nothing changed: the auditor holds another key."""


def edit_anchor(t: Trail) -> None:
    entries = [json.loads(e) for e in t.anchor.read_text().splitlines()]
    entries[-1]["hash"] = "e" * 64
    t.anchor.write_text("".join(json.dumps(e) + "\n" for e in entries))


def untouched(t: Trail) -> None:
    """The control case: nothing changed."""


def sqlite_edit_outcome_column(t: Trail) -> None:
    with sqlite3.connect(t.path) as conn:
        conn.execute("UPDATE audit_records SET outcome = 'verified' WHERE seq = 4")


def sqlite_edit_record_and_columns(t: Trail) -> None:
    with sqlite3.connect(t.path) as conn:
        (text,) = conn.execute("SELECT record FROM audit_records WHERE seq = 4").fetchone()
        item = json.loads(text)
        item["outcome"] = "verified"
        conn.execute(
            "UPDATE audit_records SET record = ?, outcome = 'verified' WHERE seq = 4",
            (json.dumps(item),),
        )


def sqlite_delete_oldest_rows(t: Trail) -> None:
    with sqlite3.connect(t.path) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq <= 3")


def sqlite_delete_newest_rows(t: Trail) -> None:
    with sqlite3.connect(t.path) as conn:
        conn.execute(
            "DELETE FROM audit_records WHERE seq >= (SELECT MAX(seq) - 1 FROM audit_records)"
        )


def sqlite_insert_forged_row(t: Trail) -> None:
    with sqlite3.connect(t.path) as conn:
        seq, digest = conn.execute(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        forged = record(99)
        line, new_hash = seal(forged, seq + 1, digest)
        conn.execute(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                seq + 1,
                "",
                forged["call_id"],
                "call",
                forged["outcome"],
                new_hash,
                line[:-1].decode(),
            ),
        )


def sqlite_delete_checkpoints(t: Trail) -> None:
    t.checkpoints.unlink()


def rotated_delete_middle_file(t: Trail) -> None:
    rotated = sorted(t.path.parent.glob("audit.0*.jsonl"))
    rotated[1].unlink()


def rotated_delete_oldest_file(t: Trail) -> None:
    rotated = sorted(t.path.parent.glob("audit.0*.jsonl"))
    rotated[0].unlink()


def rotated_remove_active_file(t: Trail) -> None:
    t.path.unlink()


def rotated_delete_active_file(t: Trail) -> None:
    # Only the active file goes: the rotated files remain, their chain intact.
    t.path.write_bytes(b"")


@dataclass(frozen=True)
class Attack:
    name: str
    kind: str
    run: Callable[[Trail], None]
    with_key: tuple[int, str]
    """Exit code and problem kind (`ok` for exit 0) with --key-env."""
    without_key: tuple[int, str]
    anchor: bool = True
    """Whether the auditor passes --anchor."""
    key_env: str = KEY_ENV
    notes: tuple[str, ...] = field(default=())
    """Text the with-key output must contain."""


T, OK = "TAMPERED", "ok"
ATTACKS = [
    Attack("untouched trail (control)", "jsonl", untouched, (0, OK), (0, OK)),
    Attack("flip one byte of a record", "jsonl", flip_byte, (1, "edited"), (1, "edited")),
    Attack(
        "delete a record mid-trail", "jsonl", delete_middle_record, (1, "missing"), (1, "missing")
    ),
    Attack("swap two records", "jsonl", swap_records, (1, "reordered"), (1, "reordered")),
    Attack("duplicate a record", "jsonl", duplicate_record, (1, "reordered"), (1, "reordered")),
    Attack("cut the tail", "jsonl", cut_tail, (1, "truncated"), (1, "truncated")),
    Attack(
        "cut back to a checkpoint, cut .checkpoints to match",
        "jsonl",
        cut_to_checkpoint_and_checkpoints,
        (1, "truncated"),
        (1, "truncated"),
    ),
    Attack(
        "cut back to a checkpoint, cut .checkpoints to match, no anchor",
        "jsonl",
        cut_to_checkpoint_and_checkpoints,
        (0, OK),
        (0, OK),
        anchor=False,
    ),
    Attack(
        "cut back to a checkpoint, delete .checkpoints",
        "jsonl",
        cut_to_checkpoint_delete_checkpoints,
        (1, "truncated"),
        (1, "truncated"),
        anchor=False,
    ),
    Attack(
        "delete .checkpoints",
        "jsonl",
        delete_checkpoint_file,
        (1, "truncated"),
        (1, "truncated"),
        anchor=False,
    ),
    Attack(
        "remove one .checkpoints entry",
        "jsonl",
        remove_checkpoint_entry,
        (1, "bad_checkpoint"),
        (1, "bad_checkpoint"),
    ),
    Attack(
        "edit a .checkpoints entry",
        "jsonl",
        edit_checkpoint_entry,
        (1, "bad_checkpoint"),
        (1, "bad_checkpoint"),
    ),
    Attack("append an unsigned record", "jsonl", append_unsigned_record, (1, "forged"), (0, OK)),
    Attack(
        "append a record with a made-up sig",
        "jsonl",
        append_record_with_made_up_sig,
        (1, "forged"),
        (0, OK),
        notes=("its signature does not verify",),
    ),
    Attack(
        "edit a record, rehash the chain and .checkpoints",
        "jsonl",
        rewrite_chain,
        (1, "forged"),
        (1, "bad_checkpoint"),
    ),
    Attack(
        "edit a record, rehash the chain, .checkpoints and the anchor",
        "jsonl",
        rewrite_chain_and_anchor,
        (1, "forged"),
        (0, OK),
    ),
    Attack(
        "delete the oldest records", "jsonl", delete_oldest_records, (1, "missing"), (1, "missing")
    ),
    Attack(
        "delete the oldest records, append a forged prune record",
        "jsonl",
        delete_oldest_with_forged_prune,
        (1, "forged"),
        (0, OK),
    ),
    Attack("strip one record's sig", "jsonl", strip_a_signature, (1, "edited"), (1, "edited")),
    Attack("empty the trail file", "jsonl", empty_the_trail, (1, "truncated"), (1, "truncated")),
    Attack("delete the trail file", "jsonl", delete_the_trail, (1, "truncated"), (1, "truncated")),
    Attack("torn final line (a crash, control)", "jsonl", torn_final_line, (0, OK), (0, OK)),
    Attack("append a line that is not JSON", "jsonl", garbage_line, (1, "edited"), (1, "edited")),
    Attack("insert an integer past 2**53", "jsonl", huge_integer, (1, "edited"), (1, "edited")),
    Attack("insert a non-ASCII field", "jsonl", non_ascii_field, (1, "edited"), (1, "edited")),
    Attack(
        "verify with another key",
        "jsonl",
        wrong_key,
        (1, "bad_checkpoint"),
        (0, OK),
        key_env=OTHER_ENV,
    ),
    Attack("edit the anchor", "jsonl", edit_anchor, (1, "bad_checkpoint"), (1, "bad_checkpoint")),
    Attack("untouched SQLite trail (control)", "sqlite", untouched, (0, OK), (0, OK)),
    Attack(
        "SQLite: edit only the outcome column",
        "sqlite",
        sqlite_edit_outcome_column,
        (1, "edited"),
        (1, "edited"),
    ),
    Attack(
        "SQLite: edit the record and its column",
        "sqlite",
        sqlite_edit_record_and_columns,
        (1, "edited"),
        (1, "edited"),
    ),
    Attack(
        "SQLite: delete the oldest rows",
        "sqlite",
        sqlite_delete_oldest_rows,
        (1, "missing"),
        (1, "missing"),
    ),
    Attack(
        "SQLite: delete the newest rows",
        "sqlite",
        sqlite_delete_newest_rows,
        (1, "truncated"),
        (1, "truncated"),
    ),
    Attack(
        "SQLite: insert a forged row", "sqlite", sqlite_insert_forged_row, (1, "forged"), (0, OK)
    ),
    Attack(
        "SQLite: delete .checkpoints",
        "sqlite",
        sqlite_delete_checkpoints,
        (1, "truncated"),
        (1, "truncated"),
        anchor=False,
    ),
    Attack("untouched rotated trail (control)", "rotated", untouched, (0, OK), (0, OK)),
    Attack(
        "rotated: delete a middle file",
        "rotated",
        rotated_delete_middle_file,
        (1, "missing"),
        (1, "missing"),
    ),
    Attack(
        "rotated: delete the oldest file",
        "rotated",
        rotated_delete_oldest_file,
        (1, "missing"),
        (1, "missing"),
    ),
    Attack(
        "rotated: delete the active file",
        "rotated",
        rotated_remove_active_file,
        (1, "truncated"),
        (1, "truncated"),
    ),
    Attack(
        "rotated: empty the active file",
        "rotated",
        rotated_delete_active_file,
        (1, "truncated"),
        (1, "truncated"),
    ),
]

_VERDICT = re.compile(r"^TAMPERED [^:]+: (?:seq \d+|trail) (\w+): ")


def verdict(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out = capsys.readouterr()
    text = out.out + out.err
    if code == 0:
        assert text.startswith("OK "), text
        return code, OK, text
    match = _VERDICT.match(text)
    assert match is not None, text
    return code, match.group(1), text


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(
    attack: Attack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_clock: Any,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(OTHER_ENV, "another-attack-key-0123456789")
    trail = build(tmp_path, attack.kind)
    attack.run(trail)
    argv = ["verify", str(trail.path)]
    if attack.anchor:
        argv += ["--anchor", str(trail.anchor)]
    code, kind, text = verdict(capsys, [*argv, "--key-env", attack.key_env])
    assert (code, kind) == attack.with_key, text
    for note in attack.notes:
        assert note in text
    code, kind, text = verdict(capsys, argv)
    assert (code, kind) == attack.without_key, text
    if code == 0:
        # Without the key the verdict says what it could not check.
        assert "not checked without the key" in text and "record signatures" in text


def test_the_suite_is_large_enough() -> None:
    attacks = [a for a in ATTACKS if "control" not in a.name]
    assert len(attacks) >= 25


def test_readme_lists_every_attack() -> None:
    readme = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    for attack in ATTACKS:
        row = next(
            (line for line in readme.splitlines() if line.startswith(f"| {attack.name} |")), None
        )
        assert row is not None, attack.name
        cells = [c.strip() for c in row.strip("|").split("|")]

        def shown(result: tuple[int, str]) -> str:
            return "OK (0)" if result[0] == 0 else f"{result[1]} ({result[0]})"

        assert cells[1:3] == [shown(attack.with_key), shown(attack.without_key)], row
