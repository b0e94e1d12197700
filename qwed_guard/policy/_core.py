"""Policy: the guard rails as data, validated, hashed and applied as one decorator stack.

A policy is a mapping whose keys are decorator names (`audited`, `fallback`,
`alert_on_failures`, `retry`, `circuit_breaker`, `attempt_timeout`) and whose values are their
parameters. Each section is checked against its layer's options declaration
(`qwed_guard.options`: unknown keys get a did-you-mean, every bad value is named by its dotted
path) and then built. Layer modules are imported only when a policy names them:
`import qwed_guard` stays cheap, and a missing one breaks no other.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import importlib
import importlib.util
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any, Final, TypeVar

from qwed_guard.errors import ParameterError, PolicyError
from qwed_guard.hooks import Hook
from qwed_guard.layer import Layer, ObserverLayer, guard
from qwed_guard.options import Spec, declared, has_default, spec_of, unknown
from qwed_guard.options import problems as option_problems
from qwed_guard.outcomes import scrub
from qwed_guard.policy._callables import check_allowed
from qwed_guard.policy._files import load
from qwed_guard.policy._presets import preset_data
from qwed_guard.policy._sections import (
    CANONICAL_ORDER,
    OPTIONS,
    SECTIONS,
    UNSET,
    VERDICT,
    VERDICT_SPEC,
    WATCHING,
    Section,
    did_you_mean,
)
from qwed_guard.verdicts import VerdictRules

__all__ = ["CANONICAL_ORDER", "Policy"]

F = TypeVar("F", bound=Callable[..., Any])


SCHEMA_KEY: Final = "$schema"
"""A top-level key naming the file's JSON Schema, for editors: not part of the policy."""


def section_spec(name: str) -> Section:
    return VERDICT_SPEC if name == VERDICT else OBSERVERS.get(name) or SECTIONS[name]


# Not layers either: hooks watching every call of the stack (docs: observability).
OBSERVERS: Final[dict[str, Section]] = {
    "tracing": Section("qwed_guard.tracing", "Tracing"),
    "metrics": Section("qwed_guard.metrics", "Metrics"),
}
_TOP_KEYS: Final = (*CANONICAL_ORDER, VERDICT, *OBSERVERS, *OPTIONS)
_MAX_DEPTH: Final = 32
_MAX_NODES: Final = 100_000  # YAML aliases can make a small file a huge (or endless) value

# Layers that react to failures: a fallback inside any of them hides every failure from it.
_FAILURE_WATCHERS: Final = {
    "retry": "never sees a failure, so it never retries",
    "alert_on_failures": "never sees a failed call, so nobody is alerted",
    "circuit_breaker": "never sees a failure, so it never opens",
}


class _Problems:
    """Every problem found while reading a policy, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.budget = _MAX_NODES
        self.open: set[int] = set()  # ids of the containers being walked: a cycle is an error

    def add(self, path: str, problem: str) -> None:
        self.items.append(scrub(f"{path}: {problem}"))

    def raise_if_any(self, what: str = "invalid policy") -> None:
        if self.items:
            count = len(self.items)
            head = f"{what} ({count} problem{'s' if count != 1 else ''}):"
            raise PolicyError("\n  ".join([head, *self.items]), self.items)


_unknown = unknown


# ---------------------------------------------------------------------------------------------
# Plain data: what a policy value may be, and its canonical form


def _plain(value: Any, path: str, problems: _Problems, depth: int = 0) -> Any:
    """A copy of `value` as JSON data (lists for tuples, str keys), or `UNSET` when it is not."""
    if depth > _MAX_DEPTH:
        problems.add(path, f"nested more than {_MAX_DEPTH} levels deep")
        return UNSET
    problems.budget -= 1
    if problems.budget == 0:
        problems.add(path, f"more than {_MAX_NODES} values in one policy")
    if problems.budget <= 0:
        return UNSET
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in problems.open:
            problems.add(path, "contains itself")
            return UNSET
        problems.open.add(id(value))
        try:
            return _plain_container(value, path, problems, depth)
        finally:
            problems.open.discard(id(value))
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.add(path, f"must be a finite number, got {value}")
            return UNSET
        return float(value)
    problems.add(
        path,
        f"must be plain data (null, true/false, a number, a string, a list or a table), "
        f"got {type(value).__name__}",
    )
    return UNSET


def _plain_container(value: Any, path: str, problems: _Problems, depth: int) -> Any:
    if isinstance(value, Mapping):
        table: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(path, f"keys must be strings, got {key!r}")
                continue
            plain = _plain(item, f"{path}.{key}", problems, depth + 1)
            if plain is not UNSET:
                table[key] = plain
        return table
    items = [_plain(item, f"{path}[{i}]", problems, depth + 1) for i, item in enumerate(value)]
    return [item for item in items if item is not UNSET]


def _hashable_form(value: Any) -> Any:
    """Numbers as RFC 8785 reads them: an integral float is the same number as the int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _hashable_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hashable_form(item) for item in value]
    return value


def _canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(
        _hashable_form(data),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


# ---------------------------------------------------------------------------------------------
# Callables named by dotted path


def _import_dotted(path: str) -> Any:
    """The object at `pkg.mod:attr.sub` or `pkg.mod.attr`."""
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        obj: Any = importlib.import_module(module_name)
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
        return obj
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module found in {path!r}")


def _dotted_name(obj: Any) -> str | None:
    """`module:qualname` when importing it gives back `obj` (so a file can name it), else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    path = f"{module}:{qualname}"
    try:
        found = _import_dotted(path)
    except Exception:
        return None
    return path if found is obj else None


def _looks_dotted(value: str) -> bool:
    return ":" in value or ("." in value and not value.startswith("."))


# ---------------------------------------------------------------------------------------------
# Sections: their layer classes, parameters and defaults


def layer_class(name: str) -> type[Layer]:
    section = section_spec(name)
    if importlib.util.find_spec(section.module) is None:
        raise LookupError(f"not available: this qwed_guard has no {section.module} module")
    module = importlib.import_module(section.module)
    cls = getattr(module, section.cls, None)
    if (name == VERDICT or name in OBSERVERS) and isinstance(cls, type):
        return cls  # built like a layer, applied to the whole stack
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise LookupError(f"not available: {section.module} defines no {section.cls} layer")
    return cls


def declaration(cls: type[Any]) -> type[Any]:
    """The dataclass declaring a section's keys: the layer's `options_type` (or the class)."""
    found: type[Any] = getattr(cls, "options_type", cls)
    return found


def default_data(option: Field[Any]) -> Any:
    """The option's default as policy data, or `UNSET` when data cannot say it."""
    if not has_default(option):
        return UNSET
    default = option.default
    if isinstance(default, (set, frozenset)):
        items = [item.value if isinstance(item, enum.Enum) else item for item in default]
        return sorted(items) if all(isinstance(item, str) for item in items) else UNSET
    if callable(default) and not isinstance(default, type):
        return _dotted_name(default) or UNSET
    problems = _Problems()
    plain = _plain(default, option.name, problems)
    return UNSET if problems.items else plain


def _callable_name(value: Any, path: str, problems: _Problems) -> Any:
    """A function given as an object becomes its `module:name`, which the policy can store."""
    if not callable(value) or isinstance(value, (str, type)):
        return value
    name = _dotted_name(value)
    if name is None:
        problems.add(
            path,
            "a function in a policy must be importable by name (module:function), so the "
            "policy can be written to a file and hashed; lambdas and local functions cannot",
        )
        return UNSET
    return name


def _normalize_value(path: str, value: Any, spec: Spec, problems: _Problems) -> Any:
    if spec.importable:
        if isinstance(value, (list, tuple)):  # e.g. notify: ["log", my_module.page_someone]
            value = [_callable_name(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
        else:
            value = _callable_name(value, path, problems)
        if any(item is UNSET for item in (value if isinstance(value, list) else [value])):
            return UNSET
    plain = _plain(value, path, problems)
    return plain if plain is UNSET or spec.normal is None else spec.normal(plain)


def _import_callables(
    name: str, options: Mapping[str, Field[Any]], arguments: dict[str, Any], problems: _Problems
) -> bool:
    """Import the functions `arguments` name by dotted path, in place; False if one failed."""
    resolved = True
    for key, option in options.items():
        value = arguments.get(key)
        if not spec_of(option).importable or callable(value):
            continue
        if isinstance(value, str) and _looks_dotted(value):
            try:
                check_allowed(value)  # before importing anything it names
                arguments[key] = _import_dotted(value)
            except Exception as exc:
                why = "refused" if isinstance(exc, PermissionError) else "cannot import"
                problems.add(f"{name}.{key}", f"{why} {value!r}: {exc}")
                arguments.pop(key)  # reported: not checked again as a string
                resolved = False
        elif isinstance(value, (list, tuple)):
            # Dotted channel names are imported by the alert layer: check them here.
            for index, item in enumerate(value):
                if isinstance(item, str) and ":" in item:
                    try:
                        check_allowed(item)
                    except PermissionError as exc:
                        problems.add(f"{name}.{key}[{index}]", f"refused {item!r}: {exc}")
                        resolved = False
    return resolved


def _build_section(name: str, raw: Any, problems: _Problems) -> tuple[dict[str, Any], Layer | None]:
    """The section's normalized parameters (defaults filled in) and its layer, if valid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.add(
            name,
            f"must be a table of {name}'s parameters ({{}} for the defaults), "
            f"got {type(raw).__name__}",
        )
        return {}, None
    try:
        cls = layer_class(name)
    except LookupError as exc:
        problems.add(name, str(exc))
        return {}, None
    declared_by = declaration(cls)
    options = declared(declared_by)
    before = len(problems.items)
    given: dict[str, Any] = {}
    arguments: dict[str, Any] = {}  # callables the program passed itself are used as they are
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.add(name, f"parameter names must be strings, got {key!r}")
            continue
        option = options.get(key)
        if option is None:
            problems.add(f"{name}.{key}", unknown(key, options))
            continue
        plain = _normalize_value(f"{name}.{key}", value, spec_of(option), problems)
        if plain is not UNSET:
            given[key] = arguments[key] = plain
            if callable(value) and not isinstance(value, (str, type)):
                arguments[key] = value
    complete = len(problems.items) == before  # else the layer would report a key as missing
    complete = _import_callables(name, options, arguments, problems) and complete
    for problem in option_problems(declared_by, arguments, relations=complete):
        problems.add(f"{name}.{problem.param}", problem.text)
    layer = _construct(name, cls, arguments, problems) if len(problems.items) == before else None
    normalized: dict[str, Any] = {}
    for key, option in options.items():
        value = given[key] if key in given else default_data(option)
        if value is not UNSET:
            normalized[key] = value
    return normalized, layer if len(problems.items) == before else None


def _construct(
    name: str, cls: type[Layer], arguments: dict[str, Any], problems: _Problems
) -> Layer | None:
    """Build the layer; on a bad parameter, report it and retry without it to find the rest."""
    arguments = dict(arguments)
    while True:
        try:
            return cls(**arguments)
        except ParameterError as exc:
            problems.add(f"{name}.{exc.param}", exc.problem)
            key = exc.param.split(".", 1)[0].split("[", 1)[0]
            if key not in arguments:
                return None
            del arguments[key]
        except PolicyError as exc:
            for error in exc.errors:
                problems.add(name, error)
            return None
        except Exception as exc:  # a layer's own bug or an unchecked type: report, never leak
            problems.add(name, f"invalid parameters ({type(exc).__name__}: {exc})")
            return None


# ---------------------------------------------------------------------------------------------
# Order


def _order_from(raw: Any, sections: list[str], problems: _Problems) -> tuple[str, ...]:
    if raw is None:
        return tuple(name for name in CANONICAL_ORDER if name in sections)
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        problems.add("order", f"must be a list of section names, got {type(raw).__name__}")
        return ()
    order: list[str] = []
    for index, entry in enumerate(raw):
        path = f"order[{index}]"
        if not isinstance(entry, str):
            problems.add(path, f"must be a section name, got {type(entry).__name__}")
        elif entry not in SECTIONS:
            problems.add(path, f"unknown layer {entry!r}{did_you_mean(entry, SECTIONS)}")
        elif entry in order:
            problems.add(path, f"{entry!r} is listed twice")
        elif entry not in sections:
            problems.add(path, f"{entry!r} has no {entry} section (add {entry}: {{}} to enable it)")
        else:
            order.append(entry)
    for name in sections:
        if name not in raw:
            problems.add("order", f"{name!r} has a section but is not in order")
    return tuple(order)


def _blinding(order: tuple[str, ...]) -> list[str]:
    """Why this order hides something from a layer; empty when it does not."""
    order = tuple(name for name in order if name not in WATCHING)  # see the whole call anyway
    where = {name: index for index, name in enumerate(order)}
    reasons: list[str] = []
    timeout_at = where.get("attempt_timeout")
    if timeout_at is not None and timeout_at != len(order) - 1:
        inside = ", ".join(order[timeout_at + 1 :])
        reasons.append(
            f"attempt_timeout must be innermost to bound one attempt; outside {inside} it cuts "
            f"short what {'that layer does' if timeout_at == len(order) - 2 else 'they do'} "
            f"(retry.max_time bounds a whole call)"
        )
    fallback_at = where.get("fallback")
    if fallback_at is not None:
        for watcher, harm in _FAILURE_WATCHERS.items():
            if watcher in where and fallback_at > where[watcher]:
                reasons.append(
                    f"fallback inside {watcher} turns every failure into a result first: "
                    f"{watcher} {harm}"
                )
    return reasons


# ---------------------------------------------------------------------------------------------
# The policy


class Policy:
    """The guard rails for a function, as one immutable, hashable piece of data.

        policy = Policy.from_dict({
            "retry": {"max_tries": 3, "base": 1, "factor": 2},
            "fallback": {"value": 100.0},
        })

        @policy
        def interest(query: str): ...

    Sections are enabled by their presence; `order` (outermost first) defaults to the canonical
    `audited, fallback, alert_on_failures, retry, circuit_breaker, attempt_timeout`. Two
    policies are equal when their normalized data (defaults filled in) is equal; `hash` names
    that data.
    """

    __slots__ = (
        "_canonical",
        "_data",
        "_hash",
        "_hooks",
        "_layers",
        "_observers",
        "_order",
        "_rules",
    )

    _canonical: str
    _data: dict[str, Any]
    _hash: str
    _layers: dict[str, Layer]
    _rules: VerdictRules | None
    _order: tuple[str, ...]
    _hooks: tuple[Hook, ...]
    _observers: tuple[Hook, ...]

    def __init__(self, data: Mapping[str, Any]) -> None:
        problems = _Problems()
        if not isinstance(data, Mapping):
            problems.add("policy", f"must be a table, got {type(data).__name__}")
            problems.raise_if_any()
        sections: list[str] = []
        for key in data:
            if key in SECTIONS:
                sections.append(key)
            elif (
                key != VERDICT and key not in OPTIONS and key != SCHEMA_KEY and key not in OBSERVERS
            ):
                problems.add(str(key), _unknown(key, _TOP_KEYS))
        normalized: dict[str, Any] = {}
        layers: dict[str, Layer] = {}
        for name in sections:
            params, layer = _build_section(name, data[name], problems)
            normalized[name] = params
            if layer is not None:
                layers[name] = layer
        rules: Any = None
        if VERDICT in data:
            normalized[VERDICT], rules = _build_section(VERDICT, data[VERDICT], problems)
        observers: list[Any] = []
        for name in OBSERVERS:
            if name in data:
                normalized[name], observer = _build_section(name, data[name], problems)
                observers.append(observer)
        allow = data.get("allow_unusual_order", False)
        if not isinstance(allow, bool):
            problems.add("allow_unusual_order", f"must be true or false, got {allow!r}")
            allow = False
        before_order = len(problems.items)
        order = _order_from(data.get("order"), sections, problems)
        if len(problems.items) == before_order and not allow:
            for reason in _blinding(order):
                problems.add("order", f"{reason} (set allow_unusual_order: true to use it anyway)")
        problems.raise_if_any()
        normalized["order"] = list(order)
        if allow:
            normalized["allow_unusual_order"] = True
        canonical = _canonical_json(normalized)
        setattr_ = object.__setattr__
        setattr_(self, "_data", normalized)
        setattr_(self, "_canonical", canonical)
        setattr_(self, "_hash", "sha256:" + hashlib.sha256(canonical.encode()).hexdigest())
        setattr_(self, "_layers", layers)
        setattr_(self, "_rules", rules)
        setattr_(self, "_order", order)
        setattr_(self, "_hooks", ())
        setattr_(self, "_observers", tuple(observers))

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from plain data; raises `PolicyError` naming every bad field."""
        return cls(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """A policy from a `.toml`, `.yaml`/`.yml` or `.json` file."""
        data = load(Path(path))
        try:
            return cls(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}", exc.errors) from None

    @classmethod
    def preset(cls, name: str, *, fallback_value: Any = UNSET, **overrides: Any) -> Policy:
        """A ready-made policy: `"production"`, `"strict"` or `"dev"`.

        `fallback_value` is the conservative value returned when a call cannot be verified
        (`production` needs it, or a `fallback={"handler": ...}` override). Other keyword
        arguments are section overrides merged into the preset's section (`retry={"max_tries":
        5}`), or `None` to drop a section.
        """
        return cls(preset_data(name, fallback_value, overrides))

    # -- reading ------------------------------------------------------------------------------

    @property
    def hash(self) -> str:
        """`sha256:<hex>` of the normalized policy (canonical JSON, defaults filled in)."""
        return self._hash

    @property
    def verdict(self) -> VerdictRules | None:
        """The policy's `verdict` table as rules, if it has one."""
        return self._rules

    @property
    def order(self) -> tuple[str, ...]:
        """The enabled layers, outermost first."""
        return self._order

    def to_dict(self) -> dict[str, Any]:
        """The normalized policy as plain data: `Policy.from_dict(p.to_dict()) == p`."""
        copy: dict[str, Any] = json.loads(json.dumps(self._data))
        return copy

    def describe(self) -> str:
        """The stack as a person reads it, outermost first, with every layer's parameters."""
        lines = [f"policy {self._hash[:19]}  (outermost first)"]
        if self._data.get("allow_unusual_order"):
            lines[0] += "  [unusual order allowed]"
        if self._rules is not None:
            lines.append(f"  verdicts: {self._rules.describe()}")
        for observer in self._observers:
            lines.append(f"  watched by: {getattr(observer, 'describe', observer.__repr__)()}")
        for index, name in enumerate(self._order, 1):
            lines.append(f"  {index}. {self._layers[name].describe()}")
        lines.append(f"  {len(self._order) + 1}. the function" if self._order else "  (no layers)")
        return "\n".join(lines)

    # -- applying -----------------------------------------------------------------------------

    def wrap(self, fn: F) -> F:
        """Apply the stack to `fn` (sync or async, function or method).

        Each function gets its own per-function layer state (alert counters, breaker) through
        `Layer.bind`; the layers' configuration is shared. With `fallback` in the policy the
        function returns a `GuardedResult`.
        """
        return self.wrap_with(fn, self._rules)

    def with_hooks(self, *hooks: Hook) -> Policy:
        """This policy, also watching every call of the functions it wraps with `hooks`.

        Hooks are code, not data: they change neither the policy's equality nor its hash.
        """
        for hook in hooks:
            if not callable(hook):
                raise TypeError(f"a hook is a callable, got {type(hook).__name__}")
        hooked = copy.copy(self)
        object.__setattr__(hooked, "_hooks", self._hooks + hooks)
        return hooked

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """The hooks given with `with_hooks`."""
        return self._hooks

    def wrap_with(self, fn: F, rules: VerdictRules | None) -> F:
        """Apply the stack to `fn` with these verdict rules instead of the policy's own."""
        wrapped: Any = guard(fn, ObserverLayer(self._hooks)) if self._hooks else fn
        for index in range(len(self._order) - 1, -1, -1):
            name = self._order[index]
            # The outermost layer stamps the hash on each call, for audit records and alerts.
            stamp = self._hash if index == 0 else None
            try:
                wrapped = guard(
                    wrapped,
                    self._layers[name],
                    policy_hash=stamp,
                    verdict=rules if index == 0 else None,
                )
            except ParameterError as exc:  # a layer that refuses this function (sync timeout)
                path = f"{name}.{exc.param}: {exc.problem}"
                raise PolicyError(f"cannot apply policy: {path}", [path]) from None
        if self._observers:
            # Outermost: tracing starts before the audit trail's watcher, which records its trace.
            wrapped = guard(wrapped, ObserverLayer(self._observers), policy_hash=self._hash)
        result: F = wrapped
        return result

    def __call__(self, fn: F) -> F:
        return self.wrap(fn)

    # -- value semantics ----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a Policy is immutable; build a new one (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Policy is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Policy.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        return f"Policy({', '.join(self._order) or 'no layers'}; {self._hash[:19]})"
