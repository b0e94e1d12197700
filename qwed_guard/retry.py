"""`@retry`: one loop, one attempt counter, one deadline, for exceptions and results alike.

QWEDLocal reports a 503 and a wrong answer the same way (a result with `verified=False`), so a
retry that only catches exceptions never fires. This loop classifies every attempt, retries what
may heal, never retries what cannot, honours the server's Retry-After and keeps a true deadline.
backoff's wait generators and jitter compute the schedule; the loop is ours.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

import backoff

from qwed_guard import clock
from qwed_guard.budget import budget_of
from qwed_guard.context import CallContext
from qwed_guard.errors import VerificationFailed
from qwed_guard.hooks import GaveUp, RetryScheduled
from qwed_guard.layer import CallOutcome, Deferred, Layer, Step
from qwed_guard.options import (
    Options,
    choice,
    function,
    integer,
    judged_by,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    outcomes,
)
from qwed_guard.outcomes import ANSWERED, Classifier, Diagnosis, Outcome
from qwed_guard.verdicts import Judge, VerdictRules, as_rules

__all__ = ["DEFAULT_RETRY_ON", "RetryLayer", "RetryOptions", "retry"]

Jitter = Callable[[float], float]

DEFAULT_RETRY_ON: frozenset[Outcome] = frozenset(
    {Outcome.TRANSIENT, Outcome.REFUTED, Outcome.UNVERIFIABLE}
)
_REASKS = frozenset({Outcome.REFUTED, Outcome.UNVERIFIABLE})
MAX_TRIES_LIMIT = 100
"""More tries than this is a misconfiguration (and would overflow the backoff schedule)."""
_JITTERS: dict[str, Jitter] = {
    "full": backoff.full_jitter,
    "random": backoff.random_jitter,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOptions(Options):
    """`@retry`'s parameters (see `retry`)."""

    max_tries: int = integer(3, 1, MAX_TRIES_LIMIT, "Attempts in all, the first included.")
    base: float = number(1.0, 0, 3600, "The first wait, in seconds.", span=True)
    factor: float = number(2.0, 1, 100, "Each wait is the last one times this.", span=True)
    max_delay: float = number(60.0, 0, 86400, "No wait is longer (seconds).", span=True)
    jitter: str | Jitter | None = choice(
        "full",
        (*_JITTERS, "none"),
        "How waits are randomized; none (or null) for exact waits.",
        callable=True,
        optional=True,
    )
    max_time: float | None = number(
        None, 0, 7 * 86400, "No attempt starts after this many seconds.", optional=True, span=True
    )
    retry_on: Collection[Outcome | str] = outcomes(
        DEFAULT_RETRY_ON, DEFAULT_RETRY_ON, "{} outcomes are never retried", "Outcomes retried."
    )
    max_reasks: int | None = integer(
        None, 0, 10_000_000, "At most this many re-asks after wrong answers.", optional=True
    )
    classifier: Classifier | None = function(None, "Says a result's outcome instead of QWED's.")
    verdict: VerdictRules | Judge | None = judged_by()


class RetryLayer(Layer):
    """The retry loop's parameters; `around` runs one call through it."""

    kind = "retry"
    options_type = RetryOptions
    __signature__ = layer_signature(RetryOptions)

    def __init__(self, options: RetryOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(RetryOptions, options, params)
        jitter = None if o.jitter == "none" else o.jitter  # TOML has no null: "none" is None
        self.max_tries = o.max_tries
        self.base = float(o.base)
        self.factor = float(o.factor)
        self.max_delay = float(o.max_delay)
        self.jitter = jitter
        self._jitter = _JITTERS[jitter] if isinstance(jitter, str) else jitter
        self.max_time = o.max_time
        retry_on = [o.retry_on] if isinstance(o.retry_on, str) else o.retry_on
        self.retry_on = frozenset(Outcome(item) for item in retry_on)
        self.max_reasks = o.max_reasks
        self.classifier = o.classifier
        self.verdict = as_rules(o.verdict)
        self._schedule = tuple(self.schedule())
        """The un-jittered wait after each failed attempt: the n-th follows attempt n."""

    def describe(self) -> str:
        schedule = ", ".join(f"{w:g} s" for w in self.schedule())
        jitter = self.jitter if isinstance(self.jitter, str) or self.jitter is None else "custom"
        parts = [
            f"max_tries={self.max_tries}",
            f"waits {schedule or 'none'}",
            f"jitter={jitter}",
            f"max_delay={self.max_delay:g} s",
        ]
        if self.max_time is not None:
            parts.append(f"max_time={self.max_time:g} s")
        parts.append("retry_on=" + ",".join(sorted(o.value for o in self.retry_on)))
        if self.max_reasks is not None:
            parts.append(f"max_reasks={self.max_reasks}")
        return "retry(" + "; ".join(parts) + ")"

    def _waits(self) -> Generator[float, None, None]:
        gen = backoff.expo(base=self.factor, factor=self.base, max_value=self.max_delay)
        gen.send(None)  # backoff's generators are primed with one send
        yield from gen

    def schedule(self) -> list[float]:
        """The un-jittered waits between attempts, in order."""
        waits = self._waits()
        return [float(next(waits)) for _ in range(self.max_tries - 1)]

    # The loop: `exit` looks at each attempt's outcome and says "done" or "wait, then again".
    def _next_wait(
        self,
        ctx: CallContext,
        diagnosis: Diagnosis,
        reasks: int,
        deadline: float | None,
    ) -> float | str:
        """The wait before the next attempt, or why there is none."""
        outcome = diagnosis.outcome
        if outcome not in self.retry_on:
            return f"{outcome.value} outcomes are not retried"
        if diagnosis.final:
            return f"{outcome.value} by a deterministic check: asking again gives the same answer"
        if ctx.attempt >= self.max_tries:
            return f"max_tries={self.max_tries} reached"
        if outcome in _REASKS and self.max_reasks is not None and reasks > self.max_reasks:
            return f"max_reasks={self.max_reasks} reached"
        computed = self._schedule[ctx.attempt - 1]
        retry_after = diagnosis.retry_after
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            wait = min(retry_after, self.max_delay)
        else:
            wait = self._jitter(computed) if self._jitter is not None else computed
            wait = min(max(wait, 0.0), self.max_delay)
        if deadline is not None and clock.monotonic() + wait > deadline:
            return f"max_time={self.max_time:g} s would pass before the next attempt"
        return float(wait)

    def _give_up(self, ctx: CallContext, reason: str, outcome: CallOutcome) -> CallOutcome:
        if ctx.wants(GaveUp):
            ctx.send(GaveUp(ctx.attempt, clock.wall(), reason, len(ctx.attempts)))
        failure = VerificationFailed(
            ctx.function,
            ctx.attempts,
            last_result=outcome.result,
            last_exception=outcome.exception,
            reason=reason,
        )
        failure.__cause__ = outcome.exception
        return CallOutcome(outcome.diagnosis, outcome.result, failure)

    def enter(self, ctx: CallContext) -> _Run | None:
        ctx.attempt = 1
        ctx.wait_before = 0.0
        ctx.reasks = 0
        if self.max_time is None and self.classifier is None:
            return None  # nothing to keep: the loop's counters are the call's own
        run = _Run(
            None if self.max_time is None else clock.monotonic() + self.max_time, ctx.classifier
        )
        if self.classifier is not None:
            ctx.classifier = self.classifier
        return run

    def exit(self, ctx: CallContext, state: _Run | None, outcome: CallOutcome) -> Step:
        diagnosis = outcome.diagnosis
        if outcome.exception is None and diagnosis.outcome in ANSWERED:
            if state is not None:
                ctx.classifier = state.classifier
            return outcome
        ctx.reasks += diagnosis.outcome in _REASKS
        deadline = None if state is None else state.deadline
        step = self._next_wait(ctx, diagnosis, ctx.reasks, deadline)
        if isinstance(step, str):
            if state is not None:
                ctx.classifier = state.classifier
            return self._give_up(ctx, step, outcome)
        budget = budget_of(ctx)
        if budget is not None:
            # The call's retry budget (`@retry_budget`) may forbid the retry, fleet-wide.
            if ctx.is_async and budget.awaits:
                return Deferred(
                    budget.aspend, functools.partial(self._budgeted, ctx, state, outcome, step)
                )
            return self._budgeted(ctx, state, outcome, step, budget.spend(), None)
        return self._schedule_next(ctx, diagnosis, step)

    def _budgeted(
        self,
        ctx: CallContext,
        state: _Run | None,
        outcome: CallOutcome,
        wait: float,
        refusal: str | None,
        exc: Exception | None,
    ) -> CallOutcome | float:
        if exc is not None:
            raise exc
        if refusal is not None:
            if state is not None:
                ctx.classifier = state.classifier
            return self._give_up(ctx, refusal, outcome)
        return self._schedule_next(ctx, outcome.diagnosis, wait)

    def _schedule_next(self, ctx: CallContext, diagnosis: Diagnosis, step: float) -> float:
        if ctx.wants(RetryScheduled):
            ctx.send(RetryScheduled(ctx.attempt, clock.wall(), step, diagnosis.outcome))
        ctx.attempt += 1
        ctx.wait_before = step
        return step

    def interrupted(self, ctx: CallContext, state: _Run | None, exc: BaseException) -> None:
        if state is not None:
            ctx.classifier = state.classifier


class _Run(NamedTuple):
    """What one call's retry loop keeps beside the call's own counters (`ctx.attempt`,
    `ctx.reasks`), when it has a deadline or a classifier."""

    deadline: float | None
    classifier: Classifier | None
    """The classifier to restore when the call leaves the loop."""


@layer_decorator(RetryOptions, RetryLayer)
def retry() -> None:
    """Retry a verification with exponential backoff until it is verified.

    Waits `base * factor ** n` seconds (1 s, 2 s, 4 s by default), jittered (`"full"`) unless
    `jitter=None`, capped by `max_delay`; a server's Retry-After replaces the computed wait. No
    attempt starts after `max_time`. Transient failures, refuted and unverifiable answers are
    retried (`retry_on`; `max_reasks` caps the re-asks); permanent ones and refusals by a
    deterministic check never. `verdict` sets how results are judged (see `VerdictRules`).
    When it gives up it raises `VerificationFailed` with every attempt.
    The parameters, their bounds and docs are `RetryOptions`'s fields.
    """
