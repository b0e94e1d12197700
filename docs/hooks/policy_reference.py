"""mkdocs hook: renders the policy reference from the layers' own declarations.

A page that contains `<!-- policy-reference -->` gets, in its place, one table per policy
section, in the canonical order: every key the section accepts, its type and its default, read
from the layer's constructor the way `Policy` itself reads it. A key added to a layer appears
here without editing the docs, and a rename cannot leave a stale name behind.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson

# The policy module's own view of its sections: the same lookups Policy.from_dict makes.
from qwed_guard.policy._core import _default_data, _layer_class, _signature
from qwed_guard.policy._sections import CANONICAL_ORDER, OPTIONS, SECTIONS, UNSET

MARKER = "<!-- policy-reference -->"
# The decorator each section configures (the API reference documents its meaning).
DECORATORS = {
    "audited": "qwed_guard.audit.audited",
    "fallback": "qwed_guard.fallback.fallback",
    "alert_on_failures": "qwed_guard.alerts.alert_on_failures",
    "retry": "qwed_guard.retry.retry",
    "circuit_breaker": "qwed_guard.breaker.circuit_breaker",
    "concurrency": "qwed_guard.bulkhead.concurrency_limit",
    "attempt_timeout": "qwed_guard.timeout.attempt_timeout",
    "retry_budget": "qwed_guard.budget.retry_budget",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(parameter: inspect.Parameter) -> str:
    if parameter.default is inspect.Parameter.empty:
        return "required"
    value = _default_data(parameter)
    if value is UNSET:
        return "(not set)"
    return f"`{_cell(orjson.dumps(value).decode())}`"


def _section(name: str) -> list[str]:
    cls = _layer_class(name)
    parameters, open_ended = _signature(cls)
    callables = SECTIONS[name].callables
    lines = [
        f"### `{name}`",
        "",
        f"Configures [`{DECORATORS[name].rsplit('.', 1)[1]}`][{DECORATORS[name]}].",
        "",
        "| key | type | default |",
        "| --- | --- | --- |",
    ]
    for key, parameter in parameters.items():
        annotation = parameter.annotation
        kind = "" if annotation is inspect.Parameter.empty else str(annotation)
        note = " (or `module:function`)" if key in callables else ""
        lines.append(f"| `{key}` | `{_cell(kind)}`{note} | {_default(parameter)} |")
    if open_ended:
        lines += ["", "Other keys are passed on to the layer as they are."]
    return [*lines, ""]


def render() -> str:
    lines = [
        "Sections, outermost first: " + ", ".join(f"`{n}`" for n in CANONICAL_ORDER) + ".",
        "Top-level options besides the sections: " + ", ".join(f"`{o}`" for o in OPTIONS) + ".",
        "",
    ]
    for name in CANONICAL_ORDER:
        lines += _section(name)
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
