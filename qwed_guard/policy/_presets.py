"""Ready-made policies: the seed's production exercise, a fail-closed variant, and one for dev."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from qwed_guard.errors import PolicyError
from qwed_guard.policy._sections import OPTIONS, SECTIONS, UNSET, VERDICT, did_you_mean

__all__ = ["PRESETS", "preset_data"]

PRESETS: Final[dict[str, str]] = {
    "production": "retry 3 tries (waits 1 s, 2 s), fall back to a conservative value, "
    "alert after 5 consecutive failures, audit every attempt, circuit breaker (opens when 80% "
    "of the last 50 attempts failed)",
    "strict": "no fallback (fail closed: unverified calls and plain values with no verdict "
    "raise), retry 3 tries, alert at once "
    "on a permanent error, audit every attempt, circuit breaker (80% of the last 50 attempts)",
    "dev": "no waits between retries, in-memory audit, no alerts",
}

# The seed's exercise: "Retry up to 3 times with exponential backoff" (1 s, then 2 s).
# Audit goes to `audit.jsonl` (fsync always), alerts to the log: override `audited`/`notify`.
_RETRY: Final[dict[str, Any]] = {"max_tries": 3, "base": 1.0, "factor": 2.0}

# A rate rule, not "5 failed attempts in a row": a provider failing a quarter of its requests
# (the simulator's `flaky` profile) fails about 44% of attempts, which gives such runs every few
# dozen attempts, and each would short-circuit every call for `recovery_timeout`. 80% of 50 is
# more than five standard deviations away (20 attempts were not enough: a few times in 15,000),
# and waiting for 50 attempts keeps a cold start from opening it: at high concurrency the first
# attempts to finish are the fast failures. An outage reaches it within about 40 attempts.
_BREAKER: Final[dict[str, Any]] = {
    "failure_rate": 0.8,
    "window": 50,
    "min_calls": 50,
}


def _sections(name: str) -> dict[str, dict[str, Any]]:
    if name == "production":
        return {
            "audited": {},
            "fallback": {},
            "alert_on_failures": {"threshold": 5},
            "retry": dict(_RETRY),
            "circuit_breaker": dict(_BREAKER),
        }
    if name == "strict":
        return {
            # Fail closed: a plain value with no verdict is a failure, not a pass.
            "verdict": {"plain": "fail"},
            "audited": {},
            "alert_on_failures": {"threshold": 5, "alert_on_permanent": True},
            "retry": dict(_RETRY),
            "circuit_breaker": dict(_BREAKER),
        }
    return {
        "audited": {"sink": "memory:"},
        "retry": {"max_tries": 3, "base": 0.0, "jitter": None},
    }


def preset_data(name: str, fallback_value: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The policy data of preset `name`, with the fallback value and section overrides applied."""
    if name not in PRESETS:
        raise PolicyError(
            f"unknown preset {name!r}{did_you_mean(name, PRESETS)} (presets: {', '.join(PRESETS)})"
        )
    data: dict[str, Any] = _sections(name)
    problems: list[str] = []
    if fallback_value is not UNSET:
        if name == "strict":
            problems.append("fallback_value: the strict preset fails closed and has no fallback")
        else:
            data["fallback"] = {"value": fallback_value}
    for key, value in overrides.items():
        if key in OPTIONS:
            data[key] = value
        elif key not in SECTIONS and key != VERDICT:
            known = ", ".join(["fallback_value", *SECTIONS, VERDICT, *OPTIONS])
            problems.append(f"{key}: unknown override{did_you_mean(key, SECTIONS)} ({known})")
        elif value is None:
            data.pop(key, None)
        elif isinstance(value, Mapping):
            data[key] = {**data.get(key, {}), **value}
        else:
            problems.append(f"{key}: an override is a table of parameters or None, got {value!r}")
    fallback = data.get("fallback")
    if fallback is not None and not fallback:
        problems.append(
            f"fallback_value: the {name} preset falls back to a conservative value you choose: "
            f"Policy.preset({name!r}, fallback_value=...) (or fallback={{'handler': ...}}, "
            f"or fallback=None for none)"
        )
    if problems:
        head = f"preset {name!r} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        raise PolicyError("\n  ".join([head, *problems]), problems)
    return data
