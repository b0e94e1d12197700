"""URLs and paths from plain data, parsed one way for every sink, channel and state store:
`scheme:rest` specs, `${VAR}` from the environment, `~` and real directories, query options
split from the rest, and a form of the URL that is safe to log."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

from qwed_guard.errors import bad_parameter
from qwed_guard.redact import register_secret

__all__ = ["display_url", "expand_env", "expand_path", "real_path", "split_scheme", "split_url"]

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def expand_env(text: str, param: str) -> str:
    """`text` with every `${VAR}` replaced by its environment value; an unset one is refused
    (`ParameterError` for `param`, a `ValueError`)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise bad_parameter(param, f"environment variable {name} (used in the URL) is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(value, text)


def expand_path(path: str | os.PathLike[str]) -> str:
    """`path` absolute, with `~` expanded."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def real_path(path: str | os.PathLike[str]) -> str:
    """`path` under its directory's real path: one name for one file, whatever symlinked
    directory reached it. The file name itself is kept (and opened with O_NOFOLLOW)."""
    directory, name = os.path.split(expand_path(path))
    return os.path.join(os.path.realpath(directory), name)


def split_scheme(spec: str) -> tuple[str, str]:
    """(scheme, rest) of `"scheme:rest"`, the scheme lowercased; `("", spec)` for a bare path
    (a one-letter scheme is a Windows drive)."""
    match = _SCHEME.match(spec)
    return (match.group(1).lower(), spec[match.end() :]) if match else ("", spec)


def split_url(
    url: str, own: Collection[str], param: str
) -> tuple[SplitResult, dict[str, str], list[tuple[str, str]]]:
    """`url` with `${VAR}` expanded and split, its password registered as a secret, the query
    options named in `own`, and the other query parameters (for the driver)."""
    parts = urlsplit(expand_env(url, param))
    if parts.password:
        register_secret(parts.password)
    query = parse_qsl(parts.query, keep_blank_values=True)
    mine = {name: value for name, value in query if name in own}
    return parts, mine, [(name, value) for name, value in query if name not in own]


def display_url(url: str | SplitResult) -> str:
    """`url` without user, password or query: safe to log."""
    parts = urlsplit(url) if isinstance(url, str) else url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
