"""How a pattern becomes a decorator: one `Layer` per pattern, one wrapper and one driver for all.

A call's outcome is a value. The innermost step runs the function once and turns what it did
into a `CallOutcome` (diagnosis, result or exception); every layer, on the way back up, receives
that value and returns one: the same, a substitute (a fallback), or a wait after which the
layers inside it run again (a retry). Nothing travels on the side, and nothing is judged twice.

A layer is three methods the drivers call, written once for sync and async: `enter` (before
the rest of the stack runs; it may stop the call with an outcome of its own), `exit` (after)
and `interrupted` (a KeyboardInterrupt or a cancellation passes through). The sync and the
async driver differ only in how they wait and await. Layers that only watch (the audit trail,
`@observed` hooks) are not steps at all: they are hooks started when the call starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

import wrapt

from qwed_guard import clock
from qwed_guard.context import CURRENT, CallContext, hook_failed
from qwed_guard.errors import bad_parameter
from qwed_guard.hooks import (
    Attempt,
    AttemptEnded,
    AttemptStarted,
    CallEnded,
    Hook,
    process_hooks,
)
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.verdicts import DEFAULT_RULES, VerdictRules, diagnose, judge_result, prefetch_keys

__all__ = [
    "CallOutcome",
    "Deferred",
    "GuardedFunction",
    "Layer",
    "ObserverLayer",
    "classify",
    "end_attempt",
    "guard",
    "observed",
    "outcome_of",
]

F = TypeVar("F", bound=Callable[..., Any])


class CallOutcome(NamedTuple):
    """How a call stands: what the last step decided, handed from layer to layer."""

    diagnosis: Diagnosis
    result: Any
    """What the caller receives when `exception` is None."""
    exception: BaseException | None
    """What the caller receives raised, if anything."""

    @property
    def outcome(self) -> Outcome:
        return self.diagnosis.outcome


class Deferred(NamedTuple):
    """An `enter` or `exit` that must await something (an async fallback handler, a shared
    state store) before it settles. Async calls only.

    `settle(value, exception)` gets what `call()` returned or raised and returns what `enter`
    or `exit` would have: for `enter` the layer's state or a `CallOutcome`, for `exit` a step.
    """

    call: Callable[[], Awaitable[Any]]
    settle: Callable[[Any, Exception | None], Any]


Step = CallOutcome | float | Deferred
"""What `exit` returns: the outcome to pass up, seconds to wait before running the layers
inside again, or an awaitable to settle first."""


def classify(obj: Any) -> Outcome:
    """The outcome of a QWED result, an exception, or any returned value.

    >>> classify(TimeoutError())
    <Outcome.TRANSIENT: 'transient'>
    """
    ctx = CURRENT.get()
    return diagnose(obj, wire=ctx.wire if ctx is not None else None).outcome


def outcome_of(exc: Exception) -> CallOutcome:
    """The outcome of an exception raised by a layer rather than by the function."""
    carried = getattr(exc, "outcome", None)
    if isinstance(carried, Outcome):
        # VerificationFailed, CircuitOpen and AttemptTimeout say how the call ended themselves.
        error = getattr(exc, "error", None)
        return CallOutcome(Diagnosis(carried, error if isinstance(error, str) else None), None, exc)
    return CallOutcome(diagnose(exc), None, exc)


class Layer:
    """One pattern's behaviour around a call. Override what the pattern needs."""

    kind: ClassVar[str]
    verdict: VerdictRules | None = None
    """How the stack judges results, when this layer was given `verdict=` (one per stack)."""
    hooks: tuple[Hook, ...] = ()
    """An observing layer's hooks: such a layer is not a step, it watches the whole call."""
    bound: float | None = None
    """Seconds within which the layers inside must finish (async calls only)."""

    def enter(self, ctx: CallContext) -> Any:
        """Before the layers inside run. Returns what `exit` is given back, or a
        `CallOutcome` that ends the call here (the layers inside do not run)."""
        return None

    def exit(self, ctx: CallContext, state: Any, outcome: CallOutcome) -> Step:
        """After the layers inside ran, with how they ended."""
        return outcome

    def interrupted(self, ctx: CallContext, state: Any, exc: BaseException) -> None:
        """An interrupt or a cancellation passes through: release, count nothing."""

    def expired(self, ctx: CallContext, state: Any, recorded: int, started: float) -> CallOutcome:
        """The layers inside ran past `bound` and were cancelled (the layer that set it)."""
        raise TypeError(f"{self.kind} sets no bound: nothing inside it can run past one")

    def describe(self) -> str:
        """A one-line, human-readable account of this layer and its parameters."""
        return self.kind

    def bind(self, fn: Callable[..., Any], name: str, key: str) -> Layer:
        """The layer to use for one decorated function.

        `name` is its qualified name, as records show it; `key` names its state (alert counters,
        breaker): the name, or `name#n` for the n-th live function of that name.

        Stateless layers return themselves; a layer with per-function state (alert counters,
        a breaker, the audit trail's query inference) returns its own copy for `fn`, so one
        decorator applied to two functions never mixes their state.
        """
        return self


class ObserverLayer(Layer):
    """`@observed(hook, ...)`: the function's calls are watched by these hooks."""

    kind = "observed"

    def __init__(self, hooks: tuple[Hook, ...]) -> None:
        self.hooks = tuple(hooks)

    def describe(self) -> str:
        names = [getattr(h, "__qualname__", type(h).__qualname__) for h in self.hooks]
        return "observed(" + ", ".join(names) + ")"


def observed(*hooks: Hook) -> Callable[[F], F]:
    """Watch every call of the decorated function with `hooks`, wherever it sits in a stack."""
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"a hook is a callable, got {type(hook).__name__}")
    layer = ObserverLayer(hooks)

    def decorate(fn: F) -> F:
        return guard(fn, layer)

    return decorate


# --- the innermost step: one attempt --------------------------------------------------

_new_tuple: Callable[..., Any] = tuple.__new__


def end_attempt(
    ctx: CallContext, diagnosis: Diagnosis, started: float, result: Any, exc: BaseException | None
) -> CallOutcome:
    """Record how an attempt ended; also used by layers that end one without a call."""
    # tuple.__new__ skips the NamedTuple's Python-level constructor: one is made per attempt.
    attempt: Attempt = _new_tuple(
        Attempt,
        (
            ctx.attempt,
            diagnosis.outcome,
            diagnosis.error,
            clock.monotonic() - started,
            ctx.wait_before,
            diagnosis.status,
            ctx.replies.reused_by(ctx.attempt) if ctx.replies is not None else 0,
        ),
    )
    ctx.attempts.append(attempt)
    if ctx.listeners or ctx.events is not None:
        ended = exc if exc is not None else result
        ctx.send(_new_tuple(AttemptEnded, (ctx.attempt, clock.wall(), attempt, ended, diagnosis)))
    outcome: CallOutcome = _new_tuple(CallOutcome, (diagnosis, result, exc))
    return outcome


def _attempt(
    ctx: CallContext, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> CallOutcome:
    ctx.wire = None
    if ctx.events is not None or (ctx.listeners and AttemptStarted not in ctx.muted):  # wants()
        ctx.send(AttemptStarted(ctx.attempt, clock.wall(), ctx.wait_before))
    started = clock.monotonic()
    ctx.in_user_code = True
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        ctx.in_user_code = False
        return end_attempt(
            ctx, diagnose(exc, wire=ctx.wire, classifier=ctx.classifier), started, None, exc
        )
    finally:
        ctx.in_user_code = False
    classifier = ctx.classifier
    if classifier is None and not isinstance(result, BaseException):
        diagnosis = judge_result(result, ctx.rules, wire=ctx.wire)  # `diagnose`, one call less
    else:
        diagnosis = diagnose(result, wire=ctx.wire, classifier=classifier, rules=ctx.rules)
    return end_attempt(ctx, diagnosis, started, result, None)


async def _attempt_async(
    ctx: CallContext,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> CallOutcome:
    ctx.wire = None
    if ctx.events is not None or (ctx.listeners and AttemptStarted not in ctx.muted):  # wants()
        ctx.send(AttemptStarted(ctx.attempt, clock.wall(), ctx.wait_before))
    started = clock.monotonic()
    ctx.in_user_code = True
    try:
        result = await fn(*args, **kwargs)
    except Exception as exc:
        ctx.in_user_code = False
        return end_attempt(
            ctx, diagnose(exc, wire=ctx.wire, classifier=ctx.classifier), started, None, exc
        )
    finally:
        ctx.in_user_code = False
    rules = ctx.rules
    if rules.require_attestation and ctx.classifier is None:
        # The keys are fetched here, awaited, so the verdict below never blocks the loop.
        keys = await prefetch_keys(rules)
        if isinstance(keys, Diagnosis):
            return end_attempt(ctx, keys, started, result, None)
    diagnosis = diagnose(result, wire=ctx.wire, classifier=ctx.classifier, rules=rules)
    return end_attempt(ctx, diagnosis, started, result, None)


# --- the drivers ----------------------------------------------------------------------
# A stack is compiled once, at decoration, into one function per layer, each closing over
# the next: a call pays for the layers' own methods, not for finding them.

Steps = tuple[tuple[Layer, "str | None"], ...]
"""The layers a call runs through, outermost first, each with the policy hash it stamps."""
Run = Callable[[CallContext, Callable[..., Any], tuple[Any, ...], dict[str, Any]], CallOutcome]
RunAsync = Callable[
    [CallContext, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Awaitable[CallOutcome]
]


def _overridden(layer: Layer, name: str) -> Any:
    """`layer`'s method `name`, or None when it keeps Layer's own (which does nothing)."""
    if getattr(type(layer), name) is getattr(Layer, name):
        return None
    return getattr(layer, name)


def _step(layer: Layer, policy_hash: str | None, inner: Run) -> Run:
    enter = _overridden(layer, "enter")
    leave = _overridden(layer, "exit")
    interrupted = _overridden(layer, "interrupted")
    kind = layer.kind

    def run(
        ctx: CallContext, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> CallOutcome:
        if policy_hash is not None:
            ctx.policy_hash = policy_hash
        state = None
        if enter is not None:
            try:
                state = enter(ctx)
            except Exception as exc:
                return outcome_of(exc)
            if type(state) is CallOutcome:
                return state
        try:
            while True:
                outcome = inner(ctx, fn, args, kwargs)
                if leave is None:
                    return outcome
                try:
                    step = leave(ctx, state, outcome)
                except Exception as exc:
                    return outcome_of(exc)
                if type(step) is CallOutcome:
                    return step
                if type(step) is float:
                    clock.active().sleep(step)
                    continue
                raise TypeError(f"{kind}.exit returned {step!r} in a synchronous call")
        except BaseException as exc:
            if interrupted is not None:
                interrupted(ctx, state, exc)
            raise

    return run


def _step_async(layer: Layer, policy_hash: str | None, inner: RunAsync) -> RunAsync:
    enter = _overridden(layer, "enter")
    leave = _overridden(layer, "exit")
    interrupted = _overridden(layer, "interrupted")
    bound = layer.bound
    kind = layer.kind

    async def run(
        ctx: CallContext, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> CallOutcome:
        if policy_hash is not None:
            ctx.policy_hash = policy_hash
        state = None
        if enter is not None:
            try:
                state = enter(ctx)
                if type(state) is Deferred:  # a shared store to await before the call
                    state = await _settle(state)
            except Exception as exc:
                return outcome_of(exc)
            if type(state) is CallOutcome:
                return state
        try:
            while True:
                if bound is None:
                    outcome = await inner(ctx, fn, args, kwargs)
                else:
                    outcome = await _bounded(layer, state, bound, inner, ctx, fn, args, kwargs)
                if leave is None:
                    return outcome
                try:
                    step = leave(ctx, state, outcome)
                    if type(step) is Deferred:
                        step = await _settle(step)
                except Exception as exc:
                    return outcome_of(exc)
                if type(step) is CallOutcome:
                    return step
                if type(step) is float:
                    await clock.active().asleep(step)
                    continue
                raise TypeError(f"{kind}.exit returned {step!r}")
        except BaseException as exc:
            if interrupted is not None:
                interrupted(ctx, state, exc)
            raise

    return run


def _compile(steps: Steps) -> Run:
    run: Run = _attempt
    for layer, policy_hash in reversed(steps):
        run = _step(layer, policy_hash, run)
    return run


def _compile_async(steps: Steps) -> RunAsync:
    run: RunAsync = _attempt_async
    for layer, policy_hash in reversed(steps):
        run = _step_async(layer, policy_hash, run)
    return run


async def _settle(deferred: Deferred) -> Any:
    try:
        value = await deferred.call()
    except Exception as exc:
        return deferred.settle(None, exc)
    return deferred.settle(value, None)


async def _bounded(
    layer: Layer,
    state: Any,
    bound: float,
    inner: RunAsync,
    ctx: CallContext,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> CallOutcome:
    recorded = len(ctx.attempts)
    started = clock.monotonic()
    timer = asyncio.timeout(bound)
    try:
        async with timer:
            return await inner(ctx, fn, args, kwargs)
    except TimeoutError as exc:
        if not timer.expired():
            raise
        outcome = layer.expired(ctx, state, recorded, started)
        if outcome.exception is not None:
            outcome.exception.__cause__ = exc
        return outcome


def _deliver(outcome: CallOutcome) -> Any:
    exc = outcome.exception
    if exc is not None:
        raise exc
    return outcome.result


_IGNORES_NOTHING: frozenset[type] = frozenset()


def _watch(ctx: CallContext, hooks: tuple[Hook, ...]) -> None:
    """Start the call's watchers; nothing any of them ignores will be built."""
    muted: frozenset[type] | None = None
    for hook in hooks:
        try:
            watcher = hook(ctx)
        except Exception as exc:
            hook_failed(ctx, hook, exc)
            continue
        if watcher is None:
            continue
        ctx.listeners.append(watcher)
        ignores: frozenset[type] = getattr(watcher, "ignores", _IGNORES_NOTHING)
        muted = ignores if muted is None else muted & ignores
    if muted:
        ctx.muted = muted


def _end(ctx: CallContext, outcome: CallOutcome) -> None:
    diagnosis, result, exception = outcome
    ctx.send(_new_tuple(CallEnded, (ctx.attempt, clock.wall(), diagnosis, result, exception)))
    # The watchers hold the context and the context holds them: let both go with the call,
    # not with the next run of the cycle collector.
    ctx.listeners = []


def _interrupted(ctx: CallContext, exc: BaseException) -> None:
    """A call cut short still ends for its watchers (the audit trail records it)."""
    if ctx.listeners or ctx.events is not None:
        _end(ctx, CallOutcome(diagnose(exc), None, exc))


def _function_name(fn: Callable[..., Any]) -> str:
    root = inspect.unwrap(fn)
    module = getattr(root, "__module__", None) or "?"
    qualname = getattr(root, "__qualname__", None) or getattr(root, "__name__", repr(root))
    return f"{module}.{qualname}"


# The functions that hold each state key in this process (alert and breaker state).
_KEY_HOLDERS: dict[str, weakref.ReferenceType[Any]] = {}
_KEY_LOCK = threading.Lock()


def _state_key(fn: Callable[..., Any], name: str) -> str:
    """The key of `fn`'s alert and breaker state: its name, unless another live function has it.

    Two functions made by one factory share a qualified name. The first keeps the name, the
    n-th gets `name#n`, in the order they are decorated: stable across processes that build
    them in the same order (fleet state), and never shared by accident. Give `key=` to share.
    """
    root = inspect.unwrap(fn)
    with _KEY_LOCK:
        for number in itertools.count(1):
            key = name if number == 1 else f"{name}#{number}"
            holder = _KEY_HOLDERS.get(key)
            held = holder() if holder is not None else None
            if held is None or held is root:
                # A builtin is not weak-referenceable: there is nothing to tell apart.
                with contextlib.suppress(TypeError):
                    _KEY_HOLDERS[key] = weakref.ref(root)
                return key
    raise AssertionError("unreachable")


def _chain_rules(chain: tuple[tuple[Layer, str | None], ...]) -> VerdictRules:
    """The one set of verdict rules a stack runs with (`verdict=` given once, or the defaults)."""
    found = [layer.verdict for layer, _ in chain if layer.verdict is not None]
    if any(rules != found[0] for rules in found[1:]):
        raise bad_parameter("verdict", "given to two layers of one stack; give it once")
    return found[0] if found else DEFAULT_RULES


Chain = tuple[tuple[Layer, "str | None"], ...]
"""A function's layers, outermost first, each with the policy hash it stamps (if any)."""


def _chain_wrapper(chain: Chain, name: str, is_async: bool) -> Callable[..., Any]:
    """One wrapper that runs every layer of `chain` around the function.

    A stack of decorators collapses into this single wrapper: a call pays for one wrapper
    and one driver, not one per layer. Observing layers become the call's hooks.
    """
    rules = _chain_rules(chain)
    steps: Steps = tuple((layer, h) for layer, h in chain if not layer.hooks)
    run = _compile(steps)
    run_async = _compile_async(steps)
    own_hooks = tuple(hook for layer, _ in chain for hook in layer.hooks)
    outer_hash = chain[0][1]
    # (process hooks, them followed by the function's own): rebuilt only when they change.
    joined: list[tuple[tuple[Hook, ...], tuple[Hook, ...]]] = [((), own_hooks)]

    def open_(wrapped_args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallContext:
        # The context sees the arguments as the caller wrote them, `self` included.
        ctx = CallContext(name, wrapped_args, kwargs)
        ctx.rules = rules
        if is_async:
            ctx.is_async = True
        if outer_hash is not None:
            ctx.policy_hash = outer_hash
        # Process-wide hooks first: they see the call before the function's own (the audit
        # trail can then record what a tracing hook started).
        process = process_hooks()
        seen, hooks = joined[0]
        if process is not seen:
            hooks = process + own_hooks
            joined[0] = (process, hooks)
        if hooks:
            _watch(ctx, hooks)
        return ctx

    def close(ctx: CallContext, outcome: CallOutcome) -> Any:
        if ctx.listeners or ctx.events is not None:
            _end(ctx, outcome)
        if ctx.failure is not None:
            raise ctx.failure  # the audit trail could not record the call: fail closed
        return _deliver(outcome)

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            ctx = CURRENT.get()
            if ctx is not None and not ctx.in_user_code:
                # Called by a layer of another guarded call: run as part of it.
                ctx.rules = rules
                return _deliver(await run_async(ctx, wrapped, args, kwargs))
            ctx = open_(args if instance is None else (instance, *args), kwargs)
            token = CURRENT.set(ctx)
            try:
                outcome = await run_async(ctx, wrapped, args, kwargs)
            except BaseException as exc:
                _interrupted(ctx, exc)
                raise
            finally:
                CURRENT.reset(token)
            if ctx.listeners or ctx.events is not None or ctx.failure is not None:
                return close(ctx, outcome)
            if outcome.exception is not None:
                raise outcome.exception
            return outcome.result

        return async_wrapper

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = CURRENT.get()
        if ctx is not None and not ctx.in_user_code:
            ctx.rules = rules
            return _deliver(run(ctx, wrapped, args, kwargs))
        ctx = open_(args if instance is None else (instance, *args), kwargs)
        token = CURRENT.set(ctx)
        try:
            outcome = run(ctx, wrapped, args, kwargs)
        except BaseException as exc:
            _interrupted(ctx, exc)
            raise
        finally:
            CURRENT.reset(token)
        if ctx.listeners or ctx.events is not None or ctx.failure is not None:
            return close(ctx, outcome)
        # Nobody watches: `close` inlined, as the success path runs it on every call.
        if outcome.exception is not None:
            raise outcome.exception
        return outcome.result

    return wrapper


class _BoundGuardedFunction(wrapt.BoundFunctionWrapper[..., Any]):
    """A guarded method looked up on an instance: exposes the same inspection properties."""

    @property
    def guard_layers(self) -> list[Layer]:
        layers: list[Layer] = self._self_parent.guard_layers
        return layers

    def find_layer(self, kind: str) -> Layer | None:
        found: Layer | None = self._self_parent.find_layer(kind)
        return found

    @property
    def alerts(self) -> Any:
        return self._self_parent.alerts

    @property
    def breaker(self) -> Any:
        return self._self_parent.breaker


class GuardedFunction(wrapt.FunctionWrapper[..., Any]):
    """A function wrapped by one qwed_guard layer (and, through it, by the layers below)."""

    __bound_function_wrapper__ = _BoundGuardedFunction
    _self_chain: Chain

    def __init__(
        self,
        fn: Callable[..., Any],
        layer: Layer,
        *,
        policy_hash: str | None = None,
        verdict: VerdictRules | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@{layer.kind} decorates a callable, got {type(fn).__name__}")
        below = fn if type(fn) is GuardedFunction else None
        name = _function_name(fn)
        layer = layer.bind(fn, name, _state_key(fn, name))
        if verdict is not None:
            layer = copy.copy(layer)
            layer.verdict = verdict
        # Stacked decorators collapse: one wrapper around the function runs every layer.
        chain: Chain = ((layer, policy_hash),)
        target: Callable[..., Any] = fn
        if below is not None:
            below_chain: Chain = below._self_chain
            chain += below_chain
            target = below.__wrapped__
        wrapper = _chain_wrapper(chain, name, inspect.iscoroutinefunction(target))
        super().__init__(target, wrapper)
        self._self_layer = layer
        self._self_below = below
        self._self_chain = chain

    @property
    def guard_layers(self) -> list[Layer]:
        """This function's layers, outermost first."""
        layers: list[Layer] = [self._self_layer]
        below = self._self_below
        if below is not None:
            layers.extend(below.guard_layers)
        return layers

    def find_layer(self, kind: str) -> Layer | None:
        for layer in self.guard_layers:
            if layer.kind == kind:
                return layer
        return None

    @property
    def alerts(self) -> Any:
        """The alert history of this function's `alert_on_failures` layer."""
        layer = self.find_layer("alert_on_failures")
        if layer is None:
            raise AttributeError("this function has no alert_on_failures layer")
        return getattr(layer, "history")  # noqa: B009 - the alerting module defines it

    @property
    def breaker(self) -> Any:
        """The state and counts of this function's circuit breaker."""
        layer = self.find_layer("circuit_breaker")
        if layer is None:
            raise AttributeError("this function has no circuit_breaker layer")
        return getattr(layer, "breaker")  # noqa: B009 - the breaker module defines it


def guard(
    fn: F, layer: Layer, *, policy_hash: str | None = None, verdict: VerdictRules | None = None
) -> F:
    """Wrap `fn` in `layer`, keeping its type for the type checker.

    `policy_hash` (given by a Policy to its outermost layer) is stamped on every call's context;
    `verdict` (a policy's or guard_client's) sets how the stack judges results.
    """
    wrapped = GuardedFunction(fn, layer, policy_hash=policy_hash, verdict=verdict)
    return wrapped  # type: ignore[return-value]
