"""What a policy may contain: its sections (in the canonical order), their layer classes, the
top-level options, and the did-you-mean every policy error uses. The bottom of `policy/`:
`_core` and `_presets` both read it, and it imports neither."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CANONICAL_ORDER",
    "OPTIONS",
    "SECTIONS",
    "UNSET",
    "VERDICT",
    "VERDICT_SPEC",
    "WATCHING",
    "Section",
    "did_you_mean",
]


@dataclass(frozen=True, slots=True)
class Section:
    """Where a section's layer class lives; its `options_type` declares the section's keys
    (and which of them may name a `pkg.mod:func` to import)."""

    module: str
    cls: str


# Outermost first: the canonical order (DESIGN.md) is this dict's order.
SECTIONS: Final[dict[str, Section]] = {
    "audited": Section("qwed_guard.audit", "AuditLayer"),
    "fallback": Section("qwed_guard.fallback", "FallbackLayer"),
    "alert_on_failures": Section("qwed_guard.alerts", "AlertLayer"),
    "retry": Section("qwed_guard.retry", "RetryLayer"),
    "circuit_breaker": Section("qwed_guard.breaker", "CircuitBreakerLayer"),
    "concurrency": Section("qwed_guard.bulkhead", "ConcurrencyLimitLayer"),
    "attempt_timeout": Section("qwed_guard.timeout", "AttemptTimeoutLayer"),
    # Watches the whole call from wherever it sits (a hook, not a step).
    "retry_budget": Section("qwed_guard.budget", "RetryBudgetLayer"),
}
CANONICAL_ORDER: Final[tuple[str, ...]] = tuple(SECTIONS)
WATCHING: Final = frozenset({"retry_budget"})
"""Sections whose layer watches the whole call wherever it sits: no order hides anything."""
# Not a layer: how the whole stack judges results (qwed_guard.verdicts.VerdictRules).
VERDICT: Final = "verdict"
VERDICT_SPEC: Final = Section("qwed_guard.verdicts", "VerdictRules")
# Top-level keys that are not sections.
OPTIONS: Final = ("order", "allow_unusual_order")
# "Not given" (a parameter default) and "not plain data" (a conversion's answer).
UNSET: Any = object()


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the choice closest to `key`, or an empty string."""
    import difflib  # only a bad policy needs it

    choices = list(choices)
    close = [c for c in choices if key and c.startswith(key)]
    close = close or difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
