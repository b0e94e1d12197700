"""mkdocs hook: renders the policy reference from the options declarations.

A page that contains `<!-- policy-reference -->` gets, in its place, one table per policy
section, in the canonical order: every key the section accepts, its type, its default and its
one-line doc, read from the declaration `Policy` checks a section against (the same one the
decorator, the layer and the JSON Schema read). A key added to a pattern appears here without
editing the docs, and a rename cannot leave a stale name behind.
"""

from __future__ import annotations

from typing import Any

import orjson

from qwed_guard.options import declared, has_default, spec_of

# The policy module's own view of its sections: the same lookups Policy.from_dict makes.
from qwed_guard.policy._core import declaration, default_data, layer_class
from qwed_guard.policy._sections import CANONICAL_ORDER, OPTIONS, UNSET, VERDICT

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
    return text.replace("|", "\\|").replace("\n", " ")


def _section(name: str) -> list[str]:
    if name == VERDICT:
        what = "How the whole stack judges results: `VerdictRules`, see [Verdicts](verdicts.md)."
    else:
        what = f"Configures [`{name}`][{DECORATORS[name]}]."
    lines = [
        f"### `{name}`",
        "",
        what,
        "",
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, option in declared(declaration(layer_class(name))).items():
        spec = spec_of(option)
        kind = _cell(str(option.type))
        note = " (or `module:function`)" if spec.importable else ""
        if not has_default(option):
            default = "required"
        else:
            data = default_data(option)
            default = "(not set)" if data is UNSET else f"`{_cell(orjson.dumps(data).decode())}`"
        lines.append(f"| `{key}` | `{kind}`{note} | {default} | {_cell(spec.doc)} |")
    return [*lines, ""]


def render() -> str:
    lines = [
        "Sections, outermost first: " + ", ".join(f"`{n}`" for n in CANONICAL_ORDER) + ".",
        "Top-level options besides the sections: " + ", ".join(f"`{o}`" for o in OPTIONS) + ".",
        "",
    ]
    for name in (*CANONICAL_ORDER, VERDICT):
        lines += _section(name)
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
