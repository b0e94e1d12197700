"""Name -> class tables for plug-ins (audit sinks by URL scheme, alert channels by name): each
row is `"package.module:Class"`, imported the first time the name is used, or the class."""

from __future__ import annotations

import importlib
from typing import Any

from qwed_guard.errors import bad_parameter

__all__ = ["Registry", "import_object"]

_EXTRAS = {"psycopg": "qwed-guard[fleet]", "redis": "qwed-guard[fleet]"}
"""The extra that installs an optional dependency, for the message when it is missing."""


def import_object(path: str, param: str) -> Any:
    """`"package.module:name"` (or `...:Class.attribute`), imported now."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise bad_parameter(param, f"{path!r}: a dotted path must look like 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise bad_parameter(param, f"{path!r}: cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise bad_parameter(param, f"{path!r}: {module_name} has no {attribute}") from None
    return target


class Registry:
    """One table of plug-ins. `param` names the argument errors are about ("sink", "notify")
    and `what` the kind of thing ("sink scheme", "channel")."""

    def __init__(self, param: str, what: str, rows: dict[str, str]) -> None:
        self.param = param
        self.what = what
        self._rows: dict[str, str | type] = dict(rows)

    def register(self, name: str, target: str | type) -> None:
        """Make `name` open `target`; a later registration of the same name replaces it."""
        if not isinstance(name, str) or not name or ":" in name or name != name.lower():
            raise bad_parameter(self.param, f"a {self.what} is a lowercase name, got {name!r}")
        if not isinstance(target, type) and not (isinstance(target, str) and ":" in target):
            raise bad_parameter(
                self.param, f"{name}: expected a class or 'package.module:Class', got {target!r}"
            )
        self._rows[name] = target

    def names(self) -> list[str]:
        return sorted(self._rows)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def load(self, name: str, where: str = "") -> Any:
        """The class registered for `name`, imported if need be."""
        target = self._rows.get(name)
        if target is None:
            raise bad_parameter(
                self.param,
                f"{where}unknown {self.what} {name!r}; choose from {', '.join(self.names())}",
            )
        if isinstance(target, str):
            module_name = target.partition(":")[0]
            try:
                importlib.import_module(module_name)
            except ImportError as exc:
                missing = (exc.name or module_name).split(".")[0]
                hint = _EXTRAS.get(missing, missing)
                raise bad_parameter(
                    self.param,
                    f"{where}a {name}: {self.what.split()[0]} needs {missing}: "
                    f"pip install '{hint}'",
                ) from None
            target = import_object(target, self.param)
            self._rows[name] = target
        return target
