"""`qwed-guard policy check FILE`: describe() and exit 0, or every problem and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qwed_guard.policy import Policy
from qwed_guard.policy.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_a_valid_file_prints_the_stack_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[retry]\nmax_tries = 4\n\n[fallback]\nvalue = 100.0\n")
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    policy = Policy.from_file(path)
    assert out == f"{policy.describe()}\nhash: {policy.hash}\n"
    assert "1. fallback(value=100.0)" in out and "2. retry(max_tries=4" in out


def test_an_invalid_file_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "retry:\n  max_tries: 0\n  bse: 1\nfallback: {value: 1}\norder: [retry, fallback]\n"
    )
    assert main(["policy", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"{path}: invalid policy (3 problems):"
    assert len(lines) == 4
    assert lines[1].startswith("  retry.bse: unknown key 'bse'; did you mean 'base'? (known: ")
    assert lines[2:] == [
        "  retry.max_tries: must be >= 1, got 0",
        "  order: fallback inside retry turns every failure into a result first: retry never "
        "sees a failure, so it never retries (set allow_unusual_order: true to use it anyway)",
    ]


def test_unreadable_and_unparsable_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "check", str(tmp_path / "missing.toml")]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["policy", "check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "missing.toml: cannot read the file" in err
    assert "broken.json: not valid JSON" in err


def test_the_command_runs_as_a_program() -> None:
    example = REPO / "examples" / "production.toml"
    ok = subprocess.run(
        [sys.executable, "-m", "qwed_guard.policy", "check", str(example)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("policy sha256:")
    bad = subprocess.run(
        [sys.executable, "-m", "qwed_guard.policy", "check", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "unknown key 'build-system'" in bad.stderr
    assert "Traceback" not in bad.stderr
