"""HMAC checkpoints: signed `(seq, head hash)` pairs that catch truncation and rewrites.

A hash chain shows any edit in the middle of a trail, but not a cut tail (the shorter chain is
still a chain) nor a whole chain recomputed after an edit. With a key, the writer therefore
signs its head every `checkpoint_every` records and when it closes:

- in the trail, a `checkpoint` record whose `mac` signs the record before it;
- in a separate checkpoint file (`<trail>.checkpoints`, one JSON object a line), an entry whose
  `mac` signs that checkpoint record itself, so the trail's last line is attested from outside.

With a key every record also carries `sig`, an HMAC of the rest of the record's canonical JSON (its
`seq` and `prev_hash` included; the hash then covers `sig` too: `sha256(prev_hash + body + sig)`),
so a record added or changed without the key is caught; a keyed trail starts with a signed
`genesis` record, so a cut head is caught; checkpoint file entries chain to each other (`prev`, the
previous entry's `mac`), so a removed entry is caught; and every entry can also go to an anchor
file the user keeps elsewhere, so a trail and checkpoint file cut back together are caught too.

There is no default key: it comes from an environment variable the user names, and only its
key id (a hash of the key) is ever written.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from qwed_guard.audit.key import Key, key_from_env, record_sig
from qwed_guard.audit.record import SCHEMA, canonical, rfc3339

__all__ = [
    "Key",
    "checkpoint_entry",
    "checkpoint_record",
    "entry_mac",
    "event_record",
    "genesis_record",
    "key_from_env",
    "mac",
    "record_sig",
]

_MAC_DOMAIN = b"qwed-guard.audit.checkpoint/1\n"
_REDACT_DOMAIN = b"qwed-guard.audit.redact/1\n"
_ENTRY_DOMAIN = b"qwed-guard.audit.checkpoint-entry/2\n"


def mac(key: Key, seq: int, digest: str) -> str:
    """HMAC-SHA256 of a chain position: `seq` and the hash of the record there."""
    message = _MAC_DOMAIN + f"{seq}\n{digest}".encode("ascii")
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def entry_mac(key: Key, seq: int, digest: str, prev: str) -> str:
    """A checkpoint file entry's `mac`: signs the record at `seq` and the entry before it."""
    message = _ENTRY_DOMAIN + f"{seq}\n{digest}\n{prev}".encode("ascii")
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def redact_mac(key: Key, text: str) -> str:
    """What `redact="hmac"` stores instead of `text`: equal inputs give equal outputs."""
    # surrogatepass: a lone surrogate (a malformed query) is hashed, not refused.
    message = _REDACT_DOMAIN + text.encode("utf-8", "surrogatepass")
    digest = hmac.new(key.secret, message, hashlib.sha256)
    return f"hmac-sha256:{key.id}:{digest.hexdigest()}"


def event_record(event: str, record_id: str, wall: float, **fields: Any) -> dict[str, Any]:
    """A record the sink itself writes (genesis, checkpoint, prune, repair)."""
    return {"v": SCHEMA, "id": record_id, "ts": rfc3339(wall), "event": event, **fields}


def checkpoint_record(key: Key, covers_seq: int, covers_hash: str, wall: float) -> dict[str, Any]:
    """The in-trail checkpoint: signs the record just before it."""
    signature = mac(key, covers_seq, covers_hash)
    return event_record(
        "checkpoint",
        f"checkpoint/{covers_seq}",
        wall,
        covers_seq=covers_seq,
        covers_hash=covers_hash,
        key_id=key.id,
        mac=signature,
    )


def checkpoint_entry(
    key: Key, seq: int, digest: str, wall: float, prev: str = ""
) -> dict[str, Any]:
    """A checkpoint file entry: signs the record at `seq` (the in-trail checkpoint) and chains
    to the entry before it (`prev`, that entry's `mac`; empty for the first)."""
    return {
        "v": SCHEMA,
        "seq": seq,
        "hash": digest,
        "ts": rfc3339(wall),
        "key_id": key.id,
        "prev": prev,
        "mac": entry_mac(key, seq, digest, prev),
    }


def genesis_record(key: Key, wall: float) -> dict[str, Any]:
    """The first record of a keyed trail (seq 1): without it a trail's head was cut."""
    return event_record("genesis", "genesis", wall, key_id=key.id)


def prune_record(
    first_seq: int, first_prev_hash: str, files: list[str], wall: float
) -> dict[str, Any]:
    """Says retention removed the records before `first_seq` (whose `prev_hash` it names)."""
    return event_record(
        "prune",
        f"prune/{first_seq}",
        wall,
        first_seq=first_seq,
        first_prev_hash=first_prev_hash,
        files=files,
    )


def mac_ok(key: Key, seq: int, digest: str, claimed: object) -> bool:
    return isinstance(claimed, str) and hmac.compare_digest(mac(key, seq, digest), claimed)


def sig_ok(key: Key, record: dict[str, Any]) -> bool:
    """True when a parsed record's `sig` is the key's signature of the rest of it."""
    claimed = record.get("sig")
    if not isinstance(claimed, str):
        return False
    body = canonical({k: v for k, v in record.items() if k != "hash" and k != "sig"})
    return hmac.compare_digest(record_sig(key, body), claimed)


def entry_ok(key: Key, entry: dict[str, Any]) -> bool:
    seq, digest, prev, claimed = (entry.get(k) for k in ("seq", "hash", "prev", "mac"))
    if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(claimed, str):
        return False
    if entry.get("key_id") != key.id:
        return False
    expected = entry_mac(key, seq, digest, prev if isinstance(prev, str) else "")
    return hmac.compare_digest(expected, claimed)
