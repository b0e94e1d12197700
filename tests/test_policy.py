"""Policy: parsing, validation messages, files, presets, hashing and applying the stack."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qwed_guard import GuardedResult, PolicyError, VerificationFailed
from qwed_guard.clock import FakeClock
from qwed_guard.context import current
from qwed_guard.policy import CANONICAL_ORDER, Policy
from qwed_guard.policy._sections import SECTIONS as _SECTIONS

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """Stands in for QWED's VerificationResult."""

    verified: bool
    value: Any = None
    error: str | None = None
    confidence: float = 1.0


OK = Result(True, 42.0)
DOWN = Result(False, None, "LLM call failed: Error code: 503 - overloaded")
BAD_KEY = Result(False, None, "LLM call failed: Error code: 401 - Incorrect API key provided")


def problems(data: Any) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict(data)
    assert "Traceback" not in str(caught.value)
    return list(caught.value.errors)


# -- validation messages -------------------------------------------------------------------------


def test_out_of_range_number_names_its_dotted_path() -> None:
    assert problems({"retry": {"max_tries": 0}}) == ["retry.max_tries: must be >= 1, got 0"]


def test_unknown_keys_suggest_the_close_name() -> None:
    found = problems({"retyr": {}, "retry": {"max_trys": 3}})
    assert found[0].startswith("retyr: unknown key 'retyr'; did you mean 'retry'?")
    assert found[1].startswith("retry.max_trys: unknown key 'max_trys'; did you mean 'max_tries'?")


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = problems(
        {
            "retry": {"max_tries": 0, "base": -1, "factor": "fast", "colour": 1},
            "fallback": {},
            "order": ["retry", "fallbak"],
        }
    )
    text = "\n".join(found)
    for expected in (
        "retry.max_tries: must be >= 1, got 0",
        "retry.base: must be >= 0 and <= 3600, got -1",
        "retry.factor: must be a number, got str",
        "retry.colour: unknown key",
        "fallback.value: give exactly one of value=... or handler=...",
        "order[1]: unknown layer 'fallbak'; did you mean 'fallback'?",
        "order: 'fallback' has a section but is not in order",
    ):
        assert expected in text
    with pytest.raises(PolicyError, match=r"invalid policy \(7 problems\)"):
        Policy.from_dict(
            {
                "retry": {"max_tries": 0, "base": -1, "factor": "fast", "colour": 1},
                "fallback": {},
                "order": ["retry", "fallbak"],
            }
        )


def test_wrong_types_are_policy_errors() -> None:
    assert problems({"retry": {"max_tries": "3"}}) == ["retry.max_tries: must be an int, got str"]
    assert problems({"retry": [1, 2]})[0].startswith("retry: must be a table of retry's parameters")
    assert problems({"retry": {"jitter": 3}})[0].startswith("retry.jitter: must be a name")
    assert problems({"fallback": {"value": b"x"}})[0].startswith(
        "fallback.value: must be plain data"
    )
    assert problems({"fallback": {"value": float("nan")}}) == [
        "fallback.value: must be a finite number, got nan"
    ]
    assert problems({"allow_unusual_order": "yes", "retry": {}}) == [
        "allow_unusual_order: must be true or false, got 'yes'"
    ]
    assert problems(["retry"]) == ["policy: must be a table, got list"]  # type: ignore[arg-type]


def test_order_problems() -> None:
    assert problems({"retry": {}, "order": "retry"}) == [
        "order: must be a list of section names, got str"
    ]
    assert problems({"retry": {}, "order": ["retry", "retry"]}) == [
        "order[1]: 'retry' is listed twice"
    ]
    assert problems({"retry": {}, "order": ["fallback", "retry"]}) == [
        "order[0]: 'fallback' has no fallback section (add fallback: {} to enable it)"
    ]
    assert problems({"retry": {}, "order": [1]})[0] == "order[0]: must be a section name, got int"


def test_orders_that_blind_a_layer_are_refused_with_the_reason() -> None:
    fallback_inside_retry = {"retry": {}, "fallback": {"value": 0}, "order": ["retry", "fallback"]}
    (reason,) = problems(fallback_inside_retry)
    assert reason.startswith("order: fallback inside retry turns every failure into a result")
    assert "retry never sees a failure, so it never retries" in reason
    assert "allow_unusual_order: true" in reason
    policy = Policy.from_dict({**fallback_inside_retry, "allow_unusual_order": True})
    assert policy.order == ("retry", "fallback")
    assert "unusual order allowed" in policy.describe()


def test_a_section_whose_layer_module_is_missing_breaks_only_that_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qwed_guard.policy._sections import Section as _Section

    monkeypatch.setitem(_SECTIONS, "circuit_breaker", _Section("qwed_guard.no_such_mod", "X"))
    assert problems({"circuit_breaker": {}}) == [
        "circuit_breaker: not available: this qwed_guard has no qwed_guard.no_such_mod module"
    ]
    assert Policy.from_dict({"retry": {}}).order == ("retry",)


# -- data, equality, hash ------------------------------------------------------------------------


def test_defaults_are_filled_in_and_round_trip() -> None:
    policy = Policy.from_dict({"retry": {}, "fallback": {"value": 100.0}})
    data = policy.to_dict()
    assert data["retry"]["max_tries"] == 3
    assert data["retry"]["retry_on"] == ["refuted", "transient", "unverifiable"]
    assert data["order"] == ["fallback", "retry"]
    assert Policy.from_dict(data) == policy
    assert Policy.from_dict({"retry": {"max_tries": 3}, "fallback": {"value": 100.0}}) == policy
    assert json.loads(json.dumps(data)) == data


def test_to_dict_is_a_copy_and_a_policy_cannot_be_changed() -> None:
    policy = Policy.from_dict({"retry": {"max_tries": 2}})
    policy.to_dict()["retry"]["max_tries"] = 9
    assert policy.to_dict()["retry"]["max_tries"] == 2
    with pytest.raises(AttributeError, match="immutable"):
        policy._order = ("fallback",)  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_set_valued_parameters_ignore_order_and_repeats() -> None:
    a = Policy.from_dict({"retry": {"retry_on": ["transient", "refuted"]}})
    b = Policy.from_dict({"retry": {"retry_on": ["refuted", "transient", "refuted"]}})
    assert a == b and a.hash == b.hash
    assert Policy.from_dict({"retry": {"retry_on": "transient"}}).to_dict()["retry"][
        "retry_on"
    ] == ["transient"]


def test_hash_is_prefixed_sha256_and_ignores_key_order_and_int_float_spelling() -> None:
    a = Policy.from_dict(
        {"retry": {"max_tries": 3, "base": 1, "factor": 2}, "fallback": {"value": 1}}
    )
    b = Policy.from_dict({"fallback": {"value": 1.0}, "retry": {"factor": 2.0, "base": 1.0}})
    assert a.hash == b.hash
    assert a.hash.startswith("sha256:") and len(a.hash) == len("sha256:") + 64


def _mutations(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value + 1, value * 3 + 0.5]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, list):
        return [value[:-1]] if value else [["transient"]]
    return [1]


def test_hash_changes_when_any_parameter_changes() -> None:
    base = Policy.preset("production", fallback_value=100.0).to_dict()
    seen = {Policy.from_dict(base).hash}
    changed = 0
    for section in base["order"]:
        for key, value in base[section].items():
            for new in _mutations(value):
                data = json.loads(json.dumps(base))
                data[section][key] = new
                try:
                    policy = Policy.from_dict(data)
                except PolicyError:
                    continue  # not a valid value for this parameter
                assert policy.hash not in seen, f"{section}.{key}={new!r} kept the hash"
                seen.add(policy.hash)
                changed += 1
    assert changed >= 10
    unusual = {**base, "order": ["retry", "fallback"], "allow_unusual_order": True}
    unusual = {
        k: v
        for k, v in unusual.items()
        if k in ("retry", "fallback", "order", "allow_unusual_order")
    }
    plain = {k: v for k, v in base.items() if k in ("retry", "fallback")}
    assert Policy.from_dict(unusual).hash != Policy.from_dict(plain).hash


def test_hash_is_the_same_in_another_process() -> None:
    data = {"retry": {"max_tries": 4, "base": 0.5}, "fallback": {"value": {"rate": 0.05}}}
    reordered = {"fallback": {"value": {"rate": 0.05}}, "retry": {"base": 0.5, "max_tries": 4}}
    code = (
        "import json, sys\nfrom qwed_guard.policy import Policy\n"
        "print(Policy.from_dict(json.loads(sys.argv[1])).hash)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(reordered)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == Policy.from_dict(data).hash


# -- files ---------------------------------------------------------------------------------------

TOML = """
order = ["fallback", "retry"]

[retry]
max_tries = 3
base = 1
factor = 2

[fallback]
value = 100.0
"""


def test_toml_yaml_and_json_files_give_the_same_policy(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(TOML)
    (tmp_path / "p.yaml").write_text(
        "retry: {max_tries: 3, base: 1, factor: 2}\nfallback:\n  value: 100.0\n"
    )
    (tmp_path / "p.json").write_text(
        json.dumps({"fallback": {"value": 100.0}, "retry": {"max_tries": 3}})
    )
    policies = [Policy.from_file(tmp_path / name) for name in ("p.toml", "p.yaml", "p.json")]
    assert policies[0] == policies[1] == policies[2]


def test_yaml_empty_section_enables_the_layer_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("retry:\n")
    assert Policy.from_file(path) == Policy.from_dict({"retry": {}})


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("p.toml", "[retry\nmax_tries = 1", "p.toml: not valid TOML"),
        ("p.yaml", "retry: [1, 2", "p.yaml: not valid YAML"),
        ("p.json", "{", "p.json: not valid JSON"),
        ("p.json", "[1]", "p.json: a policy is a table of sections, got list"),
        ("p.ini", "", "p.ini: a policy file ends in .toml, .yaml, .yml, .json"),
        ("p.toml", "[retry]\nmax_tries = 0\n", "retry.max_tries: must be >= 1, got 0"),
    ],
)
def test_bad_files_raise_policy_errors(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        Policy.from_file(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the file"):
        Policy.from_file(tmp_path / "nope.toml")


def test_example_policy_files_are_valid() -> None:
    examples = sorted((REPO / "examples").glob("*.toml")) + sorted(
        (REPO / "examples").glob("*.yaml")
    )
    assert examples
    for path in examples:
        assert Policy.from_file(path).order


# -- callables by name ---------------------------------------------------------------------------


def conservative(failure: Any, query: str) -> float:
    return 99.0


CONSERVATIVE = f"{conservative.__module__}:conservative"


@pytest.fixture
def allow_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWED_GUARD_POLICY_MODULES", f"{conservative.__module__},no_such_package")


def test_callables_outside_the_allow_list_are_refused_before_import(tmp_path: Path) -> None:
    (shell,) = problems({"retry": {"classifier": "os:system"}})
    assert shell == "retry.classifier: refused 'os:system': module os is never allowed in a policy"
    (planted,) = problems({"fallback": {"handler": "planted_module_xyz:run"}})
    assert "module planted_module_xyz is not allowed" in planted
    assert "planted_module_xyz" not in sys.modules  # refused by name, never imported
    (channel,) = problems({"alert_on_failures": {"notify": ["subprocess:run"]}})
    assert channel.startswith("alert_on_failures.notify[0]: refused 'subprocess:run'")


def test_policy_check_imports_nothing_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "planted.py").write_text("open('RAN', 'w').write('x')\ndef run(x): return x\n")
    (tmp_path / "p.toml").write_text('[fallback]\nhandler = "planted:run"\n')
    env = {**os.environ, "QWED_GUARD_POLICY_MODULES": "planted"}
    done = subprocess.run(
        [sys.executable, "-m", "qwed_guard.policy", "check", "p.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "cannot import 'planted:run'" in done.stderr
    assert not (tmp_path / "RAN").exists()


def test_callables_are_named_by_dotted_path_and_resolved(allow_this_module: None) -> None:
    by_name = Policy.from_dict({"fallback": {"handler": CONSERVATIVE}})
    by_object = Policy.from_dict({"fallback": {"handler": conservative}})
    assert by_object == by_name
    assert by_object.to_dict()["fallback"]["handler"] == CONSERVATIVE

    @by_name
    def ask(query: str) -> Result:
        return DOWN

    result = ask("q")
    assert isinstance(result, GuardedResult) and result.value == 99.0 and result.is_fallback


def test_unimportable_callables_are_refused(allow_this_module: None) -> None:
    (lam,) = problems({"fallback": {"handler": lambda failure: 0}})
    assert lam.startswith("fallback.handler: a function in a policy must be importable by name")
    (missing,) = problems({"fallback": {"handler": "no_such_package.nowhere:fn"}})
    assert missing.startswith("fallback.handler: cannot import 'no_such_package.nowhere:fn'")


# -- presets -------------------------------------------------------------------------------------


def test_production_preset_is_the_seed_exercise() -> None:
    policy = Policy.preset("production", fallback_value=100.0)
    data = policy.to_dict()
    assert data["retry"]["max_tries"] == 3
    assert (data["retry"]["base"], data["retry"]["factor"]) == (1.0, 2.0)
    assert data["fallback"]["value"] == 100.0
    assert list(policy.order) == [name for name in CANONICAL_ORDER if name in data]
    assert "waits 1 s, 2 s" in policy.describe()


def test_presets_need_and_refuse_what_they_should() -> None:
    with pytest.raises(PolicyError, match="fallback_value"):
        Policy.preset("production")
    with pytest.raises(PolicyError, match="strict preset fails closed"):
        Policy.preset("strict", fallback_value=1.0)
    with pytest.raises(PolicyError, match="did you mean 'production'"):
        Policy.preset("prod")
    with pytest.raises(PolicyError, match=r"retyr: unknown override; did you mean 'retry'"):
        Policy.preset("dev", retyr={})
    assert "fallback" not in Policy.preset("strict").order
    assert "fallback" not in Policy.preset("production", fallback=None).order


def test_preset_overrides_merge_into_sections(allow_this_module: None) -> None:
    policy = Policy.preset("production", fallback_value=0.0, retry={"max_tries": 5})
    data = policy.to_dict()
    assert (data["retry"]["max_tries"], data["retry"]["base"]) == (5, 1.0)
    assert policy != Policy.preset("production", fallback_value=0.0)
    handler = Policy.preset("production", fallback={"handler": CONSERVATIVE})
    assert handler.to_dict()["fallback"]["handler"] == CONSERVATIVE


def test_dev_preset_never_waits(fake_clock: FakeClock) -> None:
    calls = iter([DOWN, DOWN, OK])

    @Policy.preset("dev")
    def ask(query: str) -> Result:
        return next(calls)

    assert ask("q") == OK
    assert fake_clock.waits == [0.0, 0.0]


# -- applying the stack --------------------------------------------------------------------------


def test_wrapped_calls_carry_the_policy_hash(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict({"retry": {"jitter": None}, "fallback": {"value": 0.0}})
    seen: list[str | None] = []

    @policy
    def ask(query: str) -> Result:
        ctx = current()
        assert ctx is not None
        seen.append(ctx.policy_hash)
        return OK

    ask("q")
    assert seen == [policy.hash]
    assert [layer.kind for layer in ask.guard_layers] == ["fallback", "retry"]  # type: ignore[attr-defined]


async def test_async_functions_and_methods(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict({"retry": {"jitter": None}, "fallback": {"value": -1.0}})

    class Verifier:
        def __init__(self) -> None:
            self.replies = [DOWN, OK, DOWN, DOWN, DOWN]

        @policy
        def verify(self, query: str) -> Result:
            return self.replies.pop(0)

        @policy.wrap
        async def averify(self, query: str) -> Result:
            await asyncio.sleep(0)
            return self.replies.pop(0)

    verifier = Verifier()
    first = verifier.verify("q")
    assert (first.value, first.source, first.attempts) == (42.0, "verified", 2)  # type: ignore[attr-defined]
    second = await verifier.averify("q")
    assert (second.value, second.source, second.attempts) == (-1.0, "fallback", 3)  # type: ignore[attr-defined]
    assert fake_clock.waits == [1.0, 1.0, 2.0]


def test_without_fallback_the_call_fails_closed(fake_clock: FakeClock) -> None:
    @Policy.from_dict({"retry": {"max_tries": 3, "jitter": None}})
    def ask(query: str) -> Result:
        return BAD_KEY

    with pytest.raises(VerificationFailed) as caught:
        ask("q")
    assert len(caught.value.attempts) == 1
    assert fake_clock.waits == []


def test_functions_under_one_policy_share_no_call_state(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict({"retry": {"max_tries": 2, "jitter": None}, "fallback": {"value": 0}})
    made: list[Callable[[str], Any]] = []
    for reply in (OK, DOWN):

        def ask(query: str, reply: Result = reply) -> Result:
            return reply

        made.append(policy(ask))
    assert [made[0]("q").source, made[1]("q").source, made[0]("q").source] == [
        "verified",
        "fallback",
        "verified",
    ]


def test_describe_reads_outermost_first() -> None:
    policy = Policy.from_dict({"retry": {"jitter": None}, "fallback": {"value": 100.0}})
    lines = policy.describe().splitlines()
    assert lines[0] == f"policy {policy.hash[:19]}  (outermost first)"
    assert lines[1] == "  1. fallback(value=100.0)"
    assert lines[2].startswith("  2. retry(max_tries=3; waits 1 s, 2 s; jitter=None")
    assert lines[3] == "  3. the function"
    assert repr(policy) == f"Policy(fallback, retry; {policy.hash[:19]})"


# -- layers beyond retry and fallback ------------------------------------------------------------


def test_each_function_gets_its_own_alert_key_and_count(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict(
        {"fallback": {"value": 0.0}, "alert_on_failures": {"threshold": 2, "notify": []}}
    )

    @policy
    def failing(query: str) -> Result:
        return DOWN

    @policy
    def healthy(query: str) -> Result:
        return OK

    for _ in range(2):
        failing("q")
        healthy("q")
    assert [(a.kind, a.key, a.policy_hash) for a in failing.alerts] == [  # type: ignore[attr-defined]
        ("triggered", f"{failing.__module__}.{failing.__qualname__}", policy.hash)
    ]
    assert list(healthy.alerts) == []  # type: ignore[attr-defined]


def test_each_function_gets_its_own_breaker(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict(
        {"fallback": {"value": 0.0}, "circuit_breaker": {"failure_threshold": 1}}
    )

    @policy
    def failing(query: str) -> Result:
        return DOWN

    @policy
    def healthy(query: str) -> Result:
        return OK

    failing("q")
    assert failing.breaker.state == "open"  # type: ignore[attr-defined]
    assert healthy("q").source == "verified"  # type: ignore[attr-defined]
    assert healthy.breaker.state == "closed"  # type: ignore[attr-defined]


def test_audit_records_carry_the_policy_hash(fake_clock: FakeClock) -> None:
    policy = Policy.preset("dev")

    @policy
    def ask(query: str) -> Result:
        return OK

    ask("What is 2 + 2?")
    records = ask.find_layer("audited").sink.records  # type: ignore[attr-defined]
    assert [r["event"] for r in records] == ["call"]  # its verified attempt inline
    assert records[0]["answered"]["outcome"] == "verified"
    assert {r["policy"] for r in records} == {policy.hash}


async def test_attempt_timeout_bounds_each_async_attempt(fake_clock: FakeClock) -> None:
    policy = Policy.from_dict(
        {
            "fallback": {"value": -1.0},
            "retry": {"max_tries": 2, "jitter": None},
            "attempt_timeout": {"seconds": 0.005},
        }
    )
    assert policy.order == ("fallback", "retry", "attempt_timeout")

    @policy
    async def hangs(query: str) -> Result:
        await asyncio.Event().wait()
        return OK

    result = await hangs("q")
    assert (result.source, result.attempts, result.outcome) == ("fallback", 2, "transient")  # type: ignore[attr-defined]
    assert fake_clock.waits == [1.0]


def test_attempt_timeout_refuses_sync_functions_and_outer_places() -> None:
    policy = Policy.from_dict({"attempt_timeout": {"seconds": 1}})

    def sync(query: str) -> Result:
        return OK

    with pytest.raises(PolicyError, match=r"attempt_timeout\.seconds: .* is synchronous"):
        policy.wrap(sync)
    (reason,) = problems(
        {"retry": {}, "attempt_timeout": {"seconds": 1}, "order": ["attempt_timeout", "retry"]}
    )
    assert reason.startswith("order: attempt_timeout must be innermost to bound one attempt")
    assert problems({"attempt_timeout": {}}) == ["attempt_timeout.seconds: required"]


def test_audited_may_sit_anywhere_and_fallback_must_be_outside_alerts() -> None:
    data = {"audited": {"sink": "memory:"}, "fallback": {"value": 0}, "alert_on_failures": {}}
    # The audit trail watches the whole call wherever it sits (tests/test_hooks.py shows the
    # records are the same): no order hides anything from it.
    policy = Policy.from_dict({**data, "order": ["fallback", "audited", "alert_on_failures"]})
    assert policy.order == ("fallback", "audited", "alert_on_failures")
    (alerts,) = problems({**data, "order": ["audited", "alert_on_failures", "fallback"]})
    assert "fallback inside alert_on_failures" in alerts and "nobody is alerted" in alerts


def test_nested_parameter_errors_keep_their_path() -> None:
    (found,) = problems({"alert_on_failures": {"notify": ["log", "pager"]}})
    assert found.startswith("alert_on_failures.notify: [1]: unknown channel 'pager'")
    (sink,) = problems({"audited": {"sink": "ftp://x"}})
    assert sink.startswith("audited.sink: unsupported sink URL 'ftp://x'")


def test_strict_preset_fails_closed_and_alerts_at_once(
    fake_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    policy = Policy.preset("strict", alert_on_failures={"notify": []})

    @policy
    def ask(query: str) -> Result:
        return BAD_KEY

    with pytest.raises(VerificationFailed):
        ask("q")
    assert [a.kind for a in ask.alerts] == ["triggered"]  # type: ignore[attr-defined]
    ask.find_layer("audited").flush()  # type: ignore[attr-defined]
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(policy.hash in line for line in lines)


def test_production_preset_describes_the_canonical_stack() -> None:
    text = Policy.preset("production", fallback_value=100.0).describe()
    kinds = [line.split(". ", 1)[1].split("(", 1)[0] for line in text.splitlines()[1:-1]]
    assert kinds == list(CANONICAL_ORDER[:5])
    assert "threshold=5" in text and "fallback(value=100.0)" in text


def test_example_files_are_the_presets() -> None:
    production = Policy.from_file(REPO / "examples" / "production.toml")
    assert production == Policy.preset("production", fallback_value=100.0)
    assert Policy.from_file(REPO / "examples" / "strict.yaml") == Policy.preset("strict")


def test_self_referencing_and_exploding_yaml_is_refused_quickly(tmp_path: Path) -> None:
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("fallback:\n  value: &x [1, *x, *x]\n")
    with pytest.raises(PolicyError, match=r"fallback\.value\[1\]: contains itself"):
        Policy.from_file(cycle)
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("fallback:\n  value:\n" + "".join(f"    {line}\n" for line in levels))
    with pytest.raises(PolicyError, match="more than 100000 values in one policy"):
        Policy.from_file(laughs)
