"""The import rules of CONTRIBUTING.md, enforced.

- Every module of `qwed_guard` imports alone, in a fresh interpreter.
- The module-level import graph of `qwed_guard` has no cycle (imports inside functions and
  under `if TYPE_CHECKING:` are not edges: they run later, or never).
- No private name crosses modules in `qwed_guard/` or `benchmarks/`: no `from pkg.mod import
  _name`, no `mod._name` on another module, no private module (`policy._core`) imported from
  outside its package. Tests may reach into internals; they are not checked.
- `import qwed_guard` does not import qwed_sdk (it costs seconds).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qwed_guard"
CHECKED = (PACKAGE, ROOT / "benchmarks")
FIRST_PARTY = ("qwed_guard", "benchmarks")

# Private names allowed to cross modules: none. An entry that no longer matches anything fails
# the test, so if one is ever added the list can only shrink.
ALLOWED_PRIVATE: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(*roots: Path) -> dict[str, Path]:
    return {
        _module_name(path): path
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


MODULES = _sources(PACKAGE)
SOURCES = _sources(*CHECKED)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an `ImportFrom` in `module` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if SOURCES[module].name != "__init__.py":
        parts.pop()  # a module's relative imports start from its package
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: not those in functions or classes, nor
    under `if TYPE_CHECKING:` (its `else:` does run)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse):
                yield from _top_level_imports(block)
            yield from _top_level_imports(node.finalbody)
        elif isinstance(node, ast.With):
            yield from _top_level_imports(node.body)


def _targets(module: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The known modules an import statement loads (`from pkg import mod` loads `pkg.mod`)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = _base(module, node)
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            found.add(sub)
        elif base in known:
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the qwed_guard modules its top-level imports load."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _top_level_imports(tree.body):
            edges |= _targets(module, node, MODULES)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or None (a depth-first walk, in name order)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                done.add(path.pop())
            elif step in path:
                return [*path[path.index(step) :], step]
            elif step not in done:
                path.append(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_names_it() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": set(), "c": {"c2"}, "c2": {"c"}}) == ["c", "c2", "c"]


def test_the_module_level_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) == len(MODULES) > 50  # the walk found the package
    assert "qwed_guard.state.memory" in graph["qwed_guard.state"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_type_checking_and_function_imports_are_not_edges() -> None:
    source = """
from typing import TYPE_CHECKING
import qwed_guard.clock
if TYPE_CHECKING:
    from qwed_guard.context import Attempt
else:
    from qwed_guard import redact
def later():
    from qwed_guard.verdicts import diagnose
"""
    edges: set[str] = set()
    for node in _top_level_imports(ast.parse(source).body):
        edges |= _targets("qwed_guard.outcomes", node, MODULES)
    assert edges == {"qwed_guard.clock", "qwed_guard.redact"}


def _environment() -> dict[str, str]:
    env = dict(os.environ, QWED_QUIET="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# Run in a fresh interpreter: load the stdlib and third-party modules qwed_guard imports (once,
# not once per module: they are most of the time), check that no first-party module came with
# them, then fork one child per module, two at a time; each child imports its module with no
# qwed_guard module loaded before it and reports how that went.
_IMPORT_EACH = """
import importlib, json, os, sys
modules, preload = json.loads(sys.argv[1])
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # an optional dependency: the module that needs it says so below
early = sorted(m for m in sys.modules if m.split(".")[0] in ("qwed_guard", "benchmarks"))
assert not early, f"loaded before any module was imported: {early}"
errors, running = {}, {}

def reap(pid):
    module, reader = running.pop(pid)
    with os.fdopen(reader, "rb") as pipe:
        message = pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        errors[module] = message or f"exit status {status}"

for module in modules:
    if len(running) >= 2:
        reap(next(iter(running)))
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            importlib.import_module(module)
        except BaseException as error:
            os.write(writer, f"{type(error).__name__}: {error}"[:2000].encode())
            os._exit(1)
        os._exit(0)
    os.close(writer)
    running[pid] = (module, reader)
while running:
    reap(next(iter(running)))
print(json.dumps(errors))
"""


def _outside_modules() -> list[str]:
    """The stdlib and third-party modules that qwed_guard's modules import at their top."""
    names: set[str] = set()
    for path in MODULES.values():
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif not node.level and node.module:
                names.add(node.module)
    return sorted(name for name in names if name.split(".")[0] not in FIRST_PARTY)


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    payload = json.dumps([sorted(MODULES), _outside_modules()])
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, payload],
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout.splitlines()[-1])
    failed = "\n".join(f"{module}: {error}" for module, error in sorted(errors.items()))
    assert not errors, "modules that do not import alone:\n" + failed


def test_a_module_that_does_not_import_alone_is_reported(tmp_path: Path) -> None:
    # The same runner on two modules of a throwaway package that import each other's names.
    package = tmp_path / "throwaway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from throwaway.b import B\nA = 1\n")
    (package / "b.py").write_text("from throwaway.a import A\nB = 2\n")
    payload = json.dumps([["throwaway.a", "throwaway"], ["json"]])
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, payload],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout.splitlines()[-1])
    assert list(errors) == ["throwaway.a"]
    assert errors["throwaway.a"].startswith("ImportError: cannot import name 'A'")


def test_import_qwed_guard_does_not_import_qwed_sdk() -> None:
    code = (
        "import sys, qwed_guard\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'qwed_sdk')\n"
        "assert not loaded, loaded\n"
        "assert 'qwed_guard.state' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_environment(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _module_aliases(module: str, tree: ast.Module) -> dict[str, str]:
    """Local names bound to first-party modules anywhere in `tree`."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FIRST_PARTY:
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in SOURCES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def private_crossings(module: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, `module.name`) for each private name of another first-party module used here."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if base.split(".")[0] not in FIRST_PARTY:
                continue
            parts = base.split(".")
            for index, part in enumerate(parts):
                owner = ".".join(parts[:index])
                inside = module == owner or module.startswith(owner + ".")
                if _is_private(part) and not inside:
                    yield node.lineno, base
            for alias in node.names:
                if _is_private(alias.name) and base != module:
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in FIRST_PARTY and any(_is_private(p) for p in parts):
                    yield node.lineno, alias.name
    aliases = _module_aliases(module, tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain: list[str] = []
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                target = ".".join([aliases[value.id], *chain])
                if target != module:
                    yield node.lineno, f"{target}.{node.attr}"


def test_the_private_name_check_sees_imports_and_attributes() -> None:
    source = """
import qwed_guard.audit.record as rec
from qwed_guard import context
from qwed_guard.policy._core import Policy
from qwed_guard.outcomes import _hidden, scrub
import qwed_guard
def f(obj):
    obj._fine = 1
    return rec._versions, context._current, qwed_guard.audit.record._x, context.current
"""
    found = sorted(name for _, name in private_crossings("qwed_guard.demo", ast.parse(source)))
    assert found == [
        "qwed_guard.audit.record._versions",
        "qwed_guard.audit.record._x",
        "qwed_guard.context._current",
        "qwed_guard.outcomes._hidden",
        "qwed_guard.policy._core",
    ]
    # Inside its own package a private module is fine, and so are a module's own names.
    inside = "from qwed_guard.policy._core import Policy\nfrom qwed_guard.policy import _x\n"
    assert list(private_crossings("qwed_guard.policy.cli", ast.parse(inside))) == [
        (2, "qwed_guard.policy._x")
    ]


def test_no_private_name_crosses_modules() -> None:
    found: set[tuple[str, str]] = set()
    where: list[str] = []
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        relative = path.relative_to(ROOT).as_posix()
        for line, name in private_crossings(module, tree):
            found.add((relative, name))
            if (relative, name) not in ALLOWED_PRIVATE:
                where.append(f"{relative}:{line}: {name}")
    assert not where, "private names used across modules:\n" + "\n".join(sorted(where))
    stale = sorted(ALLOWED_PRIVATE - found)
    assert not stale, f"allowed but no longer used (remove from ALLOWED_PRIVATE): {stale}"


@pytest.mark.parametrize("module", ["qwed_guard.audit.__main__", "qwed_guard.policy.__main__"])
def test_a_main_module_imported_runs_nothing(module: str) -> None:
    code = f"import sys; argv = list(sys.argv); import {module}; assert sys.argv == argv"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_environment(), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
