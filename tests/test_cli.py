"""`qwed-guard demo` and `qwed-guard sim` from the command line: results and clear errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qwed_guard.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwed_guard.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_runs_offline_and_prints_the_summary(tmp_path: Path) -> None:
    trail = str(tmp_path / "audit.jsonl")
    done = run("demo", "--n", "20", "--profile", "healthy", "--seed", "3", "--audit", trail)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout and "HTTP requests per call" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--n", "0"], "--n must be at least 1, got 0"),
        (["demo", "--profile", "chaotic"], "unknown profile 'chaotic'"),
        (["demo", "--error-5xx", "1.5"], "a rate must be in [0, 1], got 1.5"),
        (["demo", "--set", "latency=-1"], "latency"),
        (["sim", "--profile", "chaotic", "--duration", "0"], "unknown profile 'chaotic'"),
        (["sim", "--quota", "2", "--duration", "0"], "a rate must be in [0, 1], got 2"),
    ],
)
def test_bad_input_is_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(args))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_unreachable_base_url_and_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["sim", "--port", str(port), "--duration", "0"]) == 2
        assert "cannot listen on" in capsys.readouterr().err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    assert main(["demo", "--base-url", f"http://127.0.0.1:{closed}/v1", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qwed-guard demo: error: cannot reach") and len(err.splitlines()) == 1


def test_demo_on_an_outage_opens_the_breaker_alerts_and_audits(tmp_path: Path) -> None:
    trail = tmp_path / "demo.audit.jsonl"
    done = run(
        "demo",
        "--profile",
        "outage",
        "--set",
        "outage_after_requests=20",
        "--pace",
        "0",
        "--n",
        "60",
        "--audit",
        str(trail),
    )
    assert done.returncode == 0, done.stderr
    assert "sha256:" in done.stdout  # the policy in force is printed first
    rows = dict(
        (cells[1].strip(), cells[2].strip())
        for line in done.stdout.splitlines()
        if len(cells := line.split("│")) == 4
    )
    assert int(rows["circuit breaker opened"]) >= 1
    assert int(rows["short-circuited attempts"]) >= 1
    assert rows["alerts"].startswith("triggered")
    assert rows["audit verify"].startswith("OK")
    verified = run("audit", "verify", str(trail))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_python_m_qwed_guard_is_the_qwed_guard_command() -> None:
    module = subprocess.run(
        [sys.executable, "-m", "qwed_guard", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout == run("demo", "--help").stdout
    assert module.stdout.startswith("usage: qwed-guard demo")
