"""The audit key: an HMAC secret and its public id, and the record signature made with it.

Below both `record` (which signs a record as it seals it) and `chain` (which signs checkpoints).
There is no default key: it comes from an environment variable the user names, and only its
key id (a hash of the key) is ever written.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["Key", "key_from_env", "record_sig"]

_RECORD_DOMAIN = b"qwed-guard.audit.record/1\n"


class Key:
    """An HMAC key and its public id (never the key itself in any output)."""

    __slots__ = ("_record_hmac", "env", "id", "secret")

    def __init__(self, secret: bytes, env: str | None = None) -> None:
        if len(secret) < 16:
            raise ValueError("an audit key must be at least 16 bytes")
        self.secret = secret
        self.env = env
        self.id = hashlib.sha256(b"qwed-guard.audit.key-id/1\n" + secret).hexdigest()[:16]
        # Keyed once: each record's sig copies it (half the cost of a new HMAC per record).
        self._record_hmac = hmac.new(secret, _RECORD_DOMAIN, hashlib.sha256)

    def __repr__(self) -> str:
        return f"Key(id={self.id!r})"


def key_from_env(env: str) -> Key:
    """The key held by environment variable `env` (raises KeyError/ValueError if unusable)."""
    raw = os.environ.get(env)
    if not raw:
        raise KeyError(f"environment variable {env} is not set")
    return Key(raw.encode("utf-8"), env)


def record_sig(key: Key, body: bytes) -> str:
    """A record's `sig`: HMAC-SHA256 of its canonical body without `sig` and `hash` (which holds
    its `seq` and `prev_hash`, so its place in the chain too)."""
    mac = key._record_hmac.copy()
    mac.update(body)
    return mac.hexdigest()
