"""The one secret scrubber: every text that leaves the toolkit (records, alerts, logs, exception
messages, CLI output, policy and delivery errors) goes through `scrub`.

It removes the secret forms below, plus every exact value given to `register_secret` (routing
keys, webhook URLs and their path tokens, passwords of sink and state URLs, header values).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["may_hold_secret", "register_secret", "register_url", "scrub"]

_QUERY_KEYS = (
    r"token|key|api_key|apikey|api-key|sig|signature|access_token|refresh_token|id_token|secret|"
    r"client_secret|password|passwd|pwd|pass|sslpassword|auth|routing_key|integration_key"
)

# Secrets that must never reach a log line, an alert or an audit record.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}"), "sk-***"),
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9\-._~+/]{8,}=*"), r"\1\2***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@]*:[^/\s@]+@"), r"\1***@"),
    (re.compile(r"(https://hooks\.slack\.com/services/)[^\s\"'<>]+"), r"\1***"),
    (re.compile(r"(https?://[^\s\"'<>]*/(?:webhooks?|hooks)/)[^\s\"'<>]+"), r"\1***"),
    # `?password=...`, `&token=...` in URL queries and form bodies.
    (re.compile(rf"(?i)([?&;](?:{_QUERY_KEYS})=)[^&;\s\"'<>]+"), r"\1***"),
    # Keyword DSNs (`host=db password=... user=app`), quoted or not.
    (
        re.compile(r"(?i)\b((?:ssl)?password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;'\"]+)"),
        r"\1\2***",
    ),
    # Credential headers, as `name: value` or in a dict repr (`'x-api-key': '...'`).
    (
        re.compile(
            r"(?i)\b(x-api-key|api-key|x-auth-token|x-access-token|authorization|"
            r"proxy-authorization|x-routing-key|cookie|set-cookie)([\"']?\s*[:=]\s*[\"']?)"
            r"(?:(?:bearer|basic|token)\s+)?[^\s\"',}]+"
        ),
        r"\1\2***",
    ),
    (
        re.compile(
            r"(?i)\b((?:routing|integration|service)_key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9]+"
        ),
        r"\1***",
    ),
)
_registered_secrets: set[str] = set()
_registered_snapshot: tuple[str, ...] = ()
"""The same values, as a tuple that a reader in another thread can iterate safely."""
_MIN_SECRET = 4
_MIN_PATH_TOKEN = 8


def register_secret(value: str) -> None:
    """Scrub this exact value (a routing key, a password) wherever it appears from now on."""
    global _registered_snapshot
    if isinstance(value, str) and len(value) >= _MIN_SECRET:
        _registered_secrets.add(value)
        decoded = unquote(value)
        if decoded != value and len(decoded) >= _MIN_SECRET:
            _registered_secrets.add(decoded)
        _registered_snapshot = tuple(_registered_secrets)


def register_url(url: str) -> None:
    """Register a secret URL and the parts a receiver may echo without the rest: its password,
    its path and each long path segment (webhook tokens), its query values."""
    register_secret(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register_secret(parts.password)
    path = parts.path.strip("/")
    tokens = [segment for segment in path.split("/") if _looks_like_token(segment)]
    if tokens:
        register_secret(path)
        for token in tokens:
            register_secret(token)
    for pair in parts.query.split("&"):
        _, _, value = pair.partition("=")
        if len(value) >= _MIN_SECRET:
            register_secret(value)


def _looks_like_token(segment: str) -> bool:
    """A path segment that may be a secret (`T0ABC123`, `a1b2c3d4...`), not a word (`hooks`)."""
    if len(segment) < _MIN_PATH_TOKEN:
        return False
    return any(c.isdigit() for c in segment) or any(c.isupper() for c in segment)


def scrub(text: str) -> str:
    """Remove API keys, bearer tokens, credentials in URLs and DSNs, credential headers,
    webhook URLs, routing keys and every registered secret."""
    if _registered_secrets:
        # Longest first: a URL is replaced whole before its own path token is.
        for secret in sorted(_registered_secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def may_hold_secret(text: str) -> bool:
    """False only for text none of `scrub`'s patterns and registered secrets can match (a
    cheap pre-check)."""
    # Lowering keeps "sk-", "://" and "=" where they are: one search finds them and the words.
    if _trigger(text.lower()) is not None:
        return True
    snapshot = _registered_snapshot
    return bool(snapshot) and any(secret in text for secret in snapshot)


# Every pattern above that needs neither "sk-", "://" nor "=" needs one of these words.
_HEADER_WORDS = ("bearer", "basic", "token", "key", "auth", "cookie")
_trigger = re.compile("|".join(re.escape(t) for t in ("sk-", "://", "=", *_HEADER_WORDS))).search
