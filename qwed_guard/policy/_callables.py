"""Which callables a policy may name: an allow-list of modules, checked before any import.

A policy is data, often from a file someone else can edit. A dotted path in it
(`classifier = "myapp.rules:classify"`) runs code, so it resolves only when its module is
allowed: qwed_guard's own modules, modules the program allowed with `allow_callables(...)`,
or modules listed in the `QWED_GUARD_POLICY_MODULES` environment variable (comma-separated).
Some modules are never allowed (shells, process control, code loading), whatever the list
says. Callables passed as Python objects (`Policy.from_dict({"fallback": {"handler": fn}})`)
are the program's own choice and are not checked.
"""

from __future__ import annotations

import os
import threading

__all__ = ["ENV", "allow_callables", "allowed_modules", "check_allowed"]

ENV = "QWED_GUARD_POLICY_MODULES"

_NEVER = frozenset(
    {
        "builtins",
        "code",
        "codeop",
        "ctypes",
        "importlib",
        "marshal",
        "multiprocessing",
        "os",
        "pdb",
        "pickle",
        "posix",
        "pty",
        "runpy",
        "shelve",
        "shutil",
        "socket",
        "subprocess",
        "sys",
        "webbrowser",
    }
)
_allowed: set[str] = set()
_lock = threading.Lock()


def allow_callables(*modules: str) -> None:
    """Let policies name callables in these modules (and their submodules)."""
    for module in modules:
        if not isinstance(module, str) or not module.strip(".") or " " in module:
            raise ValueError(f"expected a module name, got {module!r}")
        with _lock:
            _allowed.add(module.strip("."))


def allowed_modules() -> frozenset[str]:
    """The modules policies may name callables in, besides qwed_guard's own."""
    listed = {m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()}
    with _lock:
        return frozenset(_allowed | listed)


def _module_of(path: str) -> str:
    if ":" in path:
        return path.partition(":")[0]
    return path.rsplit(".", 1)[0] if "." in path else path


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def check_allowed(path: str) -> None:
    """Raise `PermissionError` (saying how to allow it) unless a policy may name `path`."""
    module = _module_of(path)
    top = module.split(".", 1)[0]
    if top in _NEVER or top.startswith("_"):
        raise PermissionError(f"module {module} is never allowed in a policy")
    if _within(module, "qwed_guard"):
        return
    if any(_within(module, prefix) for prefix in allowed_modules()):
        return
    raise PermissionError(
        f"module {module} is not allowed in a policy; allow it with "
        f"qwed_guard.policy.allow_callables({module.split('.', 1)[0]!r}) or {ENV}"
    )
