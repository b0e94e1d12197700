"""`qwed-guard demo --client hosted`: the production stack around QWED's own API server.

The demo starts the server the `qwed` wheel ships next to the simulator; each call asks the
simulator for a translation and has the server check the claim. One run of 20 flaky questions
is shared by the checks below (the server's start takes a few seconds).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from qwed_guard import clock
from qwed_guard.cli import main
from qwed_guard.demo import DemoError, _claim, run_demo


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    rows: dict[str, str]
    waits: list[float]


def table_rows(out: str) -> dict[str, str]:
    """The summary table's rows (a value wrapped over several lines is joined)."""
    rows: dict[str, str] = {}
    last = ""
    for line in out.splitlines():
        cells = line.split("│")
        if len(cells) != 4:
            continue
        name, value = cells[1].strip(), cells[2].strip()
        if name:
            rows[name] = value
            last = name
        elif last:
            rows[last] = f"{rows[last]} {value}"
    return rows


@pytest.fixture(scope="module")
def hosted_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    trail = tmp_path_factory.mktemp("demo-hosted") / "demo.audit.jsonl"
    capture = pytest.MonkeyPatch()
    capture.setenv("COLUMNS", "160")  # one table row a line
    # The retry layer's waits (1 s, 2 s) are recorded, not slept; the calls are real.
    fake = clock.FakeClock()
    previous = clock.install(fake)
    try:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(
                [
                    "demo",
                    "--client",
                    "hosted",
                    "--n",
                    "20",
                    "--profile",
                    "flaky",
                    "--seed",
                    "7",
                    "--audit",
                    str(trail),
                ]
            )
    finally:
        clock.install(previous)
        capture.undo()
    return Run(code, out.getvalue(), err.getvalue(), table_rows(out.getvalue()), fake.waits)


def test_the_summary_adds_up(hosted_run: Run) -> None:
    assert hosted_run.code == 0, hosted_run.err
    rows = hosted_run.rows
    assert "20 questions (hosted, simulator, profile flaky, seed 7)" in hosted_run.out
    assert re.fullmatch(r"hosted, http://127\.0\.0\.1:\d+", rows["client"])
    calls, verified, fallback = (int(rows[name]) for name in ("calls", "verified", "fallback"))
    assert calls == 20
    assert verified + fallback == calls
    assert verified > 0
    fallbacks = sum(int(v) for k, v in rows.items() if k.startswith("fallback reason: "))
    assert fallbacks == fallback
    # Flaky: 5xx and 429 from the LLM, wrong claims the server refutes - all asked again.
    assert int(rows["retries"]) > 0
    assert len(hosted_run.waits) >= int(rows["retries"])  # each retry waited (on the fake clock)
    assert float(rows["attempts per call"]) > 1.0
    assert "LLM requests per call" in rows


def test_verified_answers_carry_the_servers_attestation(hosted_run: Run) -> None:
    found = re.fullmatch(r"(\d+) of (\d+) verified", hosted_run.rows["attested answers"])
    assert found is not None
    attested, of = found.groups()
    assert int(of) == int(hosted_run.rows["verified"])
    assert 0 < int(attested) <= int(of)


def test_the_audit_trail_verifies(hosted_run: Run) -> None:
    assert hosted_run.rows["audit verify"].startswith("OK ")
    trail = Path(hosted_run.rows["audit trail"].replace(" ", ""))
    assert main(["audit", "verify", str(trail)]) == 0


def test_no_key_or_secret_of_the_server_is_shown(hosted_run: Run) -> None:
    text = hosted_run.out + hosted_run.err
    assert "qwed_" not in text.lower().replace("qwed_guard", "")  # QWED API keys: qwed_live_...
    assert not re.search(r"\b[0-9a-f]{64}\b", text)  # the server's random secrets
    assert not re.search(r"eyJ[\w-]{10,}\.", text)  # no JWT (access token, attestation)
    assert "Traceback" not in text


def test_base_url_with_the_hosted_client_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["demo", "--client", "hosted", "--base-url", "http://127.0.0.1:9/v1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "qwed-guard demo: error: --base-url cannot be used with --client hosted "
        "(it runs the simulator)"
    )
    with pytest.raises(DemoError, match="at most 8"):
        run_demo(client="hosted", concurrency=20, progress=False)
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--client", "remote"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("content", "claim"),
    [
        ('{"expression": "2 + 2", "claimed_answer": 4}', "2 + 2 = 4"),
        ('```json\n{"expression": "10/100*52", "claimed_answer": 5.2}\n```', "10/100*52 = 5.2"),
        ('{"expression": "2 + 2", "claimed_', None),  # cut off mid-JSON
        ('{"expression": "", "claimed_answer": 4}', None),
        ('{"expression": "2", "claimed_answer": null}', None),
        ("[1, 2]", None),
        (None, None),
    ],
)
def test_the_claim_read_from_the_translation(content: str | None, claim: str | None) -> None:
    assert _claim(content) == claim
