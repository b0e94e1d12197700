"""Options: each pattern's parameters, declared once.

A pattern declares its parameters as a frozen dataclass whose fields carry how each is checked
(`integer`, `number`, `flag`, `choice`, `outcomes`, `text`, `function`, `data`) and a one-line
doc. That one declaration is:

- the decorator's keyword parameters: `Decorator(RetryOptions, RetryLayer)` takes the dataclass's
  synthesized `__init__` signature (a ParamSpec), so a type checker checks `retry(max_tries=3)`;
- the validator's rules: `problems(RetryOptions, values)` reports every bad value at once, named;
- the policy loader's keys, defaults and normal form, and the JSON Schema of policy files;
- `describe()` for the layers that only show their parameters.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, ParamSpec, TypeVar, overload

from qwed_guard.errors import bad_parameter
from qwed_guard.outcomes import Outcome

if TYPE_CHECKING:
    from qwed_guard.layer import Layer

__all__ = [
    "CHANNELS",
    "STRING",
    "Decorator",
    "LayerDecorator",
    "Options",
    "Problem",
    "Spec",
    "applies",
    "check",
    "choice",
    "data",
    "declared",
    "decorator",
    "describe",
    "flag",
    "function",
    "integer",
    "judged_by",
    "layer_decorator",
    "layer_signature",
    "number",
    "outcomes",
    "problems",
    "required",
    "seconds_list",
    "text",
]

P = ParamSpec("P")
T = TypeVar("T")
Opts = TypeVar("Opts", bound="Options")
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_SPEC = "qwed_guard.spec"


class Problem(NamedTuple):
    """One bad value: the parameter's name (or dotted path), why, and whether it is a type error."""

    param: str
    text: str
    wrong_type: bool = False


# ---------------------------------------------------------------------------------------------
# How one option is checked and written as data


def _number_like(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """How one option is checked; `json` is how a policy file writes it (a JSON Schema)."""

    doc: str = ""
    optional: bool = False
    """None is allowed (and means unset)."""
    importable: bool = False
    """A policy file may name a function here as `module:function`."""
    json: Mapping[str, Any] = field(default_factory=dict)

    def problem(self, value: Any) -> tuple[str, bool] | None:
        """Why `value` is refused (and whether for its type), or None. None is checked already."""
        return None

    def schema(self) -> dict[str, Any]:
        """How a policy file writes this option, as JSON Schema (without null)."""
        return dict(self.json)

    def data(self, value: Any) -> Any:
        """`value` (already plain data) in the policy's normal form."""
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class _Integer(Spec):
    least: int
    most: int

    def problem(self, value: Any) -> tuple[str, bool] | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an int, got {type(value).__name__}", True
        if value < self.least:
            return f"must be >= {self.least}, got {value}", False
        if value > self.most:
            return f"must be <= {self.most}, got {value}", False
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Number(Spec):
    least: float
    most: float
    above: bool = False
    """The least itself is refused (`> least`)."""
    what: str = "a number"
    span: str | None = None
    """The range as the message names it, when both ends are named."""

    def problem(self, value: Any) -> tuple[str, bool] | None:
        if not _number_like(value):
            return f"must be {self.what}, got {type(value).__name__}", True
        low = f"> {self.least:g}" if self.above else f">= {self.least:g}"
        too_low = not value > self.least if self.above else not value >= self.least
        if self.span is not None and (too_low or not value <= self.most):
            return f"must be {self.span}, got {value!r}", False
        if too_low:
            return f"must be {low}, got {value!r}", False
        if not value <= self.most or not math.isfinite(value):
            return f"must be <= {self.most:g}, got {value!r}", False
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Flag(Spec):
    def problem(self, value: Any) -> tuple[str, bool] | None:
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}", True
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Choice(Spec):
    names: tuple[str, ...]
    callable: bool = False

    def problem(self, value: Any) -> tuple[str, bool] | None:
        if isinstance(value, str) and value in self.names:
            return None
        if self.callable and callable(value):
            return None
        if len(self.names) == 2 and not self.callable:
            wanted = " or ".join(repr(n) for n in self.names)
        else:
            wanted = "one of " + ", ".join(repr(n) for n in self.names)
            wanted += ", a callable" if self.callable else ""
        wanted += " or None" if self.optional else ""
        if not isinstance(value, str) and self.callable:
            none = " or None" if self.optional else ""
            return f"must be a name, a callable{none}, got {value!r}", True
        return f"must be {wanted}, got {value!r}", not isinstance(value, str)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcomes(Spec):
    allowed: frozenset[Outcome]
    refused: str
    """Why an outcome outside `allowed` is refused, `{}` standing for it."""
    nonempty: bool = False

    def problem(self, value: Any) -> tuple[str, bool] | None:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, Iterable):
            got = type(value).__name__
            return f"must be a list of outcome names, got {got}", True
        names = ", ".join(sorted(o.value for o in self.allowed))
        count = 0
        for item in items:
            try:
                outcome = Outcome(item)
            except ValueError:
                return f"unknown outcome {item!r}; choose from {names}", False
            if outcome not in self.allowed:
                return f"{self.refused.format(outcome.value)} (choose from {names})", False
            count += 1
        if self.nonempty and not count:
            return "needs at least one outcome", False
        return None

    def data(self, value: Any) -> Any:
        # A set: order and repeats carry no meaning, so they must not change the policy's hash.
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return sorted(set(items))
        return value

    def schema(self) -> dict[str, Any]:
        names = {"enum": sorted(o.value for o in self.allowed)}
        listed: dict[str, Any] = {"type": "array", "items": names}
        if self.nonempty:
            listed["minItems"] = 1
        return {"anyOf": [names, listed]}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Text(Spec):
    def problem(self, value: Any) -> tuple[str, bool] | None:
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty string, got {value!r}", not isinstance(value, str)
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Function(Spec):
    def problem(self, value: Any) -> tuple[str, bool] | None:
        if not callable(value):
            return f"must be callable, got {type(value).__name__}", True
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Seconds(Spec):
    most: float
    count: int

    def problem(self, value: Any) -> tuple[str, bool] | None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
            return "must be a list of seconds", True
        if len(value) > self.count:
            return f"at most {self.count} delays, got {len(value)}", False
        for index, item in enumerate(value):
            if not _number_like(item) or not 0 <= item <= self.most:
                return f"[{index}] must be a number >= 0 and <= {self.most:g}, got {item!r}", False
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Check(Spec):
    """A spec given as a function: `test(value)` is the problem, or None."""

    test: Callable[[Any], tuple[str, bool] | None] = lambda value: None

    def problem(self, value: Any) -> tuple[str, bool] | None:
        return self.test(value)


# ---------------------------------------------------------------------------------------------
# Field helpers: `max_tries: int = integer(3, 1, 100, "Attempts in all.")`


def _field(default: Any, spec: Spec) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={_SPEC: spec})
    return field(default=default, metadata={_SPEC: spec})


_JSON_INT = {"type": "integer"}
STRING: Mapping[str, Any] = {"type": "string"}
"""The JSON Schema of an option a policy writes as a string (a URL, a name)."""
_CHANNEL = {
    "anyOf": [
        {"type": "string", "description": "log, or module:function"},
        {"type": "object", "description": "{channel: {settings}}: slack, webhook, ..."},
    ]
}
CHANNELS: Mapping[str, Any] = {"anyOf": [_CHANNEL, {"type": "array", "items": _CHANNEL}]}
"""The JSON Schema of alert channels (`notify`)."""


def required(option: Any) -> Mapping[str, Any]:
    """The metadata of an option with no default, for `field(metadata=...)`: a type checker
    sees a required field only in a plain `field()` call.

        seconds: float = field(metadata=required(number(MISSING, 0, 86400, "...")))
    """
    assert isinstance(option, dataclasses.Field)
    return option.metadata


def integer(default: T, least: int, most: int, doc: str, *, optional: bool = False) -> T:
    """An int in `[least, most]`."""
    json = {**_JSON_INT, "minimum": least, "maximum": most}
    spec = _Integer(doc=doc, least=least, most=most, optional=optional, json=json)
    result: T = _field(default, spec)
    return result


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
    """A finite number in `[least, most]` (`(least, most]` when `above`).

    `span` names both ends in the message (`True`, or the range as text)."""
    low = "exclusiveMinimum" if above else "minimum"
    json = {"type": "number", low: least, "maximum": most}
    if span is True:
        span = f"{'>' if above else '>='} {least:g} and <= {most:g}"
    spec = _Number(
        doc=doc,
        least=least,
        most=most,
        above=above,
        optional=optional,
        what=what,
        span=span or None,
        json=json,
    )
    result: T = _field(default, spec)
    return result


def flag(default: T, doc: str) -> T:
    """true or false."""
    result: T = _field(default, _Flag(doc=doc, json={"type": "boolean"}))
    return result


def choice(
    default: T,
    names: Iterable[str],
    doc: str,
    *,
    callable: bool = False,
    optional: bool = False,
) -> T:
    """One of `names` (or, with `callable`, a function: `module:function` in a policy)."""
    names = tuple(names)
    json: dict[str, Any] = {"enum": list(names)}
    if callable:
        json = {"anyOf": [json, {"type": "string", "pattern": "[:.]"}]}
    spec = _Choice(
        doc=doc, names=names, callable=callable, importable=callable, optional=optional, json=json
    )
    result: T = _field(default, spec)
    return result


def outcomes(
    default: T, allowed: Iterable[Outcome], refused: str, doc: str, *, nonempty: bool = False
) -> T:
    """A set of outcome names out of `allowed` (one name alone is a set of one)."""
    spec = _Outcomes(doc=doc, allowed=frozenset(allowed), refused=refused, nonempty=nonempty)
    result: T = _field(default, spec)
    return result


def text(default: T, doc: str, *, optional: bool = True) -> T:
    """A non-empty string."""
    spec = _Text(doc=doc, optional=optional, json={"type": "string", "minLength": 1})
    result: T = _field(default, spec)
    return result


def function(default: T, doc: str, *, optional: bool = True) -> T:
    """A callable; a policy names it `module:function`."""
    json = {"type": "string", "pattern": "[:.]"}
    spec = _Function(doc=doc, optional=optional, importable=True, json=json)
    result: T = _field(default, spec)
    return result


def seconds_list(default: T, most: float, count: int, doc: str) -> T:
    """A list of at most `count` waits, each in `[0, most]` seconds."""
    item = {"type": "number", "minimum": 0, "maximum": most}
    spec = _Seconds(
        doc=doc, most=most, count=count, json={"type": "array", "items": item, "maxItems": count}
    )
    result: T = _field(default, spec)
    return result


def data(
    default: T,
    doc: str,
    json: Mapping[str, Any] | None = None,
    *,
    test: Callable[[Any], tuple[str, bool] | None] | None = None,
    optional: bool = False,
    importable: bool = False,
) -> T:
    """Anything `test` accepts (everything without one); the layer checks the rest itself."""
    spec = _Check(
        doc=doc,
        json=json or {},
        test=test or (lambda value: None),
        optional=optional,
        importable=importable,
    )
    result: T = _field(default, spec)
    return result


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

    kind: ClassVar[str] = ""
    """The decorator (and policy section) these options configure."""

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
        why = spec.problem(value)
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
