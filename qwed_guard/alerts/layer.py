"""`@alert_on_failures`: one alert when failures start, rare reminders, one notice at recovery.

Every decision is made by `decide`, a pure function of the stored state, the call's outcome and
the time, run inside the state store's atomic `update`. So the in-memory store (a lock) and a
shared store for many processes (an optimistic transaction) give the same answers, and eight
threads failing at once still raise exactly one alert.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from qwed_guard import clock
from qwed_guard.alerts.channels import Channel, build_channels
from qwed_guard.alerts.channels.base import DEFAULT_TIMEOUT
from qwed_guard.alerts.delivery import DEFAULT_QUEUE_SIZE, DEFAULT_RETRY_DELAYS, Worker
from qwed_guard.alerts.record import AlertHistory, AlertKind, Reason, rfc3339
from qwed_guard.alerts.send import alert_failed, raise_alert
from qwed_guard.context import CallContext
from qwed_guard.errors import MAX_COUNT, bad_parameter
from qwed_guard.layer import CallOutcome, Deferred, Layer
from qwed_guard.options import (
    CHANNELS,
    STRING,
    Options,
    Problem,
    data,
    flag,
    integer,
    judged_by,
    layer_decorator,
    layer_signature,
    number,
    options_from,
    seconds_list,
    text,
)
from qwed_guard.outcomes import ANSWERED, Diagnosis, Outcome
from qwed_guard.state import MemoryStore, State, StateStore, store_from_url
from qwed_guard.state.base import AsyncStateStore, SharedStore
from qwed_guard.verdicts import Judge, VerdictRules, as_rules

__all__ = [
    "DEFAULT_STORE",
    "AlertLayer",
    "AlertOptions",
    "Decision",
    "Rules",
    "alert_on_failures",
    "decide",
]

DEFAULT_STORE = MemoryStore()
"""The store behind `state=None` / `"memory:"`: one per process, so `key=` groups functions."""
DEFAULT_REPEAT_INTERVAL = 3600.0
DEFAULT_RATE_WINDOW = 20
_DEDUP_PREFIX = "qwed-guard:"
_STATE_PREFIX = "alerts:"
_ERROR_IN_MESSAGE = 300


@dataclass(frozen=True, slots=True)
class Rules:
    """When to alert; the parameters `decide` needs, nothing else."""

    threshold: int = 5
    repeat_interval: float | None = DEFAULT_REPEAT_INTERVAL
    resolve: bool = True
    alert_on_permanent: bool = True
    rate_threshold: float | None = None
    rate_window: int = DEFAULT_RATE_WINDOW
    min_calls: int = DEFAULT_RATE_WINDOW


class Decision(TypedDict):
    """What `decide` asks the layer to send."""

    kind: AlertKind
    reason: Reason
    failures: int
    since: float | None
    """Wall time of the streak's first failure."""
    rate: float | None
    window: int


def decide(
    state: State | None,
    *,
    failed: bool,
    permanent: bool,
    now: float,
    rules: Rules,
    short_circuited: bool = False,
) -> tuple[State | None, Decision | None]:
    """The next state and the alert to send (if any) after one call. Pure: it may run twice.

    State (JSON-able): `failures` in a row, `since` (first failure of the streak), `open` (an
    alert was sent and not resolved), `reason` and `last_sent` of the open alert, `window`
    (recent calls, 1 = failed) when the rate window is on, and `settling` right after a
    resolve. No state at all means healthy.

    One page per outage: calls a circuit breaker refused (`short_circuited`) after the outage
    was resolved were refused while its probe was still in flight; they start no new streak
    until a call really ran again.
    """
    if state is None and not failed and rules.rate_threshold is None:
        return None, None  # the hot path: healthy and staying healthy
    s: State = state or {}
    if s.get("settling") and short_circuited and not s.get("open"):
        return state, None
    failures = int(s.get("failures", 0))
    since: float | None = s.get("since")
    is_open = bool(s.get("open", False))
    reason: Reason | None = s.get("reason") if is_open else None
    last_sent: float | None = s.get("last_sent") if is_open else None
    window: list[int] = []
    rate: float | None = None
    rate_tripped = False
    if rules.rate_threshold is not None:
        window = [*s.get("window", ()), 1 if failed else 0][-rules.rate_window :]
        rate = sum(window) / len(window)
        rate_tripped = len(window) >= rules.min_calls and rate >= rules.rate_threshold

    decision: Decision | None = None
    if failed:
        failures += 1
        since = since if since is not None and failures > 1 else now
        if not is_open:
            if permanent and rules.alert_on_permanent:
                reason = "permanent"
            elif failures >= rules.threshold:
                reason = "consecutive"
            elif rate_tripped:
                reason = "rate"
            if reason is not None:
                is_open, last_sent = True, now
                decision = Decision(
                    kind="triggered",
                    reason=reason,
                    failures=failures,
                    since=since,
                    rate=rate,
                    window=len(window),
                )
        elif (
            rules.repeat_interval is not None
            and last_sent is not None
            and now - last_sent >= rules.repeat_interval
        ):
            last_sent = now
            assert reason is not None
            decision = Decision(
                kind="repeat",
                reason=reason,
                failures=failures,
                since=since,
                rate=rate,
                window=len(window),
            )
    else:
        # A rate alert stays open while the rate is still over the threshold: flapping calls
        # succeed now and then, and must not resolve and re-trigger on every success.
        if is_open and (reason != "rate" or not rate_tripped):
            assert reason is not None
            if rules.resolve:
                decision = Decision(
                    kind="resolved",
                    reason=reason,
                    failures=failures,
                    since=since,
                    rate=rate,
                    window=len(window),
                )
            is_open, reason, last_sent = False, None, None
        failures, since = 0, None

    settling = decision is not None and decision["kind"] == "resolved"
    if not is_open and failures == 0 and rules.rate_threshold is None and not settling:
        return None, decision  # healthy: nothing to keep (the rate window keeps its successes)
    new: State = {"failures": failures, "since": since, "open": is_open}
    if settling:
        new["settling"] = True
    if is_open:
        new["reason"], new["last_sent"] = reason, last_sent
    if rules.rate_threshold is not None:
        new["window"] = window
    return new, decision


def _message(
    key: str, decision: Decision, rules: Rules, outcome: Outcome, error: str | None
) -> str:
    last = f"last outcome: {outcome}"
    if error:
        short = error if len(error) <= _ERROR_IN_MESSAGE else error[: _ERROR_IN_MESSAGE - 3] + "..."
        last += f": {short}"
    rate = decision["rate"]
    rate_text = (
        f"{rate:.0%} of the last {decision['window']} calls failed" if rate is not None else ""
    )
    n = decision["failures"]
    calls = f"{n} consecutive failure{'s' if n != 1 else ''}"
    kind, reason = decision["kind"], decision["reason"]
    if kind == "resolved":
        if reason == "rate":
            return f"{key}: recovered, {rate_text}"
        return f"{key}: recovered after {calls}"
    if reason == "permanent":
        what = "permanent failure, retrying cannot help"
    elif reason == "rate":
        assert rules.rate_threshold is not None
        what = f"{rate_text} (threshold {rules.rate_threshold:.0%})"
    else:
        what = calls
    if kind == "repeat":
        since = decision["since"]
        started = f" since {rfc3339(since)}" if since is not None else ""
        what = f"still failing{started}: {calls}" + (f", {rate_text}" if rate_text else "")
    return f"{key}: {what} ({last})"


Notify = Any
"""`notify` items: "log", a callable, "module:function", a Channel, {"slack": {...}}, ..."""

MAX_SECONDS = 366 * 86400.0
"""The longest wait any alerting option may name (a year): beyond it timers overflow."""
MAX_DELIVERY_SECONDS = 3600.0
"""The longest a channel timeout or a delivery retry delay may be."""


def _store(state: str | StateStore | None) -> StateStore:
    if state is None or state == "memory:":
        return DEFAULT_STORE
    try:
        return store_from_url(state)
    except (TypeError, ValueError) as exc:
        problem = str(exc).removeprefix("state: ")
        raise bad_parameter("state", problem, wrong_type=isinstance(exc, TypeError)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertOptions(Options):
    """`@alert_on_failures`' parameters (see `alert_on_failures`)."""

    threshold: int = integer(5, 1, MAX_COUNT, "Failed calls in a row that alert.")
    notify: Notify = data(("log",), "Where alerts go.", CHANNELS, importable=True)
    repeat_interval: float | None = number(
        DEFAULT_REPEAT_INTERVAL,
        0,
        MAX_SECONDS,
        "Seconds between reminders while failing; null: none.",
        optional=True,
    )
    key: str | None = text(None, "Names the alert; functions with one key share a count.")
    resolve: bool = flag(True, "Send a resolved alert at recovery.")
    alert_on_permanent: bool = flag(True, "A permanent failure alerts at once.")
    rate_threshold: float | None = number(
        None,
        0,
        1,
        "Also alert when this share of recent calls failed.",
        above=True,
        optional=True,
        span="in (0, 1]",
    )
    rate_window: int | None = integer(
        None, 1, MAX_COUNT, "Recent calls the rate is computed over (20).", optional=True
    )
    min_calls: int | None = integer(
        None, 1, MAX_COUNT, "Calls seen before the rate applies (rate_window).", optional=True
    )
    state: str | StateStore | None = data(None, "Where counts live (a store URL).", STRING)
    history_size: int = integer(100, 1, MAX_COUNT, "Alerts kept in fn.alerts.")
    timeout: float = number(
        DEFAULT_TIMEOUT, 0, MAX_DELIVERY_SECONDS, "Seconds per delivery request.", above=True
    )
    retry_delays: Sequence[float] = seconds_list(
        DEFAULT_RETRY_DELAYS, MAX_DELIVERY_SECONDS, 20, "Waits before redelivering an alert."
    )
    queue_size: int = integer(DEFAULT_QUEUE_SIZE, 1, MAX_COUNT, "Alerts queued per channel.")
    verdict: VerdictRules | Judge | None = judged_by()

    @classmethod
    def relations(cls, values: Mapping[str, Any]) -> Iterator[Problem]:
        window, least = values["rate_window"], values["min_calls"]
        if values["rate_threshold"] is None:
            if window is not None or least is not None:
                name = "rate_window" if window is not None else "min_calls"
                yield Problem(name, "needs rate_threshold (the failure share that alerts)")
            return
        window = DEFAULT_RATE_WINDOW if window is None else window
        least = window if least is None else least
        if least > window:
            yield Problem("min_calls", f"must be <= rate_window ({window}), got {least}")


class AlertLayer(Layer):
    """Counts failed calls per key and notifies channels; see `alert_on_failures`."""

    kind = "alert_on_failures"
    options_type = AlertOptions
    __signature__ = layer_signature(AlertOptions)

    def __init__(self, options: AlertOptions | None = None, /, **params: Any) -> None:
        o = self.options = options_from(AlertOptions, options, params)
        self.verdict = as_rules(o.verdict)
        rate = None if o.rate_threshold is None else float(o.rate_threshold)
        window = DEFAULT_RATE_WINDOW if o.rate_window is None else o.rate_window
        self.rules = Rules(
            threshold=o.threshold,
            repeat_interval=None if o.repeat_interval is None else float(o.repeat_interval),
            resolve=o.resolve,
            alert_on_permanent=o.alert_on_permanent,
            rate_threshold=rate,
            rate_window=window,
            min_calls=window if o.min_calls is None or rate is None else o.min_calls,
        )
        self.key = o.key
        self.store = _store(o.state)
        store = self.store
        self._shared: SharedStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, SharedStore) else None
        )
        self._async: AsyncStateStore | None = (
            store if type(store) is not MemoryStore and isinstance(store, AsyncStateStore) else None
        )
        self.channels: list[Channel] = build_channels(o.notify, float(o.timeout))
        delays = tuple(float(d) for d in o.retry_delays)
        self.workers = [
            Worker(c, retry_delays=delays, queue_size=o.queue_size) for c in self.channels
        ]
        self.history = AlertHistory(o.history_size)
        """This function's alerts, most recent last (what `fn.alerts` returns)."""
        self._state_key: str | None = None
        """Where a bound layer's counting state lives (made once, read on every call)."""

    # ------------------------------------------------------------------ binding

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> AlertLayer:
        bound = copy.copy(self)
        bound.key = self.key or key
        bound._state_key = _STATE_PREFIX + bound.key
        bound.history = AlertHistory(self.history.maxlen)
        return bound

    def describe(self) -> str:
        r = self.rules
        parts = [f"threshold={r.threshold}"]
        parts.append(
            f"repeat every {r.repeat_interval:g} s"
            if r.repeat_interval is not None
            else "no repeat"
        )
        if r.resolve:
            parts.append("resolve")
        if r.alert_on_permanent:
            parts.append("permanent at once")
        if r.rate_threshold is not None:
            parts.append(
                f"rate>={r.rate_threshold:.0%} of {r.rate_window} calls (min {r.min_calls})"
            )
        parts.append("notify " + (", ".join(c.name for c in self.channels) or "nobody"))
        if self.key is not None:
            parts.append(f"key={self.key}")
        return "alert_on_failures(" + "; ".join(parts) + ")"

    @property
    def dedup_key(self) -> str:
        """The key a trigger and its resolve share, in every process: `qwed-guard:<key>`."""
        return _DEDUP_PREFIX + (self.key or "")

    def state(self) -> State | None:
        """The stored counting state of this layer's key (None: healthy, nothing counted)."""
        return self.store.get(_STATE_PREFIX + (self.key or ""))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` seconds for this layer's channels to deliver what is pending."""
        return all(worker.flush(timeout) for worker in self.workers)

    def close(self, timeout: float = 1.0) -> None:
        """Flush, then stop this layer's delivery threads (they restart on the next alert)."""
        self.flush(timeout)
        for worker in self.workers:
            worker.stop(timeout)

    # ------------------------------------------------------------------ calls

    def exit(self, ctx: CallContext, state: None, outcome: CallOutcome) -> CallOutcome | Deferred:
        diagnosis = outcome.diagnosis
        failed = outcome.exception is not None or diagnosis.outcome not in ANSWERED
        if failed or not self._steady(ctx):
            if ctx.is_async and self._async is not None:
                # A shared store is awaited: the event loop never waits on it.
                return Deferred(
                    functools.partial(self._aobserve, ctx, diagnosis, failed),
                    lambda _value, _exc: outcome,
                )
            self._observe(ctx, diagnosis, failed=failed)
        return outcome

    def _steady(self, ctx: CallContext) -> bool:
        """True when a success changes nothing: `decide` keeps no state and sends no alert for
        a healthy key. With the in-process store that is seen without taking its lock; with a
        shared one, in the view read during this call (or within the store's `cache`)."""
        if self.rules.rate_threshold is not None:
            return False
        store = self.store
        key = self._state_key or _STATE_PREFIX + (self.key or ctx.function)
        if type(store) is MemoryStore:
            return store.peek(key) is None
        shared = self._shared
        if shared is None:
            return False
        age = max(shared.cache, clock.monotonic() - ctx.started)
        hit, state = shared.cached(key, age)
        if hit:
            return state is None
        if ctx.is_async:
            return False  # `_aobserve` reads it, awaited
        return shared.view(key, age) is None

    def _change(self, diagnosis: Diagnosis, failed: bool, now: float) -> Any:
        return functools.partial(
            decide,
            failed=failed,
            permanent=diagnosis.outcome is Outcome.PERMANENT,
            short_circuited=diagnosis.outcome is Outcome.SHORT_CIRCUITED,
            now=now,
            rules=self.rules,
        )

    def _observe(self, ctx: CallContext, diagnosis: Diagnosis, *, failed: bool) -> None:
        key = self.key or ctx.function
        try:
            now = clock.wall()
            decision = self.store.update(_STATE_PREFIX + key, self._change(diagnosis, failed, now))
            if decision is not None:
                self._raise_alert(ctx, key, decision, diagnosis, now)
        except Exception as exc:  # alerting must never break the call it watches
            alert_failed(f"alerting for {key}", exc)

    async def _aobserve(self, ctx: CallContext, diagnosis: Diagnosis, failed: bool) -> None:
        key = self.key or ctx.function
        store = self._async
        assert store is not None
        try:
            shared = self._shared
            if not failed and shared is not None and self.rules.rate_threshold is None:
                age = max(shared.cache, clock.monotonic() - ctx.started)
                if await shared.aview(_STATE_PREFIX + key, age) is None:
                    return  # healthy, staying healthy
            now = clock.wall()
            change = self._change(diagnosis, failed, now)
            decision = await store.aupdate(_STATE_PREFIX + key, change)
            if decision is not None:
                self._raise_alert(ctx, key, decision, diagnosis, now)
        except Exception as exc:  # alerting must never break the call it watches
            alert_failed(f"alerting for {key}", exc)

    def _raise_alert(
        self, ctx: CallContext, key: str, decision: Decision, diagnosis: Diagnosis, now: float
    ) -> None:
        resolved = decision["kind"] == "resolved"
        outcome = Outcome.VERIFIED if resolved else diagnosis.outcome
        raise_alert(
            ctx,
            self.history,
            self.workers,
            key=key,
            kind=decision["kind"],
            reason=decision["reason"],
            message=functools.partial(_message, key, decision, self.rules, outcome),
            failures=decision["failures"],
            outcome=outcome,
            error=None if resolved else diagnosis.error,
            now=now,
            dedup_key=_DEDUP_PREFIX + key,
            failure_rate=decision["rate"],
        )


@layer_decorator(AlertOptions, AlertLayer)
def alert_on_failures() -> None:
    """Alert once when `threshold` calls in a row fail, remind while it lasts, say when it ends.

    A call fails when its outcome is not verified (after any `@retry` inside) or it raises.
    - the `threshold`-th consecutive failure sends one `triggered` alert; a success resets;
    - while still failing, a `repeat` goes out at most every `repeat_interval` seconds (None:
      never), with the updated count;
    - the first success after an alert sends one `resolved` (`resolve=False`: none);
    - a permanent failure (bad key, exhausted quota) alerts at once (`alert_on_permanent`);
    - with `rate_threshold` (e.g. 0.5), an alert also fires when that share of the last
      `rate_window` calls (default 20, at least `min_calls` seen) failed: flapping that never
      makes `threshold` in a row. Such an alert resolves once the rate is back under it.
    `key` (default: the function's qualified name) names the alert and its dedup key; functions
    sharing a key share one count. `state` is where counts live (`"memory:"` by default).
    Alerts go to `notify` on background threads (`timeout` per request, retried after
    `retry_delays`); results and exceptions pass through unchanged. `fn.alerts` is the history.
    The parameters, their bounds and docs are `AlertOptions`'s fields.
    """
