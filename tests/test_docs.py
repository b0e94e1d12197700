"""The code samples in the README and the documentation site run as written, against the
simulator, and print what they say they print. `make docs` (part of `make test`) builds the site
with --strict, so a broken link or API reference fails there."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qwed_guard.alerts import flush
from qwed_guard.audit.sinks import close_all
from qwed_guard.sim import SimulatedLLM

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Samples written for a simulator a reader starts with `qwed-guard sim --port 8000`, and for
# Redis and PostgreSQL on their usual ports: the tests run them against private servers.
SIM_URL = "http://127.0.0.1:8000/v1"
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_HOST = "127.0.0.1:5432/qwed_guard"


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)


def _runnable(code: str) -> bool:
    # The rest need a real server on a fixed port or a real Redis, and show configuration only.
    return "SimulatedLLM(" in code or "asyncio.run(" in code or SIM_URL in code


SAMPLES = [
    (page, index, code)
    for page in PAGES
    for index, code in enumerate(_blocks(page))
    if _runnable(code) or page.name == "CONTRIBUTING.md"  # its samples are all self-contained
]


def _run(code: str, name: str) -> str:
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        if SIM_URL in code:
            llm = stack.enter_context(SimulatedLLM())
            code = code.replace(SIM_URL, llm.base_url)
        stack.enter_context(contextlib.redirect_stdout(out))
        exec(compile(code, name, "exec"), {"__name__": "sample"})
    flush(5.0)
    close_all()
    return out.getvalue()


@pytest.mark.parametrize(
    ("page", "code"),
    [(page, code) for page, _, code in SAMPLES],
    ids=[f"{page.relative_to(ROOT)}:{index}" for page, index, _ in SAMPLES],
)
def test_sample_runs_and_prints_what_it_says(
    page: Path,
    code: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)  # samples write audit.jsonl and the like
    if REDIS_URL in code:
        code = code.replace(REDIS_URL, request.getfixturevalue("redis_url"))
    if POSTGRES_HOST in code:
        server = urlsplit(request.getfixturevalue("postgres_url"))
        assert server.username == "qwed_guard" and server.password
        monkeypatch.setenv("AUDIT_PG_PASSWORD", server.password)
        code = code.replace(POSTGRES_HOST, f"127.0.0.1:{server.port}/postgres")
    out = _run(code, page.name)
    # Where a sample says what it prints (`print(...)  # expected`), it prints exactly that;
    # "e.g." and "..." mark a value that varies.
    expected = [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    printed = [line.strip() for line in out.splitlines() if line.strip()]
    for claim in expected:
        if "..." in claim or claim.startswith("e.g."):
            continue
        assert claim in printed, f"{page.name} says {claim!r}; the sample printed {printed}"


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md"])
def test_the_quickstart_prints_a_verified_answer(page: str) -> None:
    quickstart = _blocks(ROOT / page)[0]
    assert SIM_URL in quickstart
    assert _run(quickstart, page).strip() == "100 verified 1"


def test_the_samples_that_run_cover_every_pattern() -> None:
    covered = {page.relative_to(ROOT).as_posix() for page, _, _ in SAMPLES}
    for page in ("quickstart", "patterns/alerts", "patterns/audit", "policy", "fleet", "testing"):
        assert f"docs/{page}.md" in covered
    assert len(SAMPLES) >= 9


def test_the_policy_reference_lists_every_key_a_policy_has() -> None:
    import importlib.util

    from qwed_guard import Policy

    spec = importlib.util.spec_from_file_location(
        "policy_reference", ROOT / "docs" / "hooks" / "policy_reference.py"
    )
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown("before\n<!-- policy-reference -->\nafter")
    assert page.startswith("before\n") and page.endswith("\nafter")
    normalized = Policy.preset("production", fallback_value=1.0).to_dict()
    sections = {name: keys for name, keys in normalized.items() if isinstance(keys, dict)}
    assert set(sections) >= {"audited", "fallback", "alert_on_failures", "retry"}
    for name, keys in sections.items():
        table = page.split(f"### `{name}`", 1)[1].split("### ", 1)[0]
        for key in keys:
            assert f"| `{key}` |" in table, f"{name}.{key} is missing from the reference"
    assert "| `max_tries` | `int` | `3` |" in page
    assert "<!-- policy-reference -->" in (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
