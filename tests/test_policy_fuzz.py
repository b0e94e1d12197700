"""Fuzzing policy data: `from_dict` returns a policy or raises PolicyError, and round-trips."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwed_guard.errors import PolicyError
from qwed_guard.policy import CANONICAL_ORDER, Policy
from qwed_guard.policy._core import layer_class

SECTIONS = CANONICAL_ORDER
PARAMETERS = sorted(
    {name for section in SECTIONS for name in inspect.signature(layer_class(section)).parameters}
)
# Values a real policy uses, so fuzzing also reaches valid policies, not only errors.
PLAUSIBLE = st.sampled_from(
    ["transient", "refuted", "permanent", "full", "random", "log", "memory:", "none", "always"]
)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=12)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=10)
    | st.text(max_size=6)
    | PLAUSIBLE
    | st.binary(max_size=2)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4) | PLAUSIBLE, inner, max_size=3)
        | st.dictionaries(st.integers(), inner, max_size=1)
    ),
    max_leaves=6,
)
sections = (
    st.dictionaries(st.sampled_from(PARAMETERS) | st.text(max_size=8), values, max_size=4)
    | st.none()
    | values
)
orders = st.lists(st.sampled_from(CANONICAL_ORDER) | st.text(max_size=5), max_size=6) | values
policies = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=8) | st.just("order"),
    sections,
    max_size=5,
).flatmap(
    lambda data: st.fixed_dictionaries(
        {},
        optional={"order": orders, "allow_unusual_order": st.booleans() | values},
    ).map(lambda extra: {**data, **extra})
)


@pytest.fixture(scope="module", autouse=True)
def _in_a_scratch_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Fuzzed audit sinks may name relative files: keep them out of the repository.
    scratch = tmp_path_factory.mktemp("fuzz")
    previous = Path.cwd()
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(previous)


def check(data: Any) -> bool:
    try:
        policy = Policy.from_dict(data)
    except PolicyError as exc:
        assert exc.errors and all(isinstance(line, str) for line in exc.errors)
        return False
    again = Policy.from_dict(policy.to_dict())
    assert again == policy and again.hash == policy.hash
    assert again.to_dict() == policy.to_dict()
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies)
def test_from_dict_returns_a_policy_or_raises_policy_error(data: dict[str, Any]) -> None:
    check(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.sampled_from(SECTIONS), min_size=1), st.randoms(use_true_random=False))
def test_valid_policies_round_trip_in_any_order(chosen: set[str], rnd: Any) -> None:
    data: dict[str, Any] = {name: {} for name in chosen}
    if "fallback" in data:
        data["fallback"] = {"value": rnd.choice([0, 1.5, "n/a", None, [1, 2], {"a": 1}])}
    if "attempt_timeout" in data:
        data["attempt_timeout"] = {"seconds": rnd.choice([0.5, 10])}
    order = list(chosen)
    rnd.shuffle(order)
    data["order"] = order
    data["allow_unusual_order"] = True
    assert check(data)
