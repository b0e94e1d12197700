"""Options: each pattern's parameters, declared once.

A pattern declares its parameters as a frozen dataclass whose fields carry how each is checked
(`integer`, `number`, `flag`, `choice`, `outcomes`, `text`, `function`, `data`) and a one-line
doc, and makes its decorator from it:

    @dataclass(frozen=True, slots=True, kw_only=True)
    class RetryOptions(Options):
        max_tries: int = integer(3, 1, 100, "Attempts in all, the first included.")
        ...

    @layer_decorator(RetryOptions, RetryLayer)
    def retry() -> None: ...  # its name and docstring are the decorator's

That one declaration is:

- the decorator's keyword parameters: the dataclass's synthesized `__init__`, captured with a
  ParamSpec, so a type checker checks `retry(max_tries=3)` and refuses `retry(max_trys=3)`;
- the layer's constructor: `RetryLayer(RetryOptions(...))`, or the same keywords;
- the validator's rules: `problems(RetryOptions, values)` lists every bad value at once, named,
  and making the options raises them all (`ParameterError.errors`);
- the policy loader's keys, defaults and normal form, and the JSON Schema of policy files;
- `describe()` for the layers that only show their parameters.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import inspect
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    NamedTuple,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

from qwed_guard.errors import bad_parameter
from qwed_guard.outcomes import Outcome

if TYPE_CHECKING:
    from qwed_guard.layer import Layer

__all__ = ["BareDecorator", "Decorator", "LayerDecorator", "Options", "Problem", "Spec", "check"]
__all__ += ["choice", "data", "flag", "function", "integer", "number", "outcomes", "text"]
__all__ += ["declared", "decorator", "describe", "layer_decorator", "problems", "required"]

P = ParamSpec("P")
T = TypeVar("T")
Opts = TypeVar("Opts", bound="Options")
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
Why = tuple[str, bool] | None
"""Why a value is refused, and whether for its type; None when it is not."""

_SPEC = "qwed_guard.spec"


class Problem(NamedTuple):
    """One bad value: the parameter's name (or dotted path), why, and whether it is a type error."""

    param: str
    text: str
    wrong_type: bool = False


# ---------------------------------------------------------------------------------------------
# How one option is checked and written as data


def _anything(value: Any) -> Why:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """How one option is checked (`test`, None aside) and how a policy file writes it (`json`,
    a JSON Schema without null)."""

    doc: str = ""
    test: Callable[[Any], Why] = _anything
    json: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False
    """None is allowed (and means unset)."""
    importable: bool = False
    """A policy file may name a function here as `module:function`."""
    normal: Callable[[Any], Any] | None = None
    """The policy's normal form of a value (already plain data)."""


def _option(default: Any, test: Callable[[Any], Why], doc: str, json: Any, **spec: Any) -> Any:
    metadata = {_SPEC: Spec(doc=doc, test=test, json=json, **spec)}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


STRING: Mapping[str, Any] = {"type": "string"}
"""The JSON Schema of an option a policy writes as a string (a URL, a name)."""
_DOTTED = {"type": "string", "pattern": "[:.]"}
_CHANNEL = {
    "anyOf": [
        {"type": "string", "description": "log, or module:function"},
        {"type": "object", "description": "{channel: {settings}}: slack, webhook, ..."},
    ]
}
CHANNELS: Mapping[str, Any] = {"anyOf": [_CHANNEL, {"type": "array", "items": _CHANNEL}]}
"""The JSON Schema of alert channels (`notify`)."""


def _number_like(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def required(option: Any) -> Mapping[str, Any]:
    """The metadata of an option with no default, for `field(metadata=...)`: a type checker
    sees a required field only in a plain `field()` call.

        seconds: float = field(metadata=required(number(MISSING, 0, 86400, "...")))
    """
    assert isinstance(option, dataclasses.Field)
    return option.metadata


def integer(default: T, least: int, most: int, doc: str, *, optional: bool = False) -> T:
    """An int in `[least, most]`."""

    def test(value: Any) -> Why:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an int, got {type(value).__name__}", True
        if value < least:
            return f"must be >= {least}, got {value}", False
        if value > most:
            return f"must be <= {most}, got {value}", False
        return None

    json = {"type": "integer", "minimum": least, "maximum": most}
    return cast(T, _option(default, test, doc, json, optional=optional))


def number(
    default: T,
    least: float,
    most: float,
    doc: str,
    *,
    above: bool = False,
    optional: bool = False,
    what: str = "a number",
    span: bool | str = False,
) -> T:
    """A finite number in `[least, most]` (`(least, most]` when `above`); `what` names it in a
    type error, `span` names the range in a range error (True: both ends)."""
    low = f"> {least:g}" if above else f">= {least:g}"
    if span is True:
        span = f"{low} and <= {most:g}"

    def test(value: Any) -> Why:
        if not _number_like(value):
            return f"must be {what}, got {type(value).__name__}", True
        too_low = not (value > least if above else value >= least)  # NaN too
        if too_low or not value <= most or not math.isfinite(value):
            return f"must be {span or (low if too_low else f'<= {most:g}')}, got {value!r}", False
        return None

    json = {"type": "number", "exclusiveMinimum" if above else "minimum": least, "maximum": most}
    return cast(T, _option(default, test, doc, json, optional=optional))


def flag(default: T, doc: str) -> T:
    """true or false."""

    def test(value: Any) -> Why:
        return None if isinstance(value, bool) else (f"must be true or false, got {value!r}", True)

    return cast(T, _option(default, test, doc, {"type": "boolean"}))


def choice(
    default: T, names: Iterable[str], doc: str, *, callable: bool = False, optional: bool = False
) -> T:
    """One of `names` (or, with `callable`, a function: `module:function` in a policy)."""
    names = tuple(names)
    quoted = [repr(name) for name in names]
    if len(names) == 2 and not callable:
        wanted = " or ".join(quoted)
    else:
        wanted = "one of " + ", ".join(quoted) + (", a callable" if callable else "")
    none = " or None" if optional else ""
    is_function = builtins.callable

    def test(value: Any) -> Why:
        if (isinstance(value, str) and value in names) or (callable and is_function(value)):
            return None
        if callable and not isinstance(value, str):
            return f"must be a name, a callable{none}, got {value!r}", True
        return f"must be {wanted}{none}, got {value!r}", not isinstance(value, str)

    json: Mapping[str, Any] = {"enum": list(names)}
    if callable:
        json = {"anyOf": [json, _DOTTED]}
    spec = {"optional": optional, "importable": callable}
    return cast(T, _option(default, test, doc, json, **spec))


def _outcome_set(value: Any) -> Any:
    # A set: order and repeats carry no meaning, so they must not change the policy's hash.
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and all(isinstance(item, str) for item in items):
        return sorted(set(items))
    return value


def outcomes(
    default: T, allowed: Iterable[Outcome], refused: str, doc: str, *, nonempty: bool = False
) -> T:
    """A set of outcome names out of `allowed` (one name alone is a set of one); `refused` says
    why another outcome is refused, `{}` standing for it."""
    allowed = frozenset(allowed)
    names = ", ".join(sorted(o.value for o in allowed))

    def test(value: Any) -> Why:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, Iterable):
            return f"must be a list of outcome names, got {type(value).__name__}", True
        count = 0
        for item in items:
            try:
                outcome = Outcome(item)
            except ValueError:
                return f"unknown outcome {item!r}; choose from {names}", False
            if outcome not in allowed:
                return f"{refused.format(outcome.value)} (choose from {names})", False
            count += 1
        return ("needs at least one outcome", False) if nonempty and not count else None

    enum_ = {"enum": sorted(o.value for o in allowed)}
    listed = {"type": "array", "items": enum_, **({"minItems": 1} if nonempty else {})}
    json = {"anyOf": [enum_, listed]}
    return cast(T, _option(default, test, doc, json, normal=_outcome_set))


def text(default: T, doc: str) -> T:
    """A non-empty string, or None."""

    def test(value: Any) -> Why:
        if isinstance(value, str) and value.strip():
            return None
        return f"must be a non-empty string, got {value!r}", not isinstance(value, str)

    return cast(T, _option(default, test, doc, {"type": "string", "minLength": 1}, optional=True))


def function(default: T, doc: str) -> T:
    """A callable, or None; a policy names it `module:function`."""

    def test(value: Any) -> Why:
        return None if callable(value) else (f"must be callable, got {type(value).__name__}", True)

    return cast(T, _option(default, test, doc, _DOTTED, optional=True, importable=True))


def seconds_list(default: T, most: float, count: int, doc: str) -> T:
    """A list of at most `count` waits, each in `[0, most]` seconds."""

    def test(value: Any) -> Why:
        if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
            return "must be a list of seconds", True
        if len(value) > count:
            return f"at most {count} delays, got {len(value)}", False
        for index, item in enumerate(value):
            if not _number_like(item) or not 0 <= item <= most:
                return f"[{index}] must be a number >= 0 and <= {most:g}, got {item!r}", False
        return None

    item = {"type": "number", "minimum": 0, "maximum": most}
    json = {"type": "array", "items": item, "maxItems": count}
    return cast(T, _option(default, test, doc, json))


def data(
    default: T,
    doc: str,
    json: Mapping[str, Any] | None = None,
    *,
    test: Callable[[Any], Why] = _anything,
    importable: bool = False,
) -> T:
    """Anything `test` accepts (everything by default); the layer checks the rest itself."""
    return cast(T, _option(default, test, doc, json or {}, importable=importable))


def judged_by() -> Any:
    """Every decorator's `verdict`: VerdictRules or a judge function (a policy file has its own
    top-level `verdict` table instead)."""
    doc = "How results are judged; in a policy file, use the top-level verdict table."
    return data(None, doc, {"type": "null"})


# ---------------------------------------------------------------------------------------------
# Declarations and the one validator


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Base of every pattern's options: checked, all at once, when made."""

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in declared(type(self)).values()}
        check(type(self), given)

    @classmethod
    def relations(cls, values: Mapping[str, Any]) -> Iterator[Problem]:
        """Problems between options (each valid on its own); `values` has every option."""
        return iter(())


def declared(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    """The options a dataclass declares, by name, in order."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def spec_of(option: dataclasses.Field[Any]) -> Spec:
    spec = option.metadata.get(_SPEC)
    return spec if isinstance(spec, Spec) else Spec()


def has_default(option: dataclasses.Field[Any]) -> bool:
    return option.default is not dataclasses.MISSING


def problems(cls: type[Any], values: Mapping[str, Any], *, relations: bool = True) -> list[Problem]:
    """Every problem of `values` as options of `cls`, each named by its key.

    Unknown keys and missing required ones are problems too; `relations` between options are
    checked once every option is valid on its own."""
    options = declared(cls)
    found: list[Problem] = []
    for key in values:
        if key not in options:
            found.append(Problem(str(key), unknown(key, options)))
    for name, option in options.items():
        if name not in values:
            if not has_default(option):
                found.append(Problem(name, "required"))
            continue
        value = values[name]
        spec = spec_of(option)
        if value is None and (spec.optional or option.default is None):
            continue
        why = spec.test(value)
        if why is not None:
            found.append(Problem(name, *why))
    between = getattr(cls, "relations", None)
    if relations and not found and between is not None:
        full = {name: values.get(name, option.default) for name, option in options.items()}
        found.extend(between(full))
    return found


def check(cls: type[Any], values: Mapping[str, Any]) -> None:
    """Raise a `ParameterError` naming every problem of `values` (the first as its `param`)."""
    found = problems(cls, values)
    if found:
        first = found[0]
        lines = [f"{p.param}: {p.text}" for p in found] if len(found) > 1 else ()
        raise bad_parameter(first.param, first.text, wrong_type=first.wrong_type, errors=lines)


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    import difflib  # only a bad policy needs it

    choices = list(choices)
    close = [c for c in choices if key and c.startswith(key)]
    close = close or difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown(key: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    hint = did_you_mean(key, choices) if isinstance(key, str) else ""
    return f"unknown key {key!r}{hint} (known: {', '.join(choices) or 'none'})"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, str):
        return value
    if callable(value):
        return str(getattr(value, "__qualname__", repr(value)))
    return repr(value)


def describe(kind: str, options: Options) -> str:
    """`kind(name=value; ...)`: the options that are set and differ from their defaults."""
    parts = []
    for name, option in declared(type(options)).items():
        value = getattr(options, name)
        if has_default(option) and (value is None or value == option.default):
            continue
        parts.append(f"{name}={_shown(value)}")
    return f"{kind}({'; '.join(parts)})"


def layer_signature(cls: type[Options]) -> inspect.Signature:
    """A layer constructor's signature: its options made, or their fields as keywords."""
    made = inspect.Parameter("options", inspect.Parameter.POSITIONAL_ONLY, default=None)
    fields = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(cls).parameters.values()
    ]
    return inspect.Signature([made, *fields])


def options_from(cls: type[Opts], options: Opts | None, params: Mapping[str, Any]) -> Opts:
    """A layer constructor's options: given made, or made from keyword arguments."""
    if options is None:
        return cls(**params)
    if params or not isinstance(options, cls):
        raise TypeError(f"give {cls.__name__} or keyword arguments, not both")
    return options


# ---------------------------------------------------------------------------------------------
# Decorators whose keyword parameters are an options type's fields


class LayerDecorator:
    """What a decorator with arguments returns: applies its one layer to a function."""

    __slots__ = ("layer",)

    def __init__(self, layer: Layer) -> None:
        self.layer = layer

    def __call__(self, fn: F) -> F:
        from qwed_guard.layer import guard

        return guard(fn, self.layer)


class _Factory(Generic[P, R]):
    """A decorator factory: its parameters are `options`' (a ParamSpec), its result `make`'s.

    `stub` is the function written in the pattern's module for its name and docstring."""

    def __init__(
        self, options: Callable[P, Options], make: Callable[[Any], R], stub: Callable[..., Any]
    ) -> None:
        self.options = options
        self._make = make
        self.__doc__ = stub.__doc__
        self.__module__ = stub.__module__
        self.__name__ = stub.__name__
        self.__qualname__ = stub.__qualname__
        self.__signature__ = inspect.signature(options).replace(
            return_annotation=inspect.Signature.empty
        )

    def __repr__(self) -> str:
        return f"<decorator {self.__module__}.{self.__name__}>"


class Decorator(_Factory[P, R]):
    """A decorator called with its options: `@attempt_timeout(10)`, `@fallback(value=0)`."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._make(self.options(*args, **kwargs))


class BareDecorator(_Factory[P, LayerDecorator]):
    """A decorator used bare (`@retry`) or with its options (`@retry(max_tries=5)`)."""

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> LayerDecorator: ...

    @overload
    def __call__(self, fn: F, /) -> F: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs:  # bare: the options take keywords only
            defaults: Callable[[], Options] = self.options
            return self._make(defaults())(args[0])
        return self._make(self.options(*args, **kwargs))


def decorator(
    options: Callable[P, Options], make: Callable[[Any], R]
) -> Callable[[Callable[..., Any]], Decorator[P, R]]:
    """Make the function below (its name and docstring) a decorator with `options`' parameters,
    whose result is `make(options)`."""

    def build(stub: Callable[..., Any]) -> Decorator[P, R]:
        return Decorator(options, make, stub)

    return build


def layer_decorator(
    options: Callable[P, Options], layer: Callable[[Any], Layer]
) -> Callable[[Callable[..., Any]], BareDecorator[P]]:
    """Make the function below a decorator that applies one `layer` built from `options`,
    bare (`@retry`) or called (`@retry(max_tries=5)`)."""

    def build(stub: Callable[..., Any]) -> BareDecorator[P]:
        return BareDecorator(options, applies(layer), stub)

    return build


def applies(layer: Callable[[Any], Layer]) -> Callable[[Any], LayerDecorator]:
    """`make` for a decorator that applies one layer built from its options."""

    def make(options: Any) -> LayerDecorator:
        return LayerDecorator(layer(options))

    return make
