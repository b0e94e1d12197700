"""Options declared once: the one validator, the typed decorators and the policy JSON Schema."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwed_guard import Policy, alert_on_failures, audited, circuit_breaker, fallback, retry
from qwed_guard.errors import ParameterError, ParameterTypeError
from qwed_guard.options import declared, describe
from qwed_guard.policy import json_schema
from qwed_guard.policy._schema import schema_text
from qwed_guard.policy.cli import main as policy_main
from qwed_guard.retry import RetryLayer, RetryOptions
from qwed_guard.timeout import AttemptTimeoutLayer, TimeoutOptions, attempt_timeout

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "docs" / "policy.schema.json"


# -- the one validator ---------------------------------------------------------------------------


def test_a_decorator_reports_every_bad_option_at_once() -> None:
    with pytest.raises(ParameterError) as caught:
        retry(max_tries=0, base=-1, retry_on=["permanent"])
    error = caught.value
    assert error.param == "max_tries"
    assert error.errors == (
        "max_tries: must be >= 1, got 0",
        "base: must be >= 0 and <= 3600, got -1",
        "retry_on: permanent outcomes are never retried "
        "(choose from refuted, transient, unverifiable)",
    )
    assert str(error).splitlines()[0] == "max_tries: must be >= 1, got 0"
    assert all(line.strip() in str(error) for line in error.errors)


def test_a_single_problem_keeps_its_own_message_and_type() -> None:
    with pytest.raises(ParameterTypeError) as caught:
        circuit_breaker(recovery_timeout="30s")  # type: ignore[arg-type]
    assert str(caught.value) == "recovery_timeout: must be a number of seconds, got str"
    assert caught.value.errors == (str(caught.value),)


def test_relations_are_checked_once_each_option_is_valid() -> None:
    with pytest.raises(ParameterError, match=r"^min_calls: must be <= rate_window \(5\), got 6$"):
        alert_on_failures(rate_threshold=0.5, rate_window=5, min_calls=6)
    with pytest.raises(ParameterError, match="give exactly one of value"):
        fallback(value=1, handler=print)
    with pytest.raises(ParameterError, match="redact_key_env: redact='hmac' needs"):
        audited(sink="memory:", redact="hmac")


def test_a_policy_reports_the_same_problems_with_dotted_paths() -> None:
    with pytest.raises(ParameterError) as direct:
        RetryOptions(max_tries=0, jitter=3)  # type: ignore[arg-type]
    with pytest.raises(Exception) as policy:
        Policy.from_dict({"retry": {"max_tries": 0, "jitter": 3}})
    assert list(policy.value.errors) == [f"retry.{line}" for line in direct.value.errors]  # type: ignore[attr-defined]


def test_layers_take_their_options_made_or_as_keywords() -> None:
    options = RetryOptions(max_tries=4, base=0.5)
    assert RetryLayer(options).schedule() == RetryLayer(max_tries=4, base=0.5).schedule()
    assert AttemptTimeoutLayer(TimeoutOptions(2)).seconds == AttemptTimeoutLayer(2).seconds == 2.0
    with pytest.raises(TypeError, match="not both"):
        RetryLayer(options, max_tries=2)
    with pytest.raises(TypeError, match="max_trys"):
        RetryLayer(max_trys=2)
    # Introspection shows the declared options, not **params.
    assert list(inspect.signature(RetryLayer).parameters) == ["options", *declared(RetryOptions)]
    assert list(inspect.signature(retry).parameters) == list(declared(RetryOptions))
    assert retry.__doc__ is not None and retry.__doc__.startswith("Retry a verification")


def test_describe_reads_the_declaration() -> None:
    assert describe("attempt_timeout", TimeoutOptions(2.5)) == "attempt_timeout(seconds=2.5)"
    assert describe("retry", RetryOptions(max_tries=5, jitter=None)) == "retry(max_tries=5)"
    layer = attempt_timeout(0.25).layer
    assert layer.describe() == "attempt_timeout(seconds=0.25)"


# -- the decorators' keyword parameters are type-checked -----------------------------------------

GOOD = """
from qwed_guard import alert_on_failures, audited, circuit_breaker, fallback, retry
from qwed_guard.fallback import GuardedResult
from qwed_guard.timeout import attempt_timeout

@retry
def bare(query: str) -> int:
    return 1

@audited(sink="memory:", fsync="batch")
@fallback(value=0)
@alert_on_failures(threshold=3, notify=["log"])
@retry(max_tries=3, base=0.5, jitter=None)
@circuit_breaker(failure_rate=0.5, window=10)
@attempt_timeout(5)
async def full(query: str) -> int:
    return 1

answer: int = bare("q")


async def main() -> GuardedResult:
    return await full("q")
"""

BAD = """
from qwed_guard import circuit_breaker, retry
from qwed_guard.timeout import attempt_timeout

@retry(max_trys=3)  # error
def a(query: str) -> int:
    return 1

@retry(max_tries="3")  # error
def b(query: str) -> int:
    return 1

@circuit_breaker(window=2.5)  # error
def c(query: str) -> int:
    return 1

@attempt_timeout("10")  # error
async def d(query: str) -> int:
    return 1

@retry
def e(query: str) -> int:
    return 1

wrong: str = e("q")  # error
"""


def test_mypy_checks_the_decorators_keyword_parameters(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MYPYPATH": str(REPO)}
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    # One run for both files: the good one must add no error, the bad one exactly these.
    run = subprocess.run(
        [*command, "good.py", "bad.py"], cwd=tmp_path, env=env, capture_output=True
    )
    lines = run.stdout.decode().splitlines()
    assert not [line for line in lines if line.startswith("good.py")], "\n".join(lines)
    errors = {
        int(line.split(":")[1])
        for line in lines
        if line.startswith("bad.py:") and ": error:" in line
    }
    expected = {n for n, line in enumerate(BAD.splitlines(), 1) if line.endswith("# error")}
    assert errors == expected, "\n".join(lines)
    assert 'did you mean "max_tries"' in run.stdout.decode()


# -- the JSON Schema of policy files -------------------------------------------------------------


def test_the_published_schema_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "docs/policy.schema.json is stale: qwed-guard policy schema > docs/policy.schema.json"
    )
    assert policy_main(["policy", "schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    assert json.loads(schema_text()) == json_schema()


def test_the_schema_declares_every_key_and_default() -> None:
    schema = json_schema()
    retry_keys = schema["properties"]["retry"]["properties"]
    assert list(retry_keys) == list(declared(RetryOptions))
    assert retry_keys["max_tries"] == {
        "description": "Attempts in all, the first included.",
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 3,
    }
    assert schema["properties"]["attempt_timeout"]["required"] == ["seconds"]
    defaults = Policy.from_dict({"retry": {}, "circuit_breaker": {}}).to_dict()
    for section in ("retry", "circuit_breaker"):
        keys = schema["properties"][section]["properties"]
        assert {k: v["default"] for k, v in keys.items() if "default" in v} == defaults[section]


def _fenced(language: str) -> list[tuple[str, str]]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [
        (page.name, block)
        for page in pages
        for block in re.findall(rf"```{language}\n(.*?)```", page.read_text("utf-8"), re.DOTALL)
    ]


def _literal_policies() -> list[tuple[str, Any]]:
    """The dicts the docs pass to `Policy.from_dict` as literals."""
    found = []
    for page, code in _fenced("python"):
        try:
            tree = ast.parse(textwrap.dedent(code))
        except SyntaxError:
            continue  # a fragment, not a program
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_dict"
                and node.args
            ):
                try:
                    found.append((page, ast.literal_eval(node.args[0])))
                except ValueError:
                    continue  # built from names: not a literal
    return found


def example_policies() -> list[tuple[str, Any]]:
    examples: list[tuple[str, Any]] = []
    for path in sorted((REPO / "examples").iterdir()):
        if path.suffix == ".toml":
            examples.append((path.name, tomllib.loads(path.read_text("utf-8"))))
        elif path.suffix in (".yaml", ".yml"):
            examples.append((path.name, yaml.safe_load(path.read_text("utf-8"))))
        elif path.suffix == ".json":
            examples.append((path.name, json.loads(path.read_text("utf-8"))))
    examples += [(page, tomllib.loads(block)) for page, block in _fenced("toml")]
    examples += [(page, yaml.safe_load(block)) for page, block in _fenced("yaml")]
    examples += _literal_policies()
    examples += [
        (f"preset {name}", Policy.preset(name, fallback_value=1.0).to_dict())
        for name in ("production", "dev")
    ]
    examples.append(("preset strict", Policy.preset("strict").to_dict()))
    return examples


def test_every_example_policy_is_found() -> None:
    names = {name for name, _ in EXAMPLES}
    assert {"production.toml", "strict.yaml", "verdicts.md", "policy.md"} <= names


EXAMPLES = example_policies()


@pytest.mark.parametrize(
    ("where", "data"), EXAMPLES, ids=[f"{where}-{i}" for i, (where, _) in enumerate(EXAMPLES)]
)
def test_every_example_policy_satisfies_the_schema(where: str, data: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(json_schema())
    jsonschema.validate(data, json_schema(), cls=jsonschema.Draft202012Validator)
    Policy.from_dict(data)  # and the policy loader agrees


@pytest.mark.parametrize(
    "data",
    [
        {"retry": {"max_trys": 3}},
        {"retry": {"max_tries": 0}},
        {"retry": {"jitter": "wild"}},
        {"retry": {"retry_on": ["permanent"]}},
        {"circuit_breaker": {"failure_rate": 1.5}},
        {"alert_on_failures": {"resolve": "yes"}},
        {"audited": {"fsync": "sometimes"}},
        {"attempt_timeout": {}},
        {"order": ["retry", "retry"], "retry": {}},
        {"retyr": {}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(data: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json_schema(), cls=jsonschema.Draft202012Validator)
    with pytest.raises(ValueError):
        Policy.from_dict(data)


def test_a_schema_key_is_for_editors_and_not_part_of_the_policy(tmp_path: Path) -> None:
    plain = Policy.from_dict({"retry": {"max_tries": 2}})
    pointed = Policy.from_dict({"$schema": "./policy.schema.json", "retry": {"max_tries": 2}})
    assert pointed == plain and pointed.hash == plain.hash and "$schema" not in pointed.to_dict()
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"$schema": str(SCHEMA_FILE), "retry": {"max_tries": 2}}))
    assert Policy.from_file(path) == plain
