"""Reading a policy file: TOML, YAML or JSON, by its suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwed_guard.errors import PolicyError

__all__ = ["load"]

SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def _parse(path: Path, text: bytes) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomllib

        return tomllib.loads(text.decode("utf-8"))
    if suffix in (".yaml", ".yml"):
        import yaml  # imported here: only YAML policies need it

        return yaml.safe_load(text)
    return json.loads(text)


def load(path: Path) -> Any:
    """The data in a policy file; `PolicyError` when it cannot be read or parsed."""
    if path.suffix.lower() not in SUFFIXES:
        raise PolicyError(f"{path}: a policy file ends in {', '.join(SUFFIXES)}")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        data = _parse(path, text)
    except Exception as exc:  # each parser has its own error types; report them all the same
        kind = path.suffix.lstrip(".").upper().replace("YML", "YAML")
        reason = " ".join(str(exc).split())
        raise PolicyError(f"{path}: not valid {kind}: {reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a table of sections, got {type(data).__name__}")
    where = _surrogate(data, "")
    if where is not None:
        # JSON's \ud800 escapes (and YAML's) give text no file, log or hash can encode.
        raise PolicyError(f"{path}: {where or 'a key'} holds a lone surrogate (not valid Unicode)")
    return data


def _surrogate(value: Any, where: str, seen: set[int] | None = None) -> str | None:
    """The dotted path of the first string holding a lone surrogate, or None.

    Each container is visited once: YAML aliases share (or loop back to) their values."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where.encode("utf-8", "backslashreplace").decode("utf-8")
        return None
    if not isinstance(value, (dict, list, tuple)):
        return None
    seen = set() if seen is None else seen
    if id(value) in seen or len(seen) > 100_000:
        return None
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            found = _surrogate(key, where, seen) if isinstance(key, str) else None
            if found is None:
                found = _surrogate(item, name, seen)
            if found is not None:
                return found.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        for index, item in enumerate(value):
            found = _surrogate(item, f"{where}[{index}]", seen)
            if found is not None:
                return found
    return None
