"""Policies: the decorators' order and parameters as one immutable, hashable piece of data.

from qwed_guard import Policy

policy = Policy.from_file("policy.toml")   # or Policy.from_dict({...}), Policy.preset(...)
print(policy.describe())
schema = json_schema()   # the JSON Schema of policy files, for editors and CI

@policy
def interest(query: str): ...
"""

from __future__ import annotations

from qwed_guard.policy._callables import allow_callables
from qwed_guard.policy._core import CANONICAL_ORDER, Policy
from qwed_guard.policy._presets import PRESETS
from qwed_guard.policy._schema import json_schema

__all__ = ["CANONICAL_ORDER", "PRESETS", "Policy", "allow_callables", "json_schema"]
