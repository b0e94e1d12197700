"""`@attempt_timeout`: a bound on one attempt of an `async def` function.

A hanging attempt is cancelled when its time is up and ends as a `transient` failure, which
`@retry` retries and `@circuit_breaker` counts. Place it innermost, below both:

    @retry(max_tries=3)
    @circuit_breaker()
    @attempt_timeout(10)
    async def verify(query): ...

Synchronous functions are refused: a thread cannot be stopped safely from outside, and a
timeout that abandons a still-running thread leaks it and its connection. For them the bound
belongs to the HTTP client, which closes the socket itself: `guarded_client(..., timeout=10)`
hands the timeout to QWEDLocal and `openai.OpenAI` with the SDK's own retries off. Retry's
`max_time` remains the bound on the whole call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

from qwed_guard.context import CallContext
from qwed_guard.errors import QwedGuardError, bad_parameter
from qwed_guard.layer import CallOutcome, Layer, end_attempt, outcome_of
from qwed_guard.options import (
    Options,
    applies,
    decorator,
    describe,
    layer_signature,
    number,
    options_from,
    required,
)
from qwed_guard.outcomes import Diagnosis, Outcome

__all__ = ["AttemptTimeout", "AttemptTimeoutLayer", "TimeoutOptions", "attempt_timeout"]


class AttemptTimeout(QwedGuardError, TimeoutError):
    """An attempt ran past its `attempt_timeout` and was cancelled; a transient failure."""

    outcome: Outcome = Outcome.TRANSIENT

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.error: str = f"attempt timed out after {seconds:g} s"
        super().__init__(self.error)


@dataclass(frozen=True, slots=True)
class TimeoutOptions(Options):
    """`@attempt_timeout`'s parameters (see `attempt_timeout`)."""

    # Longer waits overflow asyncio's timers.
    seconds: float = field(
        metadata=required(number(MISSING, 0, 86400, "Seconds one attempt may take.", above=True))
    )


class AttemptTimeoutLayer(Layer):
    """Cancels an attempt that runs longer than `seconds`."""

    kind = "attempt_timeout"
    options_type = TimeoutOptions
    __signature__ = layer_signature(TimeoutOptions)

    def __init__(self, options: TimeoutOptions | float | None = None, /, **params: Any) -> None:
        if not isinstance(options, TimeoutOptions | None):
            options = TimeoutOptions(options)
        self.options = options_from(TimeoutOptions, options, params)
        self.seconds = float(self.options.seconds)
        self.bound = self.seconds

    def describe(self) -> str:
        return describe(self.kind, self.options)

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> AttemptTimeoutLayer:
        if not inspect.iscoroutinefunction(fn):
            raise bad_parameter(
                "seconds",
                f"{name} is synchronous and a thread cannot be stopped safely; bound its "
                "requests instead with guarded_client(..., timeout=seconds)",
            )
        return self

    def expired(self, ctx: CallContext, state: Any, recorded: int, started: float) -> CallOutcome:
        error = AttemptTimeout(self.seconds)
        if len(ctx.attempts) == recorded:
            # The cancelled attempt never reported its end; report it here.
            return end_attempt(ctx, Diagnosis(Outcome.TRANSIENT, error.error), started, None, error)
        return outcome_of(error)


@decorator(TimeoutOptions, applies(AttemptTimeoutLayer))
def attempt_timeout() -> None:
    """Cancel an `async def` attempt after `seconds`; it counts as a transient failure.

    Put it innermost (below `@retry` and `@circuit_breaker`) so each attempt gets its own
    bound and the breaker counts timeouts. Sync functions are refused at decoration: give
    their HTTP client the timeout instead (`guarded_client(..., timeout=seconds)`).
    The parameters, their bounds and docs are `TimeoutOptions`'s fields.
    """
