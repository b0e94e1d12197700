"""The README's quickstart runs as written, against the simulator."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from qwed_guard.sim import SimulatedLLM

README = Path(__file__).resolve().parent.parent / "README.md"


def _quickstart_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the quickstart has a python block"
    return match.group(1)


def test_quickstart_runs_and_prints_what_it_says() -> None:
    code = _quickstart_code()
    assert "http://127.0.0.1:8000/v1" in code
    with SimulatedLLM() as llm:
        code = code.replace("http://127.0.0.1:8000/v1", llm.base_url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == "100 verified 1"
