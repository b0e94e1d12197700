"""How a pattern becomes a decorator: one `Layer` per pattern, one wrapper type for all.

Each decorator builds a `Layer` and wraps the function in a `GuardedFunction` (a wrapt
FunctionWrapper, so signatures, methods and introspection keep working). The outermost layer of a
stack opens the call's context; the innermost one runs the attempt and reports it. Layers in
between only see `proceed()`, the rest of the stack.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import inspect
import itertools
import threading
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

import wrapt

from qwed_guard import clock
from qwed_guard.context import (
    ATTEMPT_ENDED,
    ATTEMPT_STARTED,
    Attempt,
    CallContext,
    _current,
    open_call,
)
from qwed_guard.errors import bad_parameter
from qwed_guard.outcomes import Diagnosis, Outcome
from qwed_guard.verdicts import DEFAULT_RULES, VerdictRules, diagnose, prefetch_keys

F = TypeVar("F", bound=Callable[..., Any])


class Layer(abc.ABC):
    """One pattern's behaviour around a call."""

    kind: ClassVar[str]
    verdict: VerdictRules | None = None
    """How the stack judges results, when this layer was given `verdict=` (one per stack)."""

    @abc.abstractmethod
    def around(self, ctx: CallContext, proceed: Callable[[], Any]) -> Any:
        """Run the rest of the stack (`proceed`) with this pattern around it."""

    @abc.abstractmethod
    async def around_async(self, ctx: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """The same for `async def` functions."""

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


def record_attempt(ctx: CallContext, diagnosis: Diagnosis, started: float, result: Any) -> Attempt:
    """Report how an attempt ended; also used by layers that end an attempt without a call."""
    attempt = Attempt(
        ctx.attempt,
        diagnosis.outcome,
        diagnosis.error,
        clock.monotonic() - started,
        ctx.wait_before,
        diagnosis.status,
        ctx.replies.reused_by(ctx.attempt) if ctx.replies is not None else 0,
    )
    ctx.attempts.append(attempt)
    ctx.last = diagnosis
    ctx.last_result = result
    if ctx.listeners or ctx.events is not None:
        ctx.emit(ATTEMPT_ENDED, record=attempt, result=result, diagnosis=diagnosis)
    return attempt


def _diagnose_result(ctx: CallContext, result: Any) -> Diagnosis:
    return diagnose(result, wire=ctx.wire, classifier=ctx.classifier, rules=ctx.rules)


def _run_attempt(
    ctx: CallContext, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    ctx.wire = None
    if ctx.events is not None or (ctx.listeners and ATTEMPT_STARTED not in ctx.muted):
        ctx.emit(ATTEMPT_STARTED, wait_before=ctx.wait_before)
    started = clock.monotonic()
    ctx.in_user_code = True
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        ctx.in_user_code = False
        record_attempt(ctx, diagnose(exc, wire=ctx.wire, classifier=ctx.classifier), started, exc)
        raise
    finally:
        ctx.in_user_code = False
    record_attempt(ctx, _diagnose_result(ctx, result), started, result)
    return result


async def _run_attempt_async(
    ctx: CallContext,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    ctx.wire = None
    if ctx.events is not None or (ctx.listeners and ATTEMPT_STARTED not in ctx.muted):
        ctx.emit(ATTEMPT_STARTED, wait_before=ctx.wait_before)
    started = clock.monotonic()
    ctx.in_user_code = True
    try:
        result = await fn(*args, **kwargs)
    except Exception as exc:
        ctx.in_user_code = False
        record_attempt(ctx, diagnose(exc, wire=ctx.wire, classifier=ctx.classifier), started, exc)
        raise
    finally:
        ctx.in_user_code = False
    rules = ctx.rules
    if rules.require_attestation and ctx.classifier is None:
        # The keys are fetched here, awaited, so the verdict below never blocks the loop.
        keys = await prefetch_keys(rules)
        if isinstance(keys, Diagnosis):
            record_attempt(ctx, keys, started, result)
            return result
    record_attempt(ctx, _diagnose_result(ctx, result), started, result)
    return result


_NOTHING_JUDGED = Diagnosis(Outcome.UNVERIFIABLE, "no attempt was judged")


def call_diagnosis(ctx: CallContext, exc: BaseException | None = None) -> Diagnosis:
    """How the call ended so far: the last attempt's diagnosis, or the exception's own."""
    last = ctx.last
    if exc is None:
        # No attempt recorded means nothing was judged: never report that as verified.
        return last if last is not None else _NOTHING_JUDGED
    carried = getattr(exc, "outcome", None)
    if isinstance(carried, Outcome):
        # VerificationFailed and the breaker's CircuitOpen say how the call ended themselves.
        error = getattr(exc, "error", None)
        return Diagnosis(carried, error if isinstance(error, str) else None)
    if last is not None and last.outcome is not Outcome.VERIFIED and ctx.last_result is exc:
        return last
    return diagnose(exc)


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


def _chain_rules(chain: Chain) -> VerdictRules:
    """The one set of verdict rules a stack runs with (`verdict=` given once, or the defaults)."""
    found = [layer.verdict for layer, _ in chain if layer.verdict is not None]
    if any(rules != found[0] for rules in found[1:]):
        raise bad_parameter("verdict", "given to two layers of one stack; give it once")
    return found[0] if found else DEFAULT_RULES


Chain = tuple[tuple[Layer, "str | None"], ...]
"""A function's layers, outermost first, each with the policy hash it stamps (if any)."""


def _stamped(layer: Layer, policy_hash: str, ctx: CallContext, proceed: Callable[[], Any]) -> Any:
    ctx.policy_hash = policy_hash
    return layer.around(ctx, proceed)


def _stamped_async(
    layer: Layer, policy_hash: str, ctx: CallContext, proceed: Callable[[], Awaitable[Any]]
) -> Awaitable[Any]:
    ctx.policy_hash = policy_hash
    return layer.around_async(ctx, proceed)


def _links(
    chain: Chain, is_async: bool
) -> tuple[tuple[Callable[..., Any], str | None, Layer], ...]:
    """Each layer's entry point, innermost first, as a call's `proceed` chain is built."""
    links: list[tuple[Callable[..., Any], str | None, Layer]] = []
    for layer, policy_hash in reversed(chain):
        links.append((layer.around_async if is_async else layer.around, policy_hash, layer))
    return tuple(links)


def _chain_wrapper(chain: Chain, name: str, is_async: bool) -> Callable[..., Any]:
    """One wrapper that runs every layer of `chain` around the function.

    A stack of decorators collapses into this single wrapper: the layers see the same
    `proceed()` as if each had its own, but a call pays for one wrapper, not one per layer.
    The `proceed` of each layer is a `functools.partial`, made per call (it carries the call).
    """
    links = _links(chain, is_async)
    rules = _chain_rules(chain)
    run = _run_attempt_async if is_async else _run_attempt
    stamped = _stamped_async if is_async else _stamped
    outer_around, outer_hash, _ = links[-1]
    inner = links[:-1]

    def build(
        ctx: CallContext, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Callable[[], Any]:
        proceed: Callable[[], Any] = partial(run, ctx, wrapped, args, kwargs)
        for around, policy_hash, layer in inner:
            if policy_hash is None:
                proceed = partial(around, ctx, proceed)
            else:
                proceed = partial(stamped, layer, policy_hash, ctx, proceed)
        return proceed

    if is_async:

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            ctx = _current.get()
            owner = ctx is None or ctx.in_user_code
            if owner:
                ctx = open_call(name, args if instance is None else (instance, *args), kwargs)
                token = _current.set(ctx)
            assert ctx is not None
            ctx.rules = rules
            if outer_hash is not None:
                ctx.policy_hash = outer_hash
            try:
                return await outer_around(ctx, build(ctx, wrapped, args, kwargs))
            finally:
                if owner:
                    _current.reset(token)

        return async_wrapper

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = _current.get()
        owner = ctx is None or ctx.in_user_code
        if owner:
            # The context sees the arguments as the caller wrote them, `self` included.
            ctx = open_call(name, args if instance is None else (instance, *args), kwargs)
            token = _current.set(ctx)
        assert ctx is not None
        ctx.rules = rules
        if outer_hash is not None:
            ctx.policy_hash = outer_hash
        try:
            return outer_around(ctx, build(ctx, wrapped, args, kwargs))
        finally:
            if owner:
                _current.reset(token)

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
