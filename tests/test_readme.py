"""The README's examples run as written, against the simulator."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from qwed_guard.alerts import flush
from qwed_guard.audit.sinks import close_all
from qwed_guard.sim import SimulatedLLM

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    flush(5.0)
    close_all()
    return out.getvalue()


def test_quickstart_runs_and_prints_what_it_says() -> None:
    quickstart = BLOCKS[0]
    assert "http://127.0.0.1:8000/v1" in quickstart
    with SimulatedLLM() as llm:
        out = _run(quickstart.replace("http://127.0.0.1:8000/v1", llm.base_url))
    assert out.strip() == "100 verified 1"


SELF_CONTAINED = [block for block in BLOCKS if "SimulatedLLM(" in block or "asyncio.run(" in block]


@pytest.mark.parametrize(
    "code", SELF_CONTAINED, ids=[f"block{i}" for i in range(len(SELF_CONTAINED))]
)
def test_self_contained_examples_run(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # examples write audit.jsonl and the like
    out = _run(code)
    # Where an example says what it prints (`print(...)  # expected`), it prints exactly that.
    expected = [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line and "..." not in line.split("#", 1)[1]
    ]
    printed = [line.strip() for line in out.splitlines() if line.strip()]
    for claim in expected:
        assert claim in printed, f"the README says {claim!r}; the example printed {printed}"


def test_every_block_that_can_run_is_covered() -> None:
    # The rest need a real server on a fixed port or a real Redis, and show configuration only.
    assert len(SELF_CONTAINED) >= 7
