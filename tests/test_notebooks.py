"""The tutorial notebooks: stored without outputs, and a broken cell fails `make notebooks`.

`make notebooks` (part of `make test`) executes every notebook with `pytest --nbmake`; these
tests check the two things that run relies on: that the notebooks in git carry no outputs (so a
pass cannot come from a stale saved result and diffs stay readable), and that an error in any
cell really fails the run.
"""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STRIP = ROOT / "scripts" / "strip_notebooks.py"


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)


def test_the_tutorials_are_there_in_reading_order() -> None:
    # The README links them in this order; each ends by pointing at the next.
    assert [path.name for path in NOTEBOOKS] == [
        "01-retry.ipynb",
        "02-fallback.ipynb",
        "03-alerts.ipynb",
        "04-audit.ipynb",
        "05-production-policy.ipynb",
        "06-hosted-client.ipynb",
    ]
    for current, following in itertools.pairwise(NOTEBOOKS):
        last = _read(current).cells[-1].source
        assert f"]({following.name})" in last, f"{current.name} should end pointing at the next"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_valid_and_stored_without_outputs(path: Path) -> None:
    notebook = _read(path)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a tutorial runs code"
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a cell has saved outputs"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    # Visible setup: the first code cell silences QWED's banners itself.
    assert 'os.environ["QWED_QUIET"] = "1"' in code[0].source


def _distribution(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_first_cell_says_how_to_install_what_the_notebook_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_distribution(r) for r in project["dependencies"]}
    declared |= {_distribution(r) for r in project["optional-dependencies"]["notebooks"]}
    providers = importlib.metadata.packages_distributions()
    for path in NOTEBOOKS:
        notebook = _read(path)
        assert notebook.cells[0].cell_type == "markdown"
        assert "pip install 'qwed-guard[notebooks]'" in notebook.cells[0].source, path.name
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        for module in set(re.findall(r"^\s*(?:import|from) (\w+)", code, re.MULTILINE)):
            if module in sys.stdlib_module_names or module == "qwed_guard":
                continue
            names = {_distribution(d) for d in providers.get(module, [module])}
            assert names & declared, f"{path.name} imports {module}: not in the notebooks extra"


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_strip_script_removes_what_a_run_adds(tmp_path: Path) -> None:
    original = NOTEBOOKS[0].read_text(encoding="utf-8")
    executed = json.loads(original)
    cell = next(c for c in executed["cells"] if c["cell_type"] == "code")
    cell["execution_count"] = 3
    cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["hello\n"]}]
    cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    target = tmp_path / NOTEBOOKS[0].name
    target.write_text(json.dumps(executed, indent=1), encoding="utf-8")

    check = _run(STRIP, "--check", tmp_path)
    assert check.returncode == 1
    assert f"not stripped: {target}" in check.stdout

    assert _run(STRIP, target).returncode == 0
    assert target.read_text(encoding="utf-8") == original
    assert _run(STRIP, "--check", target).returncode == 0


def test_a_broken_cell_fails_the_notebook_run(tmp_path: Path) -> None:
    """Run two copies of the first tutorial the way `make notebooks` does: the copy with an
    injected `raise` fails, the same copy without it passes."""
    notebook = _read(NOTEBOOKS[0])
    first_code = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
    good = copy.deepcopy(notebook)
    good.cells = good.cells[: first_code + 1]
    broken = copy.deepcopy(notebook)
    broken.cells.insert(
        first_code + 1, nbformat.v4.new_code_cell('raise RuntimeError("deliberately broken")')
    )
    for name, nb in (("good", good), ("broken", broken)):
        for index, cell in enumerate(nb.cells):
            cell.id = f"cell-{index}"
        nbformat.write(nb, tmp_path / f"{name}.ipynb")

    run = _run(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbmake",
        "--nbmake-timeout=60",
        tmp_path,
        cwd=tmp_path,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "1 failed, 1 passed" in output, output
    assert "broken.ipynb" in output
    assert "RuntimeError" in output and "deliberately broken" in output
