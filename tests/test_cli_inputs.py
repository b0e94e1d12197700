"""Bad input to `audit verify|show|stats` and `policy check`: exit 0 OK, 1 TAMPERED, 2 usage or
unreadable input, always one clear line and never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qwed_guard.audit import JsonlSink
from qwed_guard.audit.record import GENESIS

BIN = Path(sys.executable).parent / "qwed-guard"


def run(*argv: str, cwd: Path | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [str(BIN), *argv], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    return done.returncode, output


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def raw_record(path: Path, extra: bytes) -> None:
    path.write_bytes(
        b'{"v":1,"event":"call","id":"x",'
        + extra
        + b'"seq":1,"prev_hash":"'
        + GENESIS.encode()
        + b'","hash":"'
        + b"0" * 64
        + b'"}\n'
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (b'"n":9007199254740993,', "holds a value no audit record can hold"),
        ('"query":"héllo ☃",'.encode(), "the content does not match its hash"),
        ('"ключ":"v",'.encode(), "the content does not match its hash"),
        (b'"q":"\\ud800",', "is not valid JSON"),
    ],
    ids=["over-2**53", "non-ascii-value", "non-ascii-key", "lone-surrogate"],
)
def test_strange_values_in_a_record_are_a_verdict(
    tmp_path: Path, extra: bytes, expected: str
) -> None:
    path = tmp_path / "audit.jsonl"
    raw_record(path, extra)
    code, output = run("audit", "verify", str(path))
    assert code == 1 and one_line(output).startswith("TAMPERED ") and expected in output
    for command in ("show", "stats"):
        code, output = run("audit", command, str(path))
        assert code == 0, output


def test_sqlite_files_that_are_not_trails_exit_2(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    for path, why in ((other, "no such table: audit_records"), (broken, "not a database")):
        for command in ("verify", "show", "stats"):
            code, output = run("audit", command, str(path))
            assert code == 2 and "not an SQLite audit trail" in one_line(output), output
            assert why in output


def test_fifos_devices_and_directories_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "trail.jsonl"
    os.mkfifo(fifo)
    for path, kind in (
        (fifo, "a FIFO"),
        (Path("/dev/zero"), "a device"),
        (tmp_path, "a directory"),
    ):
        for command in ("verify", "show", "stats"):
            code, output = run("audit", command, str(path))
            assert code == 2 and kind in one_line(output), output


def test_usage_errors_and_missing_files_exit_2(tmp_path: Path) -> None:
    code, output = run("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such file" in one_line(output)
    code, output = run("audit", "show", str(tmp_path), "--limit", "-3")
    assert code == 2 and "--limit" in output
    code, output = run("audit", "verify")
    assert code == 2


def test_a_postgres_url_without_psycopg_exits_2_with_one_line() -> None:
    script = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from qwed_guard.audit.cli import main\n"
        "sys.exit(main(['audit', sys.argv[1], 'postgresql://auditor:CANARYpg@127.0.0.1:1/db']))\n"
    )
    for command in ("verify", "show", "stats"):
        done = subprocess.run(
            [sys.executable, "-c", script, command], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert one_line(done.stderr).endswith("needs psycopg: pip install 'qwed-guard[fleet]'")
        assert "CANARYpg" not in done.stderr + done.stdout


def test_policy_check_gives_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    surrogate = tmp_path / "p.json"
    surrogate.write_text('{"fallback": {"value": "\\ud800"}}')
    code, output = run("policy", "check", str(surrogate))
    assert code == 2 and "fallback.value holds a lone surrogate" in one_line(output)
    toml = tmp_path / "p.toml"
    toml.write_bytes(b'[fallback]\nvalue = "\xed\xa0\x80"\n')  # a surrogate encoded as UTF-8
    code, output = run("policy", "check", str(toml))
    assert code == 2 and "not valid TOML" in one_line(output)


def test_show_limit_streams_the_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync="none", batch_size=1000)
    pad = "p" * 300
    for start in range(0, 60_000, 1000):
        sink.append(
            [
                {"v": 1, "event": "call", "id": f"r{n}", "pad": pad}
                for n in range(start, start + 1000)
            ]
        )
    sink.close()
    assert path.stat().st_size > 20_000_000
    small = tmp_path / "small.jsonl"
    JsonlSink(small, fsync="none").append([{"v": 1, "event": "call", "id": "r0"}])

    def peak(trail: Path) -> tuple[int, str]:
        code = (
            "import resource, sys\n"
            "from qwed_guard.audit.cli import main\n"
            "code = main(['audit', 'show', sys.argv[1], '--limit', '5'])\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(code)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(trail)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.rsplit("PEAK", 1)[1]), done.stdout

    baseline, _ = peak(small)
    streamed, shown = peak(path)
    table = shown.split("PEAK")[0]
    assert "5 records" in table and "60000" in table and "59996" in table
    assert "59995" not in table  # only the last five
    # Holding the 60,000 parsed records would take well over 100 MB; streaming holds five.
    assert streamed - baseline < 40_000, (baseline, streamed)
