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
    return data
